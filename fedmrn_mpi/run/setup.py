"""What every rank builds before the first round: device, threads, data, partition, model, algorithm; and
the environment attributes of the results file (everything the reproducibility contract depends on)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..algorithms import Algorithm, ModelSpec, make_algorithm, model_spec
from ..comm import Transport, mpi_library_version
from ..compat import cpu_capability
from ..config import Config, config_hash, config_to_yaml
from ..models import build_model, global_state
from ..results.schema import (ALGORITHM, CONFIG_SHA256, CONFIG_YAML, CPU_CAPABILITY, CPU_MACHINE_ATTRS, DATA_SOURCE,
                              DEVICE_TYPE, GIT_REVISION, GPU_MACHINE_ATTRS, GPU_NAMES, HOSTS, MPI_LIBRARY,
                              NUM_MASKED_PARAMS, NUM_UNMASKED_VALUES, NUMPY_VERSION, PAYLOAD_BITS_PER_PARAM,
                              PAYLOAD_BYTES_PER_CLIENT, PAYLOAD_IS_BOUND, PRECISION, PYTHON_VERSION, RANK_DEVICES,
                              RANK_GPU_NAMES, RANK_HOSTS, RANK_SETUP_SECONDS, RANK_THREADS, THREADS_PER_RANK,
                              TORCH_VERSION, UNKNOWN, VERSION, WORLD_SIZE, WORLD_SIZES)
from ..rng.seeds import derive_seed
from ..training import LocalTraining
from .dataset import Batch, open_run_data
from .machine import machine_identity


_IMPORTED = time.perf_counter()


def choose_device(cfg: Config, transport: Transport) -> torch.device:
    """`local_rank % visible GPUs` when CUDA is usable and allowed, else the CPU."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but torch sees no CUDA device on this rank")
    # Same GPU model, same results (docs/design.md, "Reproducibility"): cuDNN and cuBLAS must not pick
    # algorithms by timing or sum with atomics. cuBLAS reads its workspace setting when CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.device("cuda", transport.local_rank % torch.cuda.device_count())


def set_threads(cfg: Config, transport: Transport) -> int:
    """`threads` torch threads; 0 = the cores shared out over the ranks of this node (two threads per rank was
    8.5x slower than one at 33 ranks on 2 cores). CPU kernels sum in a thread-dependent order, so bit-exact
    results need the same threads per rank (see docs/design.md, "Reproducibility")."""
    if cfg.threads > 0:
        n = cfg.threads
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = max(1, cores // transport.local_size)
    torch.set_num_threads(n)
    return n


@dataclass
class Setup:
    """Everything a rank builds before the first round (the same on every rank, from the config)."""

    device: torch.device
    threads: int
    model: torch.nn.Module
    spec: ModelSpec
    algo: Algorithm
    sizes: np.ndarray                      # samples per client
    label_counts: np.ndarray               # clients x classes
    local: LocalTraining
    state: dict                            # the initial global state, on `device`
    eval_transform: Callable[[torch.Tensor], torch.Tensor]  # stored test images -> model input
    client_data: Callable[[int], Batch] | None = None  # client k's samples on `device` (client ranks only)
    test_data: Callable[[int, int], Batch] | None = None  # test rows [first, last) on `device`
    num_test: int = 0
    data_source: str = ""
    setup_seconds: float = 0.0             # from the process's start to the end of set-up


def build_setup(cfg: Config, transport: Transport, poll: Callable[[], None] | None = None) -> Setup:
    """Load data, partition, build the model and the algorithm; each role keeps only the data it uses."""
    root = cfg.seed
    threads = set_threads(cfg, transport)
    device = choose_device(cfg, transport)
    data = open_run_data(cfg, device, need_train=transport.runs_clients, check_source=transport.is_server)
    c, h, _ = data.input_shape
    model = build_model(cfg.model.name, c, h, data.num_classes, derive_seed(root, "init")).to(device)
    spec = model_spec(model)
    setup = Setup(device=device, threads=threads, model=model, spec=spec,
               algo=make_algorithm(cfg.algorithm.options, spec, root),
               sizes=data.sizes, label_counts=data.label_counts,
               local=LocalTraining(root_seed=root, lr=cfg.lr, batch_size=cfg.batch_size,
                                   local_epochs=cfg.local_epochs, weighting=cfg.algorithm.weighting,
                                   transform=data.train_transform, augment=data.augment, poll=poll,
                                   bn_recalibrate=cfg.bn_recalibrate, server_lr=cfg.server_lr,
                                   precision=cfg.precision),
               state={n: t.detach().clone() for n, t in global_state(model).items()},
               eval_transform=data.test_transform, client_data=data.client, test_data=data.test,
               num_test=data.num_test, data_source=data.source)
    setup.setup_seconds = process_age()
    return setup


def process_age() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere since this module was imported)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


def git_revision() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def rank_facts(setup: Setup, transport: Transport) -> list[dict[str, str]] | None:
    """Rank 0: host, device, GPU name, threads, CPU instruction set, set-up time and the machine identity
    (run/machine.py) of every rank (None elsewhere)."""
    gpu = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "none"
    mine = {"host": transport.hostname(), "device": str(setup.device), "gpu": gpu, "threads": str(setup.threads),
            "cpu_capability": cpu_capability(), "setup_seconds": f"{setup.setup_seconds:.3f}",
            **machine_identity(setup.device)}
    # JSON, not a separator: CPU and GPU names and library texts may contain any character
    rows = transport.gather_strings(json.dumps(mine))
    return None if rows is None else [json.loads(r) for r in rows]


def _uniform(values: list[str]) -> str:
    """The common value, or 'mixed:a,b' (which then differs from any uniform run's)."""
    distinct = sorted(set(values))
    return distinct[0] if len(distinct) == 1 else "mixed:" + ",".join(distinct)


def environment_attrs(cfg: Config, setup: Setup, transport: Transport, facts: list[dict[str, str]]) -> dict:
    """Root attributes of the results file: config, versions, and the settings that decide bit-exact results
    (results.REPRO_ATTRS): torch/numpy versions, the training ranks' device type, threads and CPU instruction
    set, the GPU models, and the machine identity (CPU model, flags, caches, oneDNN/MKL ISA, kernel settings,
    CUDA/cuDNN/cuBLAS versions)."""
    workers = [facts[r] for r in transport.client_ranks]
    cuda = [f for f in facts if f["device"].startswith("cuda")]
    threads = _uniform([f["threads"] for f in workers])
    return {
        CONFIG_YAML: config_to_yaml(cfg), CONFIG_SHA256: config_hash(cfg), VERSION: __version__,
        WORLD_SIZE: transport.size, WORLD_SIZES: np.array([transport.size], dtype=np.int64),
        ALGORITHM: cfg.algorithm.name, GIT_REVISION: git_revision(),
        TORCH_VERSION: str(torch.__version__), NUMPY_VERSION: np.__version__,
        PYTHON_VERSION: platform.python_version(), MPI_LIBRARY: mpi_library_version(),
        HOSTS: sorted({f["host"] for f in facts}), RANK_HOSTS: [f["host"] for f in facts],
        RANK_DEVICES: [f["device"] for f in facts], RANK_GPU_NAMES: [f["gpu"] for f in facts],
        RANK_THREADS: np.array([int(f["threads"]) for f in facts], dtype=np.int64),
        # seconds from each rank's process start to the end of its set-up (data read, model built)
        RANK_SETUP_SECONDS: np.array([float(f["setup_seconds"]) for f in facts], dtype=np.float64),
        DATA_SOURCE: setup.data_source,
        GPU_NAMES: sorted({f["gpu"] for f in facts} - {"none"}) or ["none"],
        DEVICE_TYPE: _uniform([f["device"].split(":")[0] for f in workers]),
        THREADS_PER_RANK: int(threads) if threads.isdigit() else threads,
        CPU_CAPABILITY: _uniform([f["cpu_capability"] for f in workers]),
        # what decides the bits beyond cpu_capability (run/machine.py): the CPU fields of every rank (rank 0 sums
        # and evaluates too), the GPU fields of the CUDA ranks ("none" when there are none)
        **{k: _uniform([f.get(k, UNKNOWN) for f in facts]) for k in CPU_MACHINE_ATTRS},
        **{k: _uniform([f.get(k, UNKNOWN) for f in cuda] or ["none"]) for k in GPU_MACHINE_ATTRS},
        NUM_MASKED_PARAMS: setup.spec.num_masked, NUM_UNMASKED_VALUES: setup.spec.num_unmasked,
        # for a variable-size coding (qsgd elias) the payload figures are the proven bound; the bytes actually
        # sent are in clients/uplink_bytes
        PAYLOAD_BYTES_PER_CLIENT: setup.algo.payload_nbytes(),
        PAYLOAD_IS_BOUND: bool(setup.algo.variable_payload),
        PRECISION: cfg.precision,
        # uplink bits per value of the model state (payload only; the 56-byte header adds 448 bits per message)
        PAYLOAD_BITS_PER_PARAM: 8 * setup.algo.payload_nbytes() / (setup.spec.num_masked + setup.spec.num_unmasked),
    }


def ranks_text(devices: list[str]) -> str:
    """'0:cpu 1-4:cuda:0' style summary of which device each rank uses."""
    out, start = [], 0
    for r in range(1, len(devices) + 1):
        if r == len(devices) or devices[r] != devices[start]:
            out.append(f"{start}{'' if r - 1 == start else f'-{r - 1}'}:{devices[start]}")
            start = r
    return " ".join(out)
