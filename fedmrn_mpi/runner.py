"""The round loop run by every rank: broadcast -> local training -> encode -> gather -> decode/aggregate.

Rank 0 (the server) evaluates the model it has just broadcast while the clients train, so evaluation costs
no client time; the round's results row is written once that evaluation is done.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from . import __version__
from .algorithms import ModelSpec, make_algorithm
from .client import make_context, train_client
from .config import Config, config_hash, config_to_yaml
from .data.partition import partition, partition_stats
from .data.readers import normalize_images
from .data.registry import load_dataset
from .models import build_model, global_state, masked_names
from .results import PHASES, ResultsWriter
from .schedule import assign_clients, sample_clients
from .seeds import derive_seed
from .server import aggregate, evaluate
from .transport import Transport, mpi_library_version
from .wire import WireError, decode_messages, encode_message


class PhaseTimer:
    """Seconds per phase for the current round on this rank."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def take(self, wall: float) -> np.ndarray:
        """This round's row (idle = wall time not spent in a named phase), then reset."""
        row = np.array([self.seconds[p] for p in PHASES])
        row[PHASES.index("idle")] += max(0.0, wall - row.sum())
        self.seconds = dict.fromkeys(PHASES, 0.0)
        return row


@dataclass
class RunState:
    """Progress shared with the error handler (which round failed)."""

    round: int = 0
    rows: list = field(default_factory=list)


STATE = RunState()

FAULT_ENV = "FEDMRN_MPI_INJECT_FAULT"


def maybe_inject_fault(rank: int, round_: int) -> None:
    """Test hook: FEDMRN_MPI_INJECT_FAULT="RANK:ROUND[:raise|kill]" fails that rank at that round."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if int(parts[0]) == rank and int(parts[1]) == round_:
        if len(parts) > 2 and parts[2] == "kill":
            os.kill(os.getpid(), 9)
        raise RuntimeError(f"fault injected by {FAULT_ENV}={spec}")


def choose_device(cfg: Config, transport: Transport) -> torch.device:
    """`local_rank % visible GPUs` when CUDA is usable and allowed, else the CPU."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but torch sees no CUDA device on this rank")
    return torch.device("cuda", transport.local_rank % torch.cuda.device_count())


def set_threads(cfg: Config, transport: Transport) -> int:
    """One torch thread per rank when ranks share the cores (two per rank was 8.5x slower at 33 ranks)."""
    if cfg.threads > 0:
        n = cfg.threads
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = max(1, cores // transport.local_size)
    torch.set_num_threads(n)
    return n


def model_spec(model: torch.nn.Module) -> ModelSpec:
    state = global_state(model)
    params = {n for n, _ in model.named_parameters()}
    return ModelSpec(
        names=tuple(state), shapes={n: tuple(t.shape) for n, t in state.items()},
        params=tuple(n for n in state if n in params), buffers=tuple(n for n in state if n not in params),
        masked=tuple(masked_names(model)))


def git_revision() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def _fmt_secs(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class FlatState:
    """The global state as one contiguous float32 buffer (what the downlink broadcasts)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.buf = np.empty(sum(spec.numel(n) for n in spec.names), dtype=np.float32)

    def pack(self, state: dict[str, torch.Tensor]) -> None:
        off = 0
        for n in self.spec.names:
            k = self.spec.numel(n)
            self.buf[off: off + k] = state[n].detach().reshape(-1).cpu().numpy()
            off += k

    def unpack(self, device: torch.device) -> dict[str, torch.Tensor]:
        flat = torch.from_numpy(self.buf.copy()).to(device)
        out, off = {}, 0
        for n in self.spec.names:
            k = self.spec.numel(n)
            out[n] = flat[off: off + k].view(self.spec.shapes[n])
            off += k
        return out


def run(cfg: Config, out_path: str, transport: Transport, log=print) -> str | None:
    """Run the whole federated training on this rank. Returns the final model digest on rank 0."""
    rank, world = transport.rank, transport.size
    threads = set_threads(cfg, transport)
    device = choose_device(cfg, transport)
    root = cfg.seed

    opts = {}
    if cfg.data.name == "synthetic":
        opts = {"n_train": cfg.data.synthetic_train, "n_test": cfg.data.synthetic_test,
                "seed": derive_seed(root, "synthetic-data") & 0x7FFFFFFF}
    data = load_dataset(cfg.data.name, cfg.data.dir, **opts)
    parts = partition(data.y_train.numpy(), cfg.data.partition, cfg.num_clients,
                      derive_seed(root, "partition") & 0x7FFFFFFF, cfg.data.alpha, cfg.data.classes_per_client)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    label_counts = partition_stats(parts, data.y_train.numpy(), data.num_classes)

    c, h, _ = data.input_shape
    model = build_model(cfg.model.name, c, h, data.num_classes, derive_seed(root, "init")).to(device)
    spec = model_spec(model)
    algo = make_algorithm(cfg, spec)
    flat = FlatState(spec)
    state = {n: t.detach().clone() for n, t in global_state(model).items()}

    # each role keeps only the data it uses
    # images stay uint8 on every rank (4x less memory with many ranks per node); normalised per batch
    transform = functools.partial(normalize_images, mean=data.mean, std=data.std)
    if transport.is_server:
        x_test, y_test = data.images_test.to(device), data.y_test.to(device)
    if transport.runs_clients:
        x_train, y_train = data.images_train.to(device), data.y_train.to(device)
        parts_dev = [torch.from_numpy(p).to(device) for p in parts]
    del data

    hosts = transport.gather_strings(f"{transport.hostname()}|{device}")
    writer = None
    if transport.is_server:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        attrs = {
            "config_yaml": config_to_yaml(cfg), "config_sha256": config_hash(cfg), "version": __version__,
            "world_size": world, "algorithm": cfg.algorithm.name, "git_revision": git_revision(),
            "torch_version": str(torch.__version__), "numpy_version": np.__version__, "python_version": platform.python_version(),
            "mpi_library": mpi_library_version(), "hosts": sorted({s.split("|")[0] for s in hosts}),
            "rank_devices": [s.split("|")[1] for s in hosts], "threads_per_rank": threads,
            "num_masked_params": spec.num_masked, "num_unmasked_values": spec.num_unmasked,
            "payload_bytes_per_client": algo.payload_nbytes(),
        }
        static = {"partition/sizes": sizes, "partition/label_counts": label_counts}
        writer = ResultsWriter(out_path, attrs, cfg.clients_per_round, world, static)
        log(f"fedmrn_mpi {__version__}: {cfg.algorithm.name} on {cfg.data.name}/{cfg.model.name}, "
            f"{cfg.num_clients} clients ({cfg.clients_per_round}/round), {cfg.rounds} rounds, "
            f"{world} rank(s), device {device}, {threads} thread(s)/rank; "
            f"{spec.num_masked} masked + {spec.num_unmasked} unmasked values, "
            f"upload {algo.payload_nbytes()} B/client; results -> {out_path}")

    timer = PhaseTimer()
    ctrl = np.zeros(2, dtype=np.int64)
    pending: dict | None = None
    t_start = time.perf_counter()

    def finish_row(row: dict, eval_state: dict[str, torch.Tensor]) -> None:
        r = row["round"]
        if cfg.eval_every and r % cfg.eval_every == 0 or r == cfg.rounds:
            with timer("evaluate"):
                row["test_accuracy"], row["test_loss"] = evaluate(model, eval_state, x_test, y_test,
                                                                     transform=transform)
        else:
            row["test_accuracy"] = row["test_loss"] = math.nan
        writer.append_round(row)
        if r % cfg.log_every == 0 or r == cfg.rounds:
            elapsed = time.perf_counter() - t_start
            eta = elapsed / r * (cfg.rounds - r)
            acc = "  --  " if math.isnan(row["test_accuracy"]) else f"{100 * row['test_accuracy']:6.2f}%"
            loss = "  --  " if math.isnan(row["test_loss"]) else f"{row['test_loss']:.4f}"
            log(f"round {r:4d}/{cfg.rounds}  acc {acc}  loss {loss}  train {row['train_loss']:.4f}  "
                f"up {_fmt_bytes(row['uplink_bytes'])}  {row['wall_seconds']:.2f} s/round  ETA {_fmt_secs(eta)}",
                flush=True)

    for rnd in range(1, cfg.rounds + 1):
        STATE.round = rnd
        t0 = time.perf_counter()
        # downlink: control block and the float32 global state
        if transport.is_server:
            ctrl[:] = (rnd, 0)
            flat.pack(state)
        with timer("broadcast"):
            down = transport.bcast(ctrl) + transport.bcast(flat.buf)
        if not transport.is_server:
            if int(ctrl[0]) != rnd:
                raise RuntimeError(f"rank {rank}: server is at round {int(ctrl[0])}, this rank at {rnd}")
            state = flat.unpack(device)
        if pending is not None:  # evaluate the model just broadcast while the clients train
            finish_row(pending, state)
            pending = None

        maybe_inject_fault(rank, rnd)
        sampled = sample_clients(root, rnd, cfg.num_clients, cfg.clients_per_round)
        assignment = assign_clients(sampled, sizes, transport.client_ranks)
        uploads = []
        for cid in assignment.get(rank, []):
            ctx = make_context(root, rnd, cid, int(sizes[cid]), cfg.batch_size, cfg.local_epochs, device)
            idx = parts_dev[cid]
            res = train_client(model, algo, state, x_train[idx], y_train[idx], ctx, root_seed=root,
                                   lr=cfg.lr, batch_size=cfg.batch_size, local_epochs=cfg.local_epochs,
                                   weighting=cfg.algorithm.weighting, timer=timer, transform=transform)
            with timer("encode"):
                uploads.append(encode_message(algo.algo_id, rnd, cid, res.seed, res.weight, res.train_loss,
                                              res.payload))
        with timer("encode"):
            mine = np.concatenate(uploads) if uploads else np.empty(0, dtype=np.uint8)

        with timer("gather"):
            got = transport.gather(mine)
        if transport.is_server:
            with timer("decode_aggregate"):
                messages = []
                for r_, view in enumerate(got.buffers):
                    expected = set(assignment.get(r_, []))
                    for m in decode_messages(view, rank=r_, round_=rnd, algo_id=algo.algo_id,
                                             expected_clients=expected):
                        messages.append((r_, m))
                seen = sorted(m.header.client_id for _, m in messages)
                if seen != sampled.tolist():
                    missing = sorted(set(sampled.tolist()) - set(seen))
                    dup = len(seen) != len(set(seen))
                    raise WireError(f"round {rnd}: uploads missing for clients {missing}" if missing
                                    else f"round {rnd}: duplicate uploads ({'duplicate' if dup else seen})")
                state = aggregate(algo, messages, state, cfg.server_lr, rnd, device)
        wall = time.perf_counter() - t0
        table = transport.gather_rows(timer.take(wall))
        if transport.is_server:
            by_client = {m.header.client_id: (r_, m) for r_, m in messages}
            order = sampled.tolist()
            weights = np.array([by_client[c][1].header.weight for c in order])
            losses = np.array([by_client[c][1].header.train_loss for c in order])
            pending = {
                "round": rnd, "train_loss": float((weights * losses).sum() / weights.sum()),
                "uplink_bytes": int(sum(v.nbytes for v in got.buffers)), "downlink_bytes": int(down),
                "wall_seconds": wall,
                "phase_seconds": _round_phases(table),
                "clients_sampled": sampled, "clients_rank": np.array([by_client[c][0] for c in order]),
                "clients_uplink_bytes": np.array([by_client[c][1].nbytes for c in order]),
                "clients_train_loss": losses, "rank_phase_seconds": table,
            }
    if transport.is_server:
        finish_row(pending, state)
        digest = writer.finalize(state, {"rounds_completed": cfg.rounds,
                                         "total_seconds": time.perf_counter() - t_start})
        log(f"done: {cfg.rounds} rounds in {_fmt_secs(time.perf_counter() - t_start)}; "
            f"final_model_sha256 {digest}; results in {out_path}", flush=True)
        return digest
    return None


def _round_phases(table: np.ndarray) -> np.ndarray:
    """One row per round: client phases from the slowest client rank, server phases from rank 0."""
    row = table[0].copy()
    if table.shape[0] > 1:
        for p in ("local_train", "encode"):
            i = PHASES.index(p)
            row[i] = table[1:, i].max()
    return row
