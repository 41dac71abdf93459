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
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import __version__
from .algorithms import Algorithm, ModelSpec, make_algorithm
from .checkpoint import checkpoint_dir, save_checkpoint
from .client import make_context, train_client
from .config import Config, config_hash, config_to_yaml
from .data.partition import partition, partition_stats
from .data.readers import normalize_images
from .data.registry import load_dataset
from .models import build_model, global_state, masked_names
from .progress import PhaseTimer, format_duration, progress_line, round_phases
from .results import ResultsWriter, state_sha256
from .resume import Start, plan_start, resume_identity
from .schedule import assign_clients, sample_clients
from .seeds import derive_seed
from .server import aggregate, evaluate
from .stop import EXIT_STOPPED, SIGNALS, StopNow
from .transport import Transport, mpi_library_version
from .wire import WireError, decode_messages, encode_message


@dataclass
class RunState:
    """Progress shared with the error handler (which round failed)."""

    round: int = 0


STATE = RunState()

FAULT_ENV = "FEDMRN_MPI_INJECT_FAULT"


def _fault(rank: int, round_: int) -> str | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    parts = spec.split(":")
    if int(parts[0]) == rank and int(parts[1]) == round_:
        return parts[2] if len(parts) > 2 else "raise"
    return None


def maybe_inject_fault(rank: int, round_: int) -> None:
    """Test hook: FEDMRN_MPI_INJECT_FAULT="RANK:ROUND[:raise|kill|corrupt]" fails that rank at that round
    (corrupt: perturbs its copy of the global model after the masks downlink)."""
    kind = _fault(rank, round_)
    if kind == "kill":
        os.kill(os.getpid(), 9)
    if kind == "raise":
        raise RuntimeError(f"fault injected by {FAULT_ENV}={os.environ[FAULT_ENV]}")


def maybe_corrupt_state(rank: int, round_: int, state: dict) -> dict:
    if _fault(rank, round_) != "corrupt":
        return state
    first = next(iter(state))
    return {**state, first: state[first] + 1e-3}


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


FLAG_STOP, FLAG_FULL_STATE, FLAG_DONE = 1, 2, 4


@dataclass
class Setup:
    """Everything a rank builds before the first round (the same on every rank, from the config)."""

    device: torch.device
    threads: int
    model: torch.nn.Module
    spec: ModelSpec
    algo: Algorithm
    sizes: np.ndarray
    label_counts: np.ndarray
    transform: Callable[[torch.Tensor], torch.Tensor]
    state: dict
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None
    parts: list | None = None
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None


def prepare(cfg: Config, transport: Transport) -> Setup:
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
    su = Setup(device=device, threads=threads, model=model, spec=spec, algo=make_algorithm(cfg, spec),
               sizes=np.array([len(p) for p in parts], dtype=np.int64),
               label_counts=partition_stats(parts, data.y_train.numpy(), data.num_classes),
               # images stay uint8 on every rank (4x less memory with many ranks per node); normalised per batch
               transform=functools.partial(normalize_images, mean=data.mean, std=data.std),
               state={n: t.detach().clone() for n, t in global_state(model).items()})
    if transport.is_server:
        su.x_test, su.y_test = data.images_test.to(device), data.y_test.to(device)
    if transport.runs_clients:
        su.x_train, su.y_train = data.images_train.to(device), data.y_train.to(device)
        su.parts = [torch.from_numpy(p).to(device) for p in parts]
    return su


def _ranks_text(devices: list[str]) -> str:
    """'0:cpu 1-4:cuda:0' style summary of which device each rank uses."""
    out, start = [], 0
    for r in range(1, len(devices) + 1):
        if r == len(devices) or devices[r] != devices[start]:
            out.append(f"{start}{'' if r - 1 == start else f'-{r - 1}'}:{devices[start]}")
            start = r
    return " ".join(out)


def run(cfg: Config, out_path: str, transport: Transport, log=print, resume: bool = False) -> int:
    """Run the federated training on this rank; returns the exit status (0, or EXIT_STOPPED after a stop)."""
    rank, world = transport.rank, transport.size
    root = cfg.seed
    su = prepare(cfg, transport)
    model, spec, algo, device, state = su.model, su.spec, su.algo, su.device, su.state
    masks_down = cfg.algorithm.downlink == "masks" and world > 1
    flat = FlatState(spec)
    ckdir = checkpoint_dir(out_path)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    hosts = transport.gather_strings(f"{transport.hostname()}|{device}|{gpu}")
    writer = None
    start = Start()
    pending: dict | None = None
    if transport.is_server:
        start = plan_start(cfg, out_path, resume)
        if start.note:
            log(f"fedmrn_mpi: {start.note}", flush=True)
    if transport.is_server and not start.complete:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        devices = [s.split("|")[1] for s in hosts]
        attrs = {
            "config_yaml": config_to_yaml(cfg), "config_sha256": config_hash(cfg), "version": __version__,
            "world_size": world, "world_sizes": np.array([world], dtype=np.int64),
            "algorithm": cfg.algorithm.name, "git_revision": git_revision(),
            "torch_version": str(torch.__version__), "numpy_version": np.__version__,
            "python_version": platform.python_version(), "mpi_library": mpi_library_version(),
            "hosts": sorted({s.split("|")[0] for s in hosts}), "rank_hosts": [s.split("|")[0] for s in hosts],
            "rank_devices": devices, "rank_gpu_names": [s.split("|")[2] for s in hosts],
            "gpu_names": sorted({s.split("|")[2] for s in hosts} - {"none"}) or ["none"],
            "threads_per_rank": su.threads,
            "num_masked_params": spec.num_masked, "num_unmasked_values": spec.num_unmasked,
            "payload_bytes_per_client": algo.payload_nbytes(),
        }
        if start.state is not None:
            state = {n: t.to(device) for n, t in start.state.items()}
            pending = start.pending
            writer = ResultsWriter.reopen(out_path, start.rows, attrs, world)
        else:
            static = {"partition/sizes": su.sizes, "partition/label_counts": su.label_counts}
            writer = ResultsWriter(out_path, attrs, cfg.clients_per_round, world, static)
        log(f"fedmrn_mpi {__version__}: {cfg.algorithm.name} on {cfg.data.name}/{cfg.model.name}, "
            f"{cfg.num_clients} clients ({cfg.clients_per_round}/round), {cfg.rounds} rounds, "
            f"{world} rank(s), {su.threads} thread(s)/rank, downlink {cfg.algorithm.downlink}; "
            f"{spec.num_masked} masked + {spec.num_unmasked} unmasked values, "
            f"upload {algo.payload_nbytes()} B/client; results -> {out_path}")
        log(f"devices: {_ranks_text(devices)}", flush=True)

    timer = PhaseTimer()
    ctrl = np.zeros(2, dtype=np.int64)
    resync = True  # the first round (also after a resume) sends the full state
    stop_after = False
    done_round = start.round - 1
    t_start = time.perf_counter()

    def finish_row(row: dict, eval_state: dict[str, torch.Tensor]) -> None:
        r = row["round"]
        if cfg.eval_every and r % cfg.eval_every == 0 or r == cfg.rounds:
            with timer("evaluate"):
                row["test_accuracy"], row["test_loss"] = evaluate(model, eval_state, su.x_test, su.y_test,
                                                                  transform=su.transform)
        else:
            row["test_accuracy"] = row["test_loss"] = math.nan
        writer.append_round(row)
        if r % cfg.log_every == 0 or r == cfg.rounds:
            log(progress_line(row, cfg.rounds, time.perf_counter() - t_start, r - start.round + 1), flush=True)

    def checkpoint(why: str) -> None:
        path = save_checkpoint(ckdir, done_round, {
            "state": state, "pending": pending, "identity": resume_identity(cfg),
            "config_sha256": config_hash(cfg), "version": __version__, "seed": root,
            "server_state": {}, "client_state": {}})
        log(f"checkpoint after round {done_round} ({why}): {path}", flush=True)

    try:
        while True:
            # the server drives: next round, or stop (checkpointed), or done
            if transport.is_server:
                if start.complete or done_round >= cfg.rounds:
                    ctrl[:] = (done_round, FLAG_DONE)
                elif stop_after:
                    ctrl[:] = (done_round, FLAG_STOP)
                else:
                    ctrl[:] = (done_round + 1, FLAG_FULL_STATE if (not masks_down or resync) else 0)
            transport.sync()
            t0 = time.perf_counter()
            down = 0
            with timer("broadcast"):
                down += transport.bcast(ctrl)
            flags = int(ctrl[1])
            if flags & (FLAG_DONE | FLAG_STOP):
                break
            rnd = int(ctrl[0])
            STATE.round = rnd
            with timer("broadcast"):
                if flags & FLAG_FULL_STATE:
                    if transport.is_server:
                        flat.pack(state)
                    down += transport.bcast(flat.buf)
                    if not transport.is_server:
                        state = flat.unpack(device)
            resync_now = masks_down and bool(flags & FLAG_FULL_STATE) and rnd > 1
            if pending is not None:  # evaluate the model just broadcast while the clients train
                finish_row(pending, state)
                pending = None

            maybe_inject_fault(rank, rnd)
            sampled = sample_clients(root, rnd, cfg.num_clients, cfg.clients_per_round)
            assignment = assign_clients(sampled, su.sizes, transport.client_ranks)
            uploads = []
            for cid in assignment.get(rank, []):
                ctx = make_context(root, rnd, cid, int(su.sizes[cid]), cfg.batch_size, cfg.local_epochs, device)
                idx = su.parts[cid]
                res = train_client(model, algo, state, su.x_train[idx], su.y_train[idx], ctx, root_seed=root,
                                   lr=cfg.lr, batch_size=cfg.batch_size, local_epochs=cfg.local_epochs,
                                   weighting=cfg.algorithm.weighting, timer=timer, transform=su.transform)
                with timer("encode"):
                    uploads.append(encode_message(algo.algo_id, rnd, cid, res.seed, res.weight, res.train_loss,
                                                  res.payload))
            with timer("encode"):
                mine = np.concatenate(uploads) if uploads else np.empty(0, dtype=np.uint8)

            transport.sync()
            with timer("gather"):
                got = transport.gather(mine)
            messages = []
            new_state = state
            if transport.is_server:
                with timer("decode_aggregate"):
                    for r_, view in enumerate(got.buffers):
                        messages += [(r_, m) for m in decode_messages(
                            view, rank=r_, round_=rnd, algo_id=algo.algo_id,
                            expected_clients=set(assignment.get(r_, [])))]
                    _check_complete(messages, sampled, rnd)
                    new_state = aggregate(algo, messages, state, cfg.server_lr, rnd, device)
            if masks_down:
                # every rank rebuilds the same global model from the relayed uploads
                with timer("broadcast"):
                    relay = transport.bcast_bytes(got.data if transport.is_server else None)
                    down += (8 + relay.nbytes) * (world - 1) if transport.is_server else 0
                if not transport.is_server:
                    with timer("decode_aggregate"):
                        relayed = [(0, m) for m in decode_messages(relay, rank=0, round_=rnd, algo_id=algo.algo_id,
                                                                   expected_clients=set(sampled.tolist()))]
                        _check_complete(relayed, sampled, rnd)
                        new_state = aggregate(algo, relayed, state, cfg.server_lr, rnd, device)
                new_state = maybe_corrupt_state(rank, rnd, new_state)
            mismatched: list[int] = []
            if masks_down and (rnd % cfg.sync_every == 0 or rnd == cfg.rounds):
                with timer("broadcast"):
                    digest = np.frombuffer(bytes.fromhex(state_sha256(new_state)), dtype=np.uint8)
                    table_d = transport.allgather_rows(digest)
                    mismatched = [r for r in range(world) if not np.array_equal(table_d[r], table_d[0])]
                    down += digest.nbytes * (world - 1) if transport.is_server else 0
            resync = bool(mismatched)
            if transport.is_server and mismatched:
                log(f"round {rnd}: model digest differs on rank(s) {mismatched}; full float32 resync next round",
                    flush=True)
            wall = time.perf_counter() - t0
            table = transport.gather_rows(np.append(timer.take(wall), float(SIGNALS.requested)))
            state = new_state
            if transport.is_server:
                # the round is complete only now: state, row and round number change together
                pending = _round_row(rnd, sampled, messages, got, down, wall, table[:, :-1], resync_now,
                                     len(mismatched))
                done_round = rnd
                stop_req = bool(table[:, -1].any())
                periodic = cfg.checkpoint_every and rnd % cfg.checkpoint_every == 0
                if rnd < cfg.rounds and (stop_req or periodic):
                    checkpoint("stop requested" if stop_req else "periodic")
                stop_after = stop_req and rnd < cfg.rounds
    except StopNow as exc:
        # second signal: rank 0 keeps the last completed round; every rank leaves without finishing the round
        if transport.is_server:
            if done_round >= start.round:
                checkpoint(str(exc))
            writer.close()
            log(f"fedmrn_mpi: {exc}; run again with --resume to continue", flush=True)
        else:
            transport.tell_server_urgent()
            time.sleep(60)  # rank 0 checkpoints and ends the job; this is only the last resort
        transport.abort(EXIT_STOPPED)

    if transport.is_server and not start.complete:
        if done_round >= cfg.rounds:
            if pending is not None:
                finish_row(pending, state)
            digest = writer.finalize(state, {"rounds_completed": cfg.rounds,
                                             "total_seconds": time.perf_counter() - t_start})
            log(f"done: {cfg.rounds} rounds in {format_duration(time.perf_counter() - t_start)}; "
                f"final_model_sha256 {digest}; results in {out_path}", flush=True)
        else:
            writer.close()
            log(f"stopped after round {done_round} on request; results so far in {out_path}; "
                f"continue with --resume (exit status {EXIT_STOPPED})", flush=True)
    return EXIT_STOPPED if (int(ctrl[1]) & FLAG_STOP) else 0


def _check_complete(messages: list, sampled: np.ndarray, rnd: int) -> None:
    seen = sorted(m.header.client_id for _, m in messages)
    if seen != sampled.tolist():
        missing = sorted(set(sampled.tolist()) - set(seen))
        raise WireError(f"round {rnd}: uploads missing for clients {missing}" if missing
                        else f"round {rnd}: duplicate uploads for clients "
                             f"{sorted({c for c in seen if seen.count(c) > 1})}")


def _round_row(rnd: int, sampled: np.ndarray, messages: list, got, down: int, wall: float, table: np.ndarray,
               resync: bool, mismatched: int) -> dict:
    """One results row (without the evaluation, which happens while the next round trains)."""
    by_client = {m.header.client_id: (r_, m) for r_, m in messages}
    order = sampled.tolist()
    weights = np.array([by_client[c][1].header.weight for c in order])
    losses = np.array([by_client[c][1].header.train_loss for c in order])
    return {
        "round": rnd, "train_loss": float((weights * losses).sum() / weights.sum()),
        "uplink_bytes": int(got.counts.sum()), "downlink_bytes": int(down), "wall_seconds": wall,
        "resync": int(resync), "digest_mismatches": mismatched,
        "phase_seconds": round_phases(table, wall),
        "clients_sampled": sampled, "clients_rank": np.array([by_client[c][0] for c in order]),
        "clients_uplink_bytes": np.array([by_client[c][1].nbytes for c in order]),
        "clients_train_loss": losses, "rank_phase_seconds": table,
    }


