"""Names, types and version of everything in a results file (docs/design.md#results-file), and `RoundRow`, the
row the server hands the writer each round.

The writer, the reader, `status`, `report` and the run (run/setup.py, run/start.py, run/resume.py) all take
dataset, field and attribute names from here.

Format versions (root attribute FORMAT_VERSION_ATTR, "MAJOR.MINOR"): a new MINOR only adds datasets or
attributes, which a reader of the same MAJOR ignores; a new MAJOR changes or removes something, and a reader
refuses a file whose MAJOR is newer than its own.
- UNVERSIONED (0.0), files without the attribute: any dataset or attribute below but rounds/round may be missing;
  the reader takes what is there and reads the rest as not recorded.
- 1.0: every dataset of ROUND_FIELDS, CLIENT_FIELDS and RANK_FIELDS and both phase_seconds datasets
  (FORMAT_1_0_DATASETS), and the ROWS_WRITTEN attribute, exist from the file's creation on; the reader refuses a
  1.0 file without one of those datasets as damaged.
The run, not the writer, adds the partition and the environment attributes (run/start.py, run/setup.py): a file
of any version may lack them (written by a test or another tool); they then read as not recorded / UNKNOWN.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

PHASES = ("local_train", "encode", "gather", "decode_aggregate", "broadcast", "evaluate", "idle")

# ------------------------------------------------------------------------------------------------- versions
FORMAT_VERSION_ATTR = "format_version"
FormatVersion = tuple[int, int]
UNVERSIONED: FormatVersion = (0, 0)
FORMAT_1_0: FormatVersion = (1, 0)
FORMAT_VERSION: FormatVersion = FORMAT_1_0  # what this writer writes


def version_text(v: FormatVersion) -> str:
    return f"{v[0]}.{v[1]}"


def parse_format_version(value: Any) -> FormatVersion | None:
    """A file's FORMAT_VERSION_ATTR value (None: the file has none) as (major, minor): UNVERSIONED for None,
    None where the value is not "MAJOR.MINOR"."""
    if value is None:
        return UNVERSIONED
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    major, dot, minor = text.partition(".")
    return (int(major), int(minor)) if dot and major.isdigit() and minor.isdigit() else None


def version_problem(value: Any) -> str | None:
    """Why a file with this FORMAT_VERSION_ATTR value cannot be read (one line), or None when it can."""
    v = parse_format_version(value)
    if v is None:
        return f"unreadable {FORMAT_VERSION_ATTR} {str(value)[:40]!r}"
    if v[0] > FORMAT_VERSION[0]:
        return (f"results format {version_text(v)} is newer than this fedmrn_mpi reads "
                f"({version_text(FORMAT_VERSION)}, or any {FORMAT_VERSION[0]}.x)")
    return None


# ----------------------------------------------------------------------------------------- groups, datasets
ROUNDS = "rounds"    # one row per round
CLIENTS = "clients"  # rounds x clients_per_round
RANKS = "ranks"      # rounds x world_size (x phases)
MODEL = "model"      # the final global state, one float32 dataset per tensor
PARTITION = "partition"  # the clients' data, fixed for the run: written when the file is created
PER_ROUND_GROUPS = (ROUNDS, CLIENTS, RANKS)  # their datasets with an unlimited first axis get one row per round

# partition/<dataset> (int64)
PARTITION_SIZES = "sizes"                # samples per client (num_clients)
PARTITION_LABEL_COUNTS = "label_counts"  # samples per client and class (num_clients x num_classes)

# rounds/<field>: one value per round, the scalar fields of RoundRow (same names, same order)
ROUND = "round"
ROUND_FIELDS: dict[str, type[np.generic]] = {
    ROUND: np.int64, "test_accuracy": np.float64, "test_loss": np.float64, "train_loss": np.float64,
    "uplink_bytes": np.int64, "downlink_bytes": np.int64, "wall_seconds": np.float64,
    "resync": np.int64, "digest_mismatches": np.int64, "control_bytes": np.int64, "state_bytes": np.int64,
    "skipped_clients": np.int64,
}

# clients/<field>: one value per sampled client per round, the fields of ClientColumns
CLIENT_FIELDS: dict[str, type[np.generic]] = {
    "sampled": np.int64, "rank": np.int64, "uplink_bytes": np.int64, "train_loss": np.float64, "skipped": np.int8,
}

# rounds/phase_seconds (the round's critical path) and ranks/phase_seconds (every rank); the attribute
# PHASES_ATTR names the phase columns
PHASE_SECONDS = "phase_seconds"
PHASES_ATTR = "phases"

# ranks/<field>: one value per rank per round (rounds x world_size), the optional fields of RankColumns
RANK_FIELDS: dict[str, type[np.generic]] = {"bytes_sent": np.int64, "bytes_received": np.int64}

FORMAT_1_0_DATASETS = (*(f"{ROUNDS}/{n}" for n in (*ROUND_FIELDS, PHASE_SECONDS)),
                       *(f"{CLIENTS}/{n}" for n in CLIENT_FIELDS),
                       *(f"{RANKS}/{n}" for n in (PHASE_SECONDS, *RANK_FIELDS)))

# a count in a row that does not record it: rows of an unversioned file continued by --resume, a row without
# the optional RANK_FIELDS
NOT_RECORDED = -1

# ------------------------------------------------------------------------------------------ root attributes
# written by the writer
ROWS_WRITTEN = "rounds_written"  # rows complete on disk (results/writer.py)
FINAL_MODEL_SHA256 = "final_model_sha256"

# written by the run: set-up (run/setup.py) and finish
CONFIG_YAML = "config_yaml"
CONFIG_SHA256 = "config_sha256"
VERSION = "version"  # fedmrn_mpi's
ALGORITHM = "algorithm"
WORLD_SIZE = "world_size"
WORLD_SIZES = "world_sizes"  # one entry per start of the run (resumes may change the world size)
GIT_REVISION = "git_revision"
PYTHON_VERSION = "python_version"
MPI_LIBRARY = "mpi_library"
HOSTS = "hosts"
RANK_HOSTS = "rank_hosts"
RANK_DEVICES = "rank_devices"
RANK_GPU_NAMES = "rank_gpu_names"
RANK_THREADS = "rank_threads"
RANK_SETUP_SECONDS = "rank_setup_seconds"
DATA_SOURCE = "data_source"
NUM_MASKED_PARAMS = "num_masked_params"
NUM_UNMASKED_VALUES = "num_unmasked_values"
PAYLOAD_BYTES_PER_CLIENT = "payload_bytes_per_client"
PAYLOAD_IS_BOUND = "payload_is_bound"
PRECISION = "precision"  # fp32 or bf16 (the config key; files without it are fp32)
PAYLOAD_BITS_PER_PARAM = "payload_bits_per_param"
ROUNDS_COMPLETED = "rounds_completed"
TOTAL_SECONDS = "total_seconds"

# the settings that decide bit-exact results
TORCH_VERSION = "torch_version"
NUMPY_VERSION = "numpy_version"
DEVICE_TYPE = "device_type"
THREADS_PER_RANK = "threads_per_rank"
CPU_CAPABILITY = "cpu_capability"
GPU_NAMES = "gpu_names"
# the machine identity (run/machine.py; docs/design.md, "Reproducibility"), one text each, "mixed:a,b" when ranks
# differ. CPU fields of every rank: the CPU model (name and vendor family/model/stepping), a digest of its
# instruction-set flags, its cache sizes, the instruction set oneDNN and MKL chose, and the settings that cap or
# change the CPU kernels ("none" at the defaults). GPU fields of the CUDA ranks ("none" when there are none): the
# CUDA toolkit torch was built with, the cuDNN and cuBLAS versions.
CPU_MACHINE_ATTRS = ("cpu_model", "cpu_flags_sha256", "cpu_caches", "onednn_isa", "mkl_isa", "cpu_kernel_settings")
GPU_MACHINE_ATTRS = ("cuda_version", "cudnn_version", "cublas_version")
# root attributes that decide whether two runs of one config give bit-exact equal results; one a file lacks
# reads as UNKNOWN
REPRO_ATTRS = (TORCH_VERSION, NUMPY_VERSION, DEVICE_TYPE, THREADS_PER_RANK, CPU_CAPABILITY, GPU_NAMES,
               *CPU_MACHINE_ATTRS, *GPU_MACHINE_ATTRS)
UNKNOWN = "unknown"


# ------------------------------------------------------------------------------------------------- the row
# eq=False: == on numpy fields has no single truth value; compare `to_dict()`s field by field instead
@dataclass(frozen=True, eq=False)
class ClientColumns:
    """clients/<field> of one round: one entry per sampled client, in sampled (ascending id) order."""

    sampled: np.ndarray       # client ids
    rank: np.ndarray          # the rank that trained the client
    uplink_bytes: np.ndarray  # its upload message, header included
    train_loss: np.ndarray
    skipped: np.ndarray       # 1: the upload was not finite and on_bad_update=skip dropped it


@dataclass(frozen=True, eq=False)
class RankColumns:
    """ranks/<field> of one round: one entry per rank."""

    phase_seconds: np.ndarray  # world_size x PHASES
    # every byte the transport moved for the rank in the round, all channels, up to the round's rank report;
    # None: not recorded (the dataset gets no row; rows a later one adds read NOT_RECORDED)
    bytes_sent: np.ndarray | None = None
    bytes_received: np.ndarray | None = None


@dataclass(frozen=True, eq=False, kw_only=True)
class RoundRow:
    """One round's results row. The server builds it when the round completes; the round's model is evaluated
    while the next round trains, and `with_evaluation` then gives the row with its test fields."""

    round: int
    test_accuracy: float = math.nan  # NaN: not evaluated this round
    test_loss: float = math.nan
    train_loss: float                # weighted mean over the clients that were not skipped
    uplink_bytes: int                # what reached rank 0
    downlink_bytes: int              # what rank 0 sent down
    wall_seconds: float
    resync: int                      # 1: the full float32 state was broadcast to repair a digest mismatch
    digest_mismatches: int
    control_bytes: int               # size exchanges and rank reports, all ranks
    state_bytes: int                 # per-client algorithm state moved between ranks
    skipped_clients: int
    phase_seconds: np.ndarray        # the round's critical path, one value per PHASES
    clients: ClientColumns
    ranks: RankColumns

    def with_evaluation(self, accuracy: float, loss: float) -> RoundRow:
        return replace(self, test_accuracy=float(accuracy), test_loss=float(loss))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (checkpoints); `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundRow:
        """Raises TypeError or KeyError for a dict `to_dict` did not write."""
        return cls(**{**d, "clients": ClientColumns(**d["clients"]), "ranks": RankColumns(**d["ranks"])})
