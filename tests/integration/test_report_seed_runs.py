"""`report`'s seed groups on three real tiny runs (configs/tiny.yaml, seeds 1, 2 and 3, one process, 2 rounds):
the group's n, mean and sample sd of final and best accuracy and of rounds and uplink to --target equal NumPy's
on the per-run values read from the HDF5 files.

The tiny config as it is sits at 10% for every seed after 2 rounds; with 1600 training samples on 4 clients that
all train each round the seeds part in round 2 (on the development machine: 10/10%, 10/20%, 10/12.5% at rounds
1/2; about 15 s for the three runs). The equality checks hold whatever the accuracies are."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from fedmrn_mpi.results import format_bytes

from conftest import ROOT

SEEDS = (1, 2, 3)
LEARNS = ["num_clients=4", "clients_per_round=4", "data.synthetic_train=1600"]


def _per_run(path: Path, target: float) -> dict:
    with h5py.File(path, "r") as f:
        acc, rnd, up = f["rounds/test_accuracy"][:], f["rounds/round"][:], f["rounds/uplink_bytes"][:]
    ev = np.flatnonzero(np.isfinite(acc))
    hit = np.flatnonzero(np.isfinite(acc) & (acc >= target))
    return {"final": acc[ev[-1]], "final_round": int(rnd[ev[-1]]), "best": np.nanmax(acc),
            "hit": (int(rnd[hit[0]]), int(up[: hit[0] + 1].sum())) if hit.size else None}


def _seed_row(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Seeds:"))
    assert lines[start + 1].split()[:6] == ["group", "algorithm", "n", "seeds", "final", "acc"]
    return re.split(r"\s{2,}", lines[start + 3].strip())


def test_report_seed_group_equals_numpy_on_three_tiny_runs(cli, tmp_path):
    files = []
    for s in SEEDS:
        out = tmp_path / f"tiny-s{s}.h5"
        res = cli(["run", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(out), f"seed={s}", *LEARNS])
        assert res.returncode == 0, f"seed {s}: {res.stderr[-3000:]}"
        files.append(out)
    # the second best run's best accuracy as the target: at least two runs reach it (n >= 2 for an sd)
    target = sorted(float(_per_run(p, 1.0)["best"]) for p in files)[-2]
    per = [_per_run(p, target) for p in files]
    finals, bests = [p["final"] for p in per], [p["best"] for p in per]
    hits = [p["hit"] for p in per if p["hit"]]
    rounds, ups = [h[0] for h in hits], [h[1] for h in hits]

    res = cli(["report", *map(str, files), "--target", repr(target), "-o", str(tmp_path / "plots")])
    assert res.returncode == 0, res.stderr
    row = _seed_row(res.stdout)
    sd = lambda v: np.std(v, ddof=1)  # noqa: E731 - the sample sd the report states
    assert row == ["tiny", "fedmrn/binary", "3", "1,2,3",
                   f"{100 * np.mean(finals):.2f} ± {100 * sd(finals):.2f}% @2",
                   f"{100 * np.mean(bests):.2f} ± {100 * sd(bests):.2f}%",
                   f"{len(hits)}/3", f"{np.mean(rounds):.1f} ± {sd(rounds):.1f}",
                   f"{format_bytes(np.mean(ups))} ± {format_bytes(sd(ups))}"], res.stdout
    assert "tiny: tiny-s1 (seed 1), tiny-s2 (seed 2), tiny-s3 (seed 3)" in res.stdout
    # the same numbers unrounded, through the API on the same files
    from fedmrn_mpi.report.seeds import seed_groups
    from fedmrn_mpi.results import load_runs

    [g] = seed_groups(load_runs(files)).groups
    assert g.final_accuracy.mean == np.mean(finals) and g.final_accuracy.sd == sd(finals)
    assert g.best_accuracy.mean == np.mean(bests) and g.best_accuracy.sd == sd(bests)
    r, u = g.to_target(target)
    assert (r.mean, r.sd, u.mean, u.sd) == (np.mean(rounds), sd(rounds), np.mean(ups), sd(ups))
    assert (tmp_path / "plots" / "accuracy_vs_round.png").stat().st_size > 0
    print("\n" + res.stdout)
