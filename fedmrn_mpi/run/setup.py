"""What every rank builds before the first round: device, threads, data, partition, model, algorithm; and
the environment attributes of the results file (everything the reproducibility contract depends on)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..algorithms import Algorithm, ModelSpec, make_algorithm, model_spec
from ..comm import Transport, mpi_library_version
from ..config import Config, config_hash, config_to_yaml
from ..data.partition import partition, partition_stats
from ..data.readers import normalize_images
from ..data.registry import load_dataset
from ..models import build_model, global_state
from ..rng.seeds import derive_seed
from ..training import LocalTraining


def choose_device(cfg: Config, transport: Transport) -> torch.device:
    """`local_rank % visible GPUs` when CUDA is usable and allowed, else the CPU."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but torch sees no CUDA device on this rank")
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
    x_train: torch.Tensor | None = None    # client ranks only
    y_train: torch.Tensor | None = None
    parts: list | None = None
    x_test: torch.Tensor | None = None     # rank 0 only
    y_test: torch.Tensor | None = None


def prepare(cfg: Config, transport: Transport, poll: Callable[[], None] | None = None) -> Setup:
    """Load data, partition, build the model and the algorithm; each role keeps only the data it uses."""
    root = cfg.seed
    threads = set_threads(cfg, transport)
    device = choose_device(cfg, transport)
    opts = {}
    if cfg.data.name == "synthetic":
        opts = {"n_train": cfg.data.synthetic_train, "n_test": cfg.data.synthetic_test,
                "seed": derive_seed(root, "synthetic-data") & 0x7FFFFFFF}
    data = load_dataset(cfg.data.name, cfg.data.dir, **opts)
    parts = partition(data.y_train.numpy(), cfg.data.partition, cfg.num_clients,
                      derive_seed(root, "partition") & 0x7FFFFFFF, cfg.data.alpha, cfg.data.classes_per_client)
    c, h, _ = data.input_shape
    model = build_model(cfg.model.name, c, h, data.num_classes, derive_seed(root, "init")).to(device)
    spec = model_spec(model)
    # images stay uint8 on every rank (4x less memory with many ranks per node); normalised per batch
    transform = functools.partial(normalize_images, mean=data.mean, std=data.std)
    su = Setup(device=device, threads=threads, model=model, spec=spec, algo=make_algorithm(cfg, spec),
               sizes=np.array([len(p) for p in parts], dtype=np.int64),
               label_counts=partition_stats(parts, data.y_train.numpy(), data.num_classes),
               local=LocalTraining(root_seed=root, lr=cfg.lr, batch_size=cfg.batch_size,
                                   local_epochs=cfg.local_epochs, weighting=cfg.algorithm.weighting,
                                   transform=transform, poll=poll),
               state={n: t.detach().clone() for n, t in global_state(model).items()})
    if transport.is_server:
        su.x_test, su.y_test = data.images_test.to(device), data.y_test.to(device)
    if transport.runs_clients:
        su.x_train, su.y_train = data.images_train.to(device), data.y_train.to(device)
        su.parts = [torch.from_numpy(p).to(device) for p in parts]
    return su


def git_revision() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def rank_facts(su: Setup, transport: Transport) -> list[dict[str, str]] | None:
    """Rank 0: host, device, GPU name, threads and CPU instruction set of every rank (None elsewhere)."""
    gpu = torch.cuda.get_device_name(su.device) if su.device.type == "cuda" else "none"
    mine = "|".join([transport.hostname(), str(su.device), gpu, str(su.threads),
                     torch.backends.cpu.get_cpu_capability()])
    rows = transport.gather_strings(mine)
    keys = ("host", "device", "gpu", "threads", "cpu_capability")
    return None if rows is None else [dict(zip(keys, r.split("|"))) for r in rows]


def _uniform(values: list[str]) -> str:
    """The common value, or 'mixed:a,b' (which then differs from any uniform run's)."""
    distinct = sorted(set(values))
    return distinct[0] if len(distinct) == 1 else "mixed:" + ",".join(distinct)


def environment_attrs(cfg: Config, su: Setup, transport: Transport, facts: list[dict[str, str]]) -> dict:
    """Root attributes of the results file: config, versions, and the settings that decide bit-exact results
    (results.REPRO_ATTRS): torch/numpy versions, the training ranks' device type, threads and CPU instruction
    set, and the GPU models."""
    workers = [facts[r] for r in transport.client_ranks]
    threads = _uniform([f["threads"] for f in workers])
    return {
        "config_yaml": config_to_yaml(cfg), "config_sha256": config_hash(cfg), "version": __version__,
        "world_size": transport.size, "world_sizes": np.array([transport.size], dtype=np.int64),
        "algorithm": cfg.algorithm.name, "git_revision": git_revision(),
        "torch_version": str(torch.__version__), "numpy_version": np.__version__,
        "python_version": platform.python_version(), "mpi_library": mpi_library_version(),
        "hosts": sorted({f["host"] for f in facts}), "rank_hosts": [f["host"] for f in facts],
        "rank_devices": [f["device"] for f in facts], "rank_gpu_names": [f["gpu"] for f in facts],
        "rank_threads": np.array([int(f["threads"]) for f in facts], dtype=np.int64),
        "gpu_names": sorted({f["gpu"] for f in facts} - {"none"}) or ["none"],
        "device_type": _uniform([f["device"].split(":")[0] for f in workers]),
        "threads_per_rank": int(threads) if threads.isdigit() else threads,
        "cpu_capability": _uniform([f["cpu_capability"] for f in workers]),
        "num_masked_params": su.spec.num_masked, "num_unmasked_values": su.spec.num_unmasked,
        "payload_bytes_per_client": su.algo.payload_nbytes(),
        # uplink bits per value of the model state (payload only; the 56-byte header adds 448 bits per message)
        "payload_bits_per_param": 8 * su.algo.payload_nbytes() / (su.spec.num_masked + su.spec.num_unmasked),
    }


def ranks_text(devices: list[str]) -> str:
    """'0:cpu 1-4:cuda:0' style summary of which device each rank uses."""
    out, start = [], 0
    for r in range(1, len(devices) + 1):
        if r == len(devices) or devices[r] != devices[start]:
            out.append(f"{start}{'' if r - 1 == start else f'-{r - 1}'}:{devices[start]}")
            start = r
    return " ".join(out)
