"""Names and types of everything in a results file (docs/design.md#results-file).

The writer, the reader, `status` and `report` all take dataset, field and attribute names from here.
"""

from __future__ import annotations

import numpy as np

PHASES = ("local_train", "encode", "gather", "decode_aggregate", "broadcast", "evaluate", "idle")

# groups
ROUNDS = "rounds"    # one row per round
CLIENTS = "clients"  # rounds x clients_per_round
RANKS = "ranks"      # rounds x world_size x phases
MODEL = "model"      # the final global state, one float32 dataset per tensor
PARTITION = "partition"  # the clients' data, fixed for the run: written when the file is created

# partition/<dataset> (int64; older files lack them)
PARTITION_SIZES = "sizes"                # samples per client (num_clients)
PARTITION_LABEL_COUNTS = "label_counts"  # samples per client and class (num_clients x num_classes)

# rounds/<field>: one value per round. control_bytes (size exchanges, rank reports) and state_bytes (per-client
# algorithm state moved to and from the ranks that train the clients) are newer than the others: older files
# lack them.
ROUND_FIELDS: dict[str, type[np.generic]] = {
    "round": np.int64, "test_accuracy": np.float64, "test_loss": np.float64, "train_loss": np.float64,
    "uplink_bytes": np.int64, "downlink_bytes": np.int64, "wall_seconds": np.float64,
    "resync": np.int64, "digest_mismatches": np.int64, "control_bytes": np.int64, "state_bytes": np.int64,
    "skipped_clients": np.int64,  # uploads dropped by on_bad_update=skip (newer than the others)
}

# clients/<field>: one value per sampled client per round; the row passed to the writer names them
# CLIENT_ROW_PREFIX + field
CLIENT_FIELDS: dict[str, type[np.generic]] = {
    "sampled": np.int64, "rank": np.int64, "uplink_bytes": np.int64, "train_loss": np.float64,
    "skipped": np.int8,  # 1: the upload was not finite and on_bad_update=skip dropped it (newer field)
}
CLIENT_ROW_PREFIX = "clients_"

# rounds/phase_seconds (the round's critical path) and ranks/phase_seconds (every rank); the attribute
# PHASES_ATTR names the phase columns
PHASE_SECONDS = "phase_seconds"
PHASES_ATTR = "phases"
RANK_PHASE_ROW = "rank_phase_seconds"  # the writer's row key for ranks/phase_seconds

# ranks/<field>: one value per rank per round (rounds x world_size): every byte the transport moved for that
# rank in the round, all channels, up to the round's rank report; the row passed to the writer names them
# RANK_ROW_PREFIX + field
RANK_FIELDS: dict[str, type[np.generic]] = {"bytes_sent": np.int64, "bytes_received": np.int64}
RANK_ROW_PREFIX = "rank_"

# a count written into rows that existed before the field did (a run resumed from an older version's file)
NOT_RECORDED = -1

# root attributes read back by the reader
CONFIG_YAML = "config_yaml"
ALGORITHM = "algorithm"
WORLD_SIZE = "world_size"
WORLD_SIZES = "world_sizes"  # one entry per start of the run (resumes may change the world size)
FINAL_MODEL_SHA256 = "final_model_sha256"
TOTAL_SECONDS = "total_seconds"
NUM_MASKED_PARAMS = "num_masked_params"
NUM_UNMASKED_VALUES = "num_unmasked_values"

# the machine identity (run/machine.py; docs/design.md, "Reproducibility"), one text each, "mixed:a,b" when ranks
# differ. CPU fields of every rank: the CPU model (name and vendor family/model/stepping), a digest of its
# instruction-set flags, its cache sizes, the instruction set oneDNN and MKL chose, and the settings that cap or
# change the CPU kernels ("none" at the defaults). GPU fields of the CUDA ranks ("none" when there are none): the
# CUDA toolkit torch was built with, the cuDNN and cuBLAS versions.
CPU_MACHINE_ATTRS = ("cpu_model", "cpu_flags_sha256", "cpu_caches", "onednn_isa", "mkl_isa", "cpu_kernel_settings")
GPU_MACHINE_ATTRS = ("cuda_version", "cudnn_version", "cublas_version")

# root attributes that decide whether two runs of one config give bit-exact equal results; a file that lacks
# one (older versions) reads as UNKNOWN
REPRO_ATTRS = ("torch_version", "numpy_version", "device_type", "threads_per_rank", "cpu_capability", "gpu_names",
               *CPU_MACHINE_ATTRS, *GPU_MACHINE_ATTRS)
UNKNOWN = "unknown"
