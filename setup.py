"""fedmrn_mpi: an MPI runner for communication-efficient federated learning (FedMRN and baselines)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("fedmrn_mpi/__init__.py").read_text()).group(1)

setup(
    name="fedmrn_mpi",
    version=version,
    description="FedMRN (masked random noise) federated learning over MPI with real 1-bit uploads",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fedmrn_mpi", "fedmrn_mpi.*"]),
    python_requires=">=3.10",
    # torch: a lower bound only. 2.11 (the lowest, = fedmrn_mpi/compat.py's TORCH_LOWEST; scripts/
    # test_lowest_torch.sh runs the unit tests under it) and 2.13 (setup.sh's pin) are tested. No upper bound:
    # a cluster's own, newer CUDA build would make pip replace it with an older PyPI wheel (the wrong CUDA, or
    # no network to fetch it), which breaks the node's torch to protect against a risk that is only a
    # possibility; a newer torch is logged at the run's start and recorded in the results (docs/torch_versions.md).
    install_requires=["torch>=2.11", "numpy>=1.24", "mpi4py>=3.1", "h5py>=3.8", "pyyaml>=6"],
    extras_require={
        "mpich": ["mpich"],          # an MPI library + mpirun from PyPI, for machines without a site MPI
        # scipy: the SVHN reader tests; triton: its interpreter runs the CUDA kernels on the CPU, bit for bit;
        # hypothesis: the fuzzing tests (configs, overrides, message bytes, damaged files)
        "test": ["pytest>=7", "scipy", "triton", "hypothesis>=6"],
        "svhn": ["scipy"],           # SVHN ships MATLAB .mat files
        "report": ["matplotlib"],
    },
    entry_points={"console_scripts": ["fedmrn-mpi=fedmrn_mpi.__main__:main"]},
    package_data={"fedmrn_mpi": ["py.typed"]},
)
