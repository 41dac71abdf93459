"""How close a round comes to the machine's compute floor.

    python benchmarks/bench_floor.py [-c benchmarks/peer_task.yaml] [--ranks 3] [--rounds 20] [--cores N]

1. The floor: in this process, on one core (one torch thread), the work of a round measured piece by piece:
   training each sampled client of a few rounds (`train_client`, encode included) and evaluating the whole test
   set once (in the run's evaluation blocks). floor = (training + evaluation) / cores.
2. The run: `mpirun -n RANKS python -m fedmrn_mpi run -c CONFIG` for ROUNDS rounds (evaluation every round in
   the peer task); its seconds per round (mean of rounds 2..N, from the results file) and the whole command's
   wall time, start-up included.
Prints both and their ratio (the issue's target: round wall time <= 1.10 x floor) and writes the raw numbers to
benchmarks/results/floor.json (`--out`). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmrn_mpi.config import load_config  # noqa: E402
from launch import fedmrn  # noqa: E402
from fedmrn_mpi.run.eval_sharing import Shard  # noqa: E402
from fedmrn_mpi.run.setup import build_setup  # noqa: E402
from fedmrn_mpi.training import sample_clients, train_client  # noqa: E402
from fedmrn_mpi.training.block_scores import block_size_for  # noqa: E402


class _OneProcess:
    """The transport facts `build_setup` reads, for a single process that plays every role."""
    rank, size, local_rank, local_size, is_server, runs_clients, client_ranks = 0, 1, 0, 1, True, True, [0]


def measure_floor(config: str, overrides: list[str], rounds: int) -> dict:
    cfg = load_config(config, [*overrides, "threads=1", "device=cpu"])
    torch.set_num_threads(1)
    su = build_setup(cfg, _OneProcess())
    train, evals = [], []
    shard = Shard(su, block_size_for(cfg.eval_batch_size, su.device))
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        for c in sample_clients(cfg.seed, r, cfg.num_clients, cfg.clients_per_round).tolist():
            x, y = su.client_data(c)
            ctx = su.local.context(r, c, int(su.sizes[c]), su.device)
            train_client(su.model, su.algo, su.state, x, y, ctx, su.local)
        train.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        shard.evaluate(su.state, r, 0, shard.total)
        evals.append(time.perf_counter() - t0)
    # the first round warms caches and allocators: drop it when there are more
    t, e = (train[1:], evals[1:]) if rounds > 1 else (train, evals)
    return {"train_s": float(np.mean(t)), "evaluate_s": float(np.mean(e)), "clients": cfg.clients_per_round,
            "test_images": su.num_test, "eval_block": shard.block_size}


def run_job(config: str, overrides: list[str], ranks: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.h5"
        total = fedmrn(["run", "-c", config, "-o", str(out), *overrides, f"rounds={rounds}", "checkpoint_every=0"],
                       ranks, Path(tmp))
        with h5py.File(out, "r") as f:
            wall = f["rounds/wall_seconds"][:]
            phases = dict(zip(f["rounds/phase_seconds"].attrs["phases"], f["rounds/phase_seconds"][1:].mean(0)))
            acc = float(f["rounds/test_accuracy"][-1])
            setup = float(f.attrs["rank_setup_seconds"].max())
    return {"ranks": ranks, "rounds": rounds, "round_s": float(wall[1:].mean() if rounds > 1 else wall.mean()),
            "total_s": total, "final_accuracy": acc, "setup_s": setup,
            "phases_s": {k: float(v) for k, v in phases.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default=str(ROOT / "benchmarks" / "peer_task.yaml"))
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--floor-rounds", type=int, default=3, help="rounds of work timed on one core")
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "floor.json"))
    ap.add_argument("overrides", nargs="*", help="config overrides for both parts")
    args = ap.parse_args()
    args.config = str(Path(args.config).resolve())  # the runs start in a temporary directory
    floor = measure_floor(args.config, args.overrides, args.floor_rounds)
    floor_s = (floor["train_s"] + floor["evaluate_s"]) / args.cores
    run = run_job(args.config, args.overrides, args.ranks, args.rounds)
    ratio = run["round_s"] / floor_s
    print(f"one core: training {floor['clients']} clients {floor['train_s']:.2f} s + evaluating {floor['test_images']} "
          f"images (blocks of {floor['eval_block']}) {floor['evaluate_s']:.2f} s per round")
    print(f"compute floor on {args.cores} cores: {floor_s:.2f} s per round")
    print(f"mpirun -n {args.ranks}: {run['round_s']:.2f} s per round (rounds 2..{args.rounds}), {run['total_s']:.1f} s "
          f"in all (set-up {run['setup_s']:.1f} s), final accuracy {100 * run['final_accuracy']:.2f}%")
    print(f"round / floor = {ratio:.3f} (target <= 1.10)")
    print("critical path per round: " + ", ".join(f"{k} {v:.2f}" for k, v in run["phases_s"].items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": args.config, "overrides": args.overrides, "cores": args.cores,
                                          "floor": floor, "floor_s": floor_s, "run": run, "ratio": ratio},
                                         indent=1))
    print(f"raw numbers: {args.out}")


if __name__ == "__main__":
    main()
