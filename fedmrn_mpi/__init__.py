"""fedmrn_mpi: an MPI runner for communication-efficient federated learning (FedMRN and baselines)."""

__version__ = "0.1.0"
