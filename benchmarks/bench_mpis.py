"""The same job under MPICH (the `mpich` wheel, .venv) and Debian's Open MPI (.venv-ompi), side by side in one
run: s/round at several world sizes, on an idle machine and on one that another job is loading.

    python benchmarks/bench_mpis.py [--ranks 3,9,33] [--rounds 4] [--load 0,2] [-c configs/default.yaml] [key=value ...]
    python benchmarks/bench_mpis.py --openmpi-yield both ...   # also Open MPI without mpi_yield_when_idle

Each (load, world size) runs MPICH then Open MPI back to back, so both see the same machine. "Load" is N
busy processes started before the runs and stopped after them (a second user's job on a shared node: one per
core is a fully loaded node). Per run the script reads the results file: mean wall seconds per round over
rounds 2..R, the critical path's phases, the largest rank set-up time, and the command's wall time, and it checks
that both MPIs gave the same final_model_sha256. The environments come from --mpich-venv / --openmpi-venv
(defaults .venv and .venv-ompi, built by setup.sh and scripts/test_openmpi.sh); each MPI is launched with its
settings from tests/launchers.py. Raw numbers go to benchmarks/results/mpis.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import h5py

from launch import ROOT, fedmrn, launcher_for


def _spin(stop) -> None:  # one busy core: the other job
    while not stop.is_set():
        sum(range(10_000))


def one_run(lau, config: str, ranks: int, rounds: int, overrides: list[str], work: Path,
            env_extra: dict[str, str] | None = None) -> dict:
    out = work / f"{lau.flavour}-n{ranks}.h5"
    total = fedmrn(["run", "-c", config, "-o", str(out), f"rounds={rounds}", "eval_every=1", "checkpoint_every=0",
                    "device=cpu", *overrides], ranks, work, lau, env_extra)
    with h5py.File(out, "r") as f:
        wall = f["rounds/wall_seconds"][1:]
        ph = f["rounds/phase_seconds"]
        phases = {str(k): float(v) for k, v in zip(ph.attrs["phases"], ph[1:].mean(axis=0))}
        return {"mpi": lau.flavour, "ranks": ranks, "round_s": float(wall.mean()),
                "setup_s": float(f.attrs["rank_setup_seconds"].max()), "total_s": total, "phases_s": phases,
                "digest": str(f.attrs["final_model_sha256"]), "mpi_library": str(f.attrs["mpi_library"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--ranks", default="3,9,33")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--load", default=f"0,{os.cpu_count() or 2}", help="busy processes beside the job, per series")
    ap.add_argument("--mpich-venv", default=str(ROOT / ".venv"))
    ap.add_argument("--openmpi-venv", default=str(ROOT / ".venv-ompi"))
    ap.add_argument("--openmpi-yield", choices=("on", "both"), default="on",
                    help="both: also run Open MPI with OMPI_MCA_mpi_yield_when_idle=0 (its default: spin when idle)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mpis.json"))
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    launchers = [launcher_for(str(Path(v) / "bin" / "python")) for v in (a.mpich_venv, a.openmpi_venv)]
    assert [x.flavour for x in launchers] == ["mpich", "openmpi"], [x.version for x in launchers]
    # (name, launcher, variables over the launcher's own): MPICH, Open MPI as the tests run it, and optionally
    # Open MPI with its default busy-polling
    variants = [("mpich", launchers[0], None), ("openmpi", launchers[1], None)]
    if a.openmpi_yield == "both":
        variants.append(("openmpi-spin", launchers[1], {"OMPI_MCA_mpi_yield_when_idle": "0"}))
    config = str(Path(a.config).resolve())
    rows = []
    for load in (int(x) for x in a.load.split(",")):
        stop = mp.Event()
        hogs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(load)]
        for h in hogs:
            h.start()
        try:
            for ranks in (int(x) for x in a.ranks.split(",")):
                pair = []
                for name, lau, extra in variants:
                    with tempfile.TemporaryDirectory() as tmp:
                        r = one_run(lau, config, ranks, a.rounds, a.overrides, Path(tmp), extra)
                    r["load"], r["mpi"] = load, name
                    pair.append(r)
                    rows.append(r)
                    path = " ".join(f"{k[:6]}={v:.2f}" for k, v in r["phases_s"].items() if v >= 0.005)
                    print(f"load {load} -n {ranks:>2} {r['mpi']:<8} {r['round_s']:7.2f} s/round  setup "
                          f"{r['setup_s']:5.1f} s  total {r['total_s']:6.1f} s  {path}", flush=True)
                same = len({p["digest"] for p in pair}) == 1
                ratios = ", ".join(f"{p['mpi']} / mpich {p['round_s'] / pair[0]['round_s']:.2f}" for p in pair[1:])
                print(f"load {load} -n {ranks:>2} s/round {ratios}; digests {'equal' if same else 'DIFFER'} "
                      f"({pair[0]['digest'][:8]})", flush=True)
        finally:
            stop.set()
            for h in hogs:
                h.join()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
                                       "launchers": [x.version for x in launchers], "rows": rows}, indent=1))
    k = len(variants)
    names = [v[0] for v in variants]
    print("\n" + f"{'load':>4} {'ranks':>5} " + " ".join(f"{n + ' s/rd':>17} {'total s':>8}" for n in names)
          + "  ratio(s) to mpich  digests")
    for i in range(0, len(rows), k):
        group = rows[i:i + k]
        cells = " ".join(f"{g['round_s']:>17.2f} {g['total_s']:>8.1f}" for g in group)
        ratios = " ".join(f"{g['round_s'] / group[0]['round_s']:.2f}" for g in group[1:])
        same = "equal" if len({g["digest"] for g in group}) == 1 else "DIFFER"
        print(f"{group[0]['load']:>4} {group[0]['ranks']:>5} {cells}  {ratios:>17}  {same}")
    print(f"raw numbers: {a.out}")


if __name__ == "__main__":
    main()
