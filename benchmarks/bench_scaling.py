"""Round time and its phases at several world sizes: strong scaling (the same round on more ranks) and weak
scaling (two clients per client rank).

    python benchmarks/bench_scaling.py [--ranks 3,5,9,17,33] [--rounds 3] [-c configs/default.yaml] [key=value ...]

Every run is `mpirun -n P python -m fedmrn_mpi run -c CONFIG rounds=R eval_every=1 ...`; per run the script
reads the results file: mean wall seconds per round over rounds 2..R, the critical path's phases
(rounds/phase_seconds), the largest rank set-up time, and the command's wall time. Strong: clients_per_round =
--strong-clients (32) at every P. Weak: clients_per_round = 2 (P - 1). Prints one table per kind with speed-up
and efficiency relative to the smallest P, and writes the raw numbers to benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import h5py

from launch import fedmrn

ROOT = Path(__file__).resolve().parents[1]


def one_run(config: str, ranks: int, rounds: int, clients: int, overrides: list[str], work: Path) -> dict:
    out = work / f"n{ranks}-k{clients}.h5"
    total = fedmrn(["run", "-c", config, "-o", str(out), f"rounds={rounds}", "eval_every=1", "checkpoint_every=0",
                    f"clients_per_round={clients}", "device=cpu", *overrides], ranks, work)
    with h5py.File(out, "r") as f:
        wall = f["rounds/wall_seconds"][1:]
        ph = f["rounds/phase_seconds"]
        phases = {str(k): float(v) for k, v in zip(ph.attrs["phases"], ph[1:].mean(axis=0))}
        setup = float(f.attrs["rank_setup_seconds"].max())
    return {"ranks": ranks, "clients_per_round": clients, "round_s": float(wall.mean()), "setup_s": setup,
            "total_s": total, "phases_s": phases}


def table(kind: str, rows: list[dict]) -> str:
    base = rows[0]
    lines = [f"{kind}: s/round (rounds 2..N), speed-up and efficiency vs -n {base['ranks']}",
             f"{'ranks':>5} {'clients':>7} {'s/round':>8} {'speedup':>8} {'eff':>6} {'setup s':>8}  critical path"]
    for r in rows:
        if kind == "strong":
            sp = base["round_s"] / r["round_s"]
            eff = sp * base["ranks"] / r["ranks"]
        else:  # weak: the work grows with the client ranks; ideal is a constant round time
            sp = base["round_s"] * (r["clients_per_round"] / base["clients_per_round"]) / r["round_s"]
            eff = base["round_s"] / r["round_s"]
        path = " ".join(f"{k[:6]}={v:.2f}" for k, v in r["phases_s"].items() if v >= 0.005)
        lines.append(f"{r['ranks']:>5} {r['clients_per_round']:>7} {r['round_s']:>8.2f} {sp:>8.2f} {100 * eff:>5.0f}% "
                     f"{r['setup_s']:>8.1f}  {path}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--ranks", default="3,5,9,17,33")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--strong-clients", type=int, default=32)
    ap.add_argument("--kinds", default="strong,weak")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    args.config = str(Path(args.config).resolve())  # the runs start in a temporary directory
    ranks = [int(p) for p in args.ranks.split(",")]
    out: dict = {"config": args.config, "overrides": args.overrides, "cores": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory(prefix="fedmrn-scaling-") as tmp:
        for kind in args.kinds.split(","):
            rows = []
            for p in ranks:
                k = args.strong_clients if kind == "strong" else 2 * max(p - 1, 1)
                rows.append(one_run(args.config, p, args.rounds, k, args.overrides, Path(tmp)))
                print(f"  {kind} -n {p}: {rows[-1]['round_s']:.2f} s/round", flush=True)
            print(table(kind, rows), flush=True)
            out[kind] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"raw numbers: {args.out}")


if __name__ == "__main__":
    main()
