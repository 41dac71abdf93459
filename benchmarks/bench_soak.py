"""Soak and load (issue 11, item 6): memory, results-file growth and round time over a long run, and a
1,000-client job at 33 ranks. Figures, not tests.

    .venv/bin/python benchmarks/bench_soak.py soak [--ranks 9] [--rounds 200] [key=value ...]
    .venv/bin/python benchmarks/bench_soak.py load [--ranks 33] [--rounds 5] [key=value ...]

Both run `mpirun -n P python -m fedmrn_mpi run -c benchmarks/soak.yaml ...` in a temporary directory and watch
it from outside: every --period seconds (0.5) VmRSS and VmHWM (the kernel's peak) of each rank, from
/proc/<pid>/status of the python processes under the launched mpirun (rank from PMI_RANK or
OMPI_COMM_WORLD_RANK in /proc/<pid>/environ), and the results file's size; each progress line rank 0 prints
("round N/M ...") is time-stamped on arrival, with the file's size at that moment. Per-round wall times come
from the results file afterwards (`fedmrn_mpi.results.reader.load_run`).

soak: 200 rounds at -n 9 (benchmarks/soak.yaml: synthetic data, CNN4, 32 clients, 16 per round, evaluation
every 5 rounds, a checkpoint every 20). Per rank: RSS at round WARM (20) and at the last round, growth, and
the growth of the median RSS of rounds 20..40 to that of the last 20 rounds (a client rank's RSS swings within
a round), max; results file bytes per round (least-squares line over the rounds), the largest deviation from
it, and the growth over every span of --span (64) rounds; median round time of rounds 20..40 against the
last 20 rounds. The file grows in steps (HDF5 allocates whole chunks; fedmrn_mpi/results/writer.py uses
chunks of 16, 64 and 256 rounds), so a straight line fits it only up to a step; growing linearly means
every 64-round span adds the same bytes. Criteria (issue 11): RSS growth after warm-up < 5% on every rank
(both measures); file growth linear (largest span growth / smallest <= 1.05); round time steady (last-20 /
rounds-20..40 median <= 1.10).
Writes benchmarks/results/soak.json.

load: 1,000 clients, 100 per round, 20,000 synthetic training samples, 5 rounds at -n 33: start-up (largest
rank set-up time, and launch to the first progress line), median round time of rounds 2..N, total wall time,
peak RSS per rank. Writes benchmarks/results/load.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from launch import ROOT, launcher

sys.path.insert(0, str(ROOT))
from fedmrn_mpi.results.reader import load_run  # noqa: E402

CONFIG = ROOT / "benchmarks" / "soak.yaml"
RESULTS = ROOT / "benchmarks" / "results"
LOAD_OVERRIDES = ["num_clients=1000", "clients_per_round=100", "data.synthetic_train=20000", "eval_every=0",
                  "checkpoint_every=0", "run_name=load"]
RANK_VARS = ("PMI_RANK=", "OMPI_COMM_WORLD_RANK=")
ROUND_LINE = re.compile(r"^round\s+(\d+)/\d+\s")
MIB = 2**20


@dataclass
class Watch:
    """What was seen from outside while one job ran; times are seconds since the launch."""

    rc: int = -1
    wall: float = 0.0
    rss: dict[int, list[tuple[float, int]]] = field(default_factory=dict)  # rank -> [(t, VmRSS bytes)]
    hwm: dict[int, int] = field(default_factory=dict)                      # rank -> last VmHWM read, bytes
    sizes: list[tuple[float, int]] = field(default_factory=list)           # (t, results file bytes)
    rounds: dict[int, tuple[float, int]] = field(default_factory=dict)     # round -> (t of its line, file bytes)
    checkpoints: int = 0
    tail: deque = field(default_factory=lambda: deque(maxlen=40))


def _descendants(root: int) -> set[int]:
    """Every live process under `root` (from the parent pids in /proc/<pid>/stat)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _rank_of(pid: int) -> int | None:
    """The MPI rank of a fedmrn_mpi python process, from its environment; None for anything else."""
    try:
        if b"fedmrn_mpi" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for var in env:
        if var.startswith(RANK_VARS):
            return int(var.split("=", 1)[1])
    return None


def _status_bytes(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of `pid` in bytes, or None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in text.splitlines() if ln.startswith("Vm"))}
    return (kb["VmRSS"] * 1024, kb["VmHWM"] * 1024) if "VmRSS" in kb else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def watch(args: list[str], ranks: int, cwd: Path, h5: Path, period: float) -> Watch:
    """Launch `mpirun -n ranks python -m fedmrn_mpi ARGS` in `cwd` and sample it until it exits."""
    w = Watch()
    cmd = launcher().python_command(ranks, args)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=launcher().env({"PYTHONUNBUFFERED": "1"}), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)

    def read_lines() -> None:  # progress lines, time-stamped with the file's size as they arrive
        assert proc.stdout is not None
        for line in proc.stdout:
            w.tail.append(line.rstrip())
            m = ROUND_LINE.match(line)
            if m:
                w.rounds[int(m.group(1))] = (time.perf_counter() - t0, _size(h5))
            elif line.startswith("checkpoint after round"):
                w.checkpoints += 1

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    pids: dict[int, int] = {}  # pid -> rank
    while True:
        t = time.perf_counter() - t0
        if len(pids) < ranks:  # ranks appear while mpirun starts them
            for pid in _descendants(proc.pid) - pids.keys():
                r = _rank_of(pid)
                if r is not None:
                    pids[pid] = r
        for pid, r in pids.items():
            s = _status_bytes(pid)
            if s is not None:
                w.rss.setdefault(r, []).append((t, s[0]))
                w.hwm[r] = s[1]
        w.sizes.append((t, _size(h5)))
        try:  # the sampling period, ended early by the job's exit
            w.rc = proc.wait(timeout=period)
            break
        except subprocess.TimeoutExpired:
            continue
    w.wall = time.perf_counter() - t0
    reader.join()
    if w.rc != 0:
        raise SystemExit(f"failed ({w.rc}): {' '.join(cmd)}\n" + "\n".join(w.tail))
    return w


def rss_at(samples: list[tuple[float, int]], t: float) -> int:
    """The last sample taken at or before `t` (the first one if none was)."""
    before = [v for s, v in samples if s <= t]
    return before[-1] if before else samples[0][1]


def soak(a: argparse.Namespace, work: Path) -> dict:
    """Run the soak and summarise memory, file growth and round time."""
    h5 = work / "soak.h5"
    args = ["run", "-c", str(CONFIG), "-o", str(h5), f"rounds={a.rounds}", *a.overrides]
    w = watch(args, a.ranks, work, h5, a.period)
    run = load_run(h5)
    last = int(run.rounds[-1])
    warm = min(a.warm, last)
    t_warm, t_end = w.rounds[warm][0], w.rounds[last][0]
    t_2warm, t_last20 = w.rounds[min(2 * warm, last)][0], w.rounds[max(1, last - 20)][0]
    per_rank = {}
    for r in sorted(w.rss):
        s = w.rss[r]
        v0, v1 = rss_at(s, t_warm), rss_at(s, t_end)
        m0 = statistics.median(v for t, v in s if t_warm <= t <= t_2warm)
        m1 = statistics.median(v for t, v in s if t_last20 <= t <= t_end)
        per_rank[r] = {"rss_warm_mib": v0 / MIB, "rss_end_mib": v1 / MIB, "growth_pct": 100 * (v1 - v0) / v0,
                       "median_warm_to_2warm_mib": m0 / MIB, "median_last_20_mib": m1 / MIB,
                       "median_growth_pct": 100 * (m1 - m0) / m0,
                       "rss_max_mib": max(v for _, v in s) / MIB, "vmhwm_mib": w.hwm[r] / MIB,
                       "rss_per_round_mib": [round(rss_at(s, w.rounds[k][0]) / MIB, 2) for k in sorted(w.rounds)]}
    ks = np.array(sorted(w.rounds), dtype=float)
    sz = np.array([w.rounds[int(k)][1] for k in ks], dtype=float)
    slope, icpt = np.polyfit(ks, sz, 1)
    dev = float(np.abs(sz - (slope * ks + icpt)).max())
    by_round = dict(zip(ks.astype(int).tolist(), sz.tolist()))
    spans = [int(by_round[k + a.span] - by_round[k]) for k in by_round if k + a.span in by_round]
    span_ratio = max(spans) / min(spans) if spans and min(spans) > 0 else float("nan")
    half = len(ks) // 2
    s1, s2 = np.polyfit(ks[:half], sz[:half], 1)[0], np.polyfit(ks[half:], sz[half:], 1)[0]
    wall = dict(zip(run.rounds.tolist(), run.wall_seconds.tolist()))
    early = statistics.median(wall[k] for k in range(warm, min(2 * warm, last) + 1))
    late = statistics.median(wall[k] for k in range(max(1, last - 19), last + 1))
    growth = max(max(p["growth_pct"], p["median_growth_pct"]) for p in per_rank.values())
    return {
        "ranks": a.ranks, "rounds": last, "warm_round": warm, "wall_s": w.wall, "checkpoints_written": w.checkpoints,
        "ranks_seen": len(per_rank), "per_rank": per_rank,
        "file": {"bytes_per_round": float(slope), "intercept_bytes": float(icpt), "max_deviation_bytes": dev,
                 "span_rounds": a.span, "span_growth_min_bytes": min(spans, default=None),
                 "span_growth_max_bytes": max(spans, default=None),
                 "final_bytes": int(sz[-1]), "slope_first_half": float(s1), "slope_second_half": float(s2),
                 "size_at_round": {int(k): int(v) for k, v in zip(ks, sz)}},
        "round_s": {"median_warm_to_2warm": early, "median_last_20": late, "ratio": late / early,
                    "wall_seconds": [round(wall[k], 4) for k in sorted(wall)]},
        "criteria": {"rss_growth_below_5pct": growth < 5.0, "max_rss_growth_pct": growth,
                     "file_linear": bool(span_ratio <= 1.05), "round_time_steady": late / early <= 1.10},
    }


def load(a: argparse.Namespace, work: Path) -> dict:
    """Run the 1,000-client job and summarise start-up, round time, total wall time and peak memory."""
    h5 = work / "load.h5"
    args = ["run", "-c", str(CONFIG), "-o", str(h5), f"rounds={a.rounds}", *LOAD_OVERRIDES, *a.overrides]
    w = watch(args, a.ranks, work, h5, a.period)
    run = load_run(h5)
    later = run.wall_seconds[1:] if run.wall_seconds.size > 1 else run.wall_seconds
    setup = np.asarray(run.attrs.get("rank_setup_seconds", [np.nan]), dtype=float)
    return {
        "ranks": a.ranks, "rounds": int(run.rounds.size), "overrides": LOAD_OVERRIDES + a.overrides,
        "startup_s": {"largest_rank_setup": float(np.nanmax(setup)), "median_rank_setup": float(np.nanmedian(setup)),
                      "launch_to_first_round_line": w.rounds[min(w.rounds)][0]},
        "round_s": {"median_rounds_2_on": float(np.median(later)), "first": float(run.wall_seconds[0]),
                    "wall_seconds": [round(float(x), 4) for x in run.wall_seconds]},
        "total_wall_s": w.wall,
        "peak_rss_mib": {r: w.hwm[r] / MIB for r in sorted(w.hwm)},
        "peak_rss_sum_mib": sum(w.hwm.values()) / MIB,
    }


def print_soak(res: dict) -> None:
    print(f"soak: {res['rounds']} rounds at -n {res['ranks']}, {res['wall_s']:.0f} s, "
          f"{res['checkpoints_written']} checkpoints")
    print(f"{'rank':>4} {'RSS@' + str(res['warm_round']) + ' MiB':>12} {'RSS end MiB':>12} {'growth':>8} "
          f"{'median growth':>14} {'max MiB':>8} {'VmHWM MiB':>10}")
    for r, p in res["per_rank"].items():
        print(f"{r:>4} {p['rss_warm_mib']:>12.1f} {p['rss_end_mib']:>12.1f} {p['growth_pct']:>7.2f}% "
              f"{p['median_growth_pct']:>13.2f}% {p['rss_max_mib']:>8.1f} {p['vmhwm_mib']:>10.1f}")
    f, t, c = res["file"], res["round_s"], res["criteria"]
    print(f"results file: {f['bytes_per_round']:.0f} B/round (first half {f['slope_first_half']:.0f}, second "
          f"{f['slope_second_half']:.0f}), largest deviation from the line {f['max_deviation_bytes']:.0f} B, "
          f"every {f['span_rounds']}-round span adds {f['span_growth_min_bytes']}..{f['span_growth_max_bytes']} B, "
          f"final {f['final_bytes']} B")
    print(f"round time: median rounds {res['warm_round']}..{2 * res['warm_round']} {t['median_warm_to_2warm']:.3f} s, "
          f"last 20 {t['median_last_20']:.3f} s (ratio {t['ratio']:.3f})")
    print("criteria: " + ", ".join(f"{k}={v}" for k, v in c.items()))


def print_load(res: dict) -> None:
    s, peak = res["startup_s"], res["peak_rss_mib"]
    print(f"load: {res['rounds']} rounds at -n {res['ranks']} ({', '.join(res['overrides'])})")
    print(f"start-up: largest rank set-up {s['largest_rank_setup']:.1f} s (median {s['median_rank_setup']:.1f} s), "
          f"launch to first round line {s['launch_to_first_round_line']:.1f} s")
    print(f"round time: median of rounds 2..N {res['round_s']['median_rounds_2_on']:.2f} s "
          f"(round 1 {res['round_s']['first']:.2f} s); total wall {res['total_wall_s']:.1f} s")
    rest = [v for r, v in peak.items() if r != 0]
    print(f"peak RSS: rank 0 {peak.get(0, float('nan')):.0f} MiB, client ranks {min(rest):.0f}..{max(rest):.0f} "
          f"MiB, all ranks {res['peak_rss_sum_mib']:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("soak", "load"))
    ap.add_argument("--ranks", type=int, default=None, help="mpirun -n (soak 9, load 33)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (soak 200, load 5)")
    ap.add_argument("--warm", type=int, default=20, help="soak: the round after which memory should be flat")
    ap.add_argument("--span", type=int, default=64, help="soak: rounds per span when checking linear growth")
    ap.add_argument("--period", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<kind>.json)")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    a = ap.parse_args()
    soaking = a.kind == "soak"
    a.ranks = a.ranks or (9 if soaking else 33)
    a.rounds = a.rounds or (200 if soaking else 5)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix=f"fedmrn-{a.kind}-") as tmp:
        res = (soak if soaking else load)(a, Path(tmp))
    res = {"kind": a.kind, "when": _dt.datetime.now().isoformat(timespec="seconds"),
           "config": str(CONFIG.relative_to(ROOT)), "extra_overrides": a.overrides,
           "cores": len(os.sched_getaffinity(0)), "sample_period_s": a.period,
           "loadavg_1_5_15_before_after": [load_before, os.getloadavg()], **res}
    (print_soak if soaking else print_load)(res)
    out = Path(a.out) if a.out else RESULTS / f"{a.kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"raw numbers: {out}")


if __name__ == "__main__":
    main()
