"""`report`'s seed groups on results files written directly with ResultsWriter (no MPI, no torch in `report`):
which runs merge, their mean ± sample sd and n against NumPy, rounds and uplink to a target when some seeds
miss it, names, notes, and the mean line with its min-max band in the accuracy plots."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from fedmrn_mpi.report import main_report
from fedmrn_mpi.report.seeds import flat_config, seed_groups
from fedmrn_mpi.report.table import display_names
from fedmrn_mpi.results import ResultsWriter, format_bytes, load_run, load_runs
from result_rows import round_row

from conftest import ROOT

CPR = 2
NAN = float("nan")


def write_run(path: Path, name: str, seed: int | None, acc: list[float], uplink: list[int] | None = None,
              world: int = 2, cfg: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A results file of `len(acc)` rounds with these test accuracies (NaN: not evaluated) and uplink bytes per
    round; `cfg` overrides config keys (dotted), `drop` removes them (as an older version's file lacks them)."""
    conf = {"run_name": name, "results_dir": "results", "seed": seed, "rounds": len(acc), "clients_per_round": CPR,
            "lr": 0.1, "bn_recalibrate": False, "algorithm": {"name": "fedmrn", "mask": "binary", "levels": 1}}
    for key, value in (cfg or {}).items():
        *parents, leaf = key.split(".")
        d = conf
        for p in parents:
            d = d[p]
        d[leaf] = value
    for key in drop:
        *parents, leaf = key.split(".")
        d = conf
        for p in parents:
            d = d[p]
        del d[leaf]
    if seed is None:
        del conf["seed"]
    uplink = uplink or [1000 * (k + 1) for k in range(len(acc))]
    w = ResultsWriter(str(path), {"config_yaml": yaml.safe_dump(conf, sort_keys=False), "world_size": world,
                                  "algorithm": conf["algorithm"]["name"], "version": "0"}, CPR, world)
    for k, (a, up) in enumerate(zip(acc, uplink), start=1):
        w.append_round(round_row(k, world, client_uplink=(up // 2, up - up // 2), test_accuracy=a,
                                 test_loss=1.0 if np.isfinite(a) else NAN, control_bytes=0))
    w.close()
    return path


def _report(files, *extra) -> tuple[int, str]:
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main_report([*map(str, files), *extra])
    return rc, buf.getvalue()


def seed_rows(out: str) -> dict[str, list[str]]:
    """Rows of the Seeds table keyed by group name (cells separated by two or more spaces)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Seeds:"))
    rows = {}
    for line in lines[start + 3:]:
        if not line.strip() or line.startswith("sd:"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


def mean_sd_pct(values) -> str:
    """NumPy's mean and sample sd (ddof=1) of accuracies as the table prints them."""
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}%"


def per_run_from_hdf5(path: Path, target: float | None = None) -> dict:
    """A run's final and best accuracy (and first round and uplink at `target`), read with h5py alone."""
    with h5py.File(path, "r") as f:
        acc, rnd, up = f["rounds/test_accuracy"][:], f["rounds/round"][:], f["rounds/uplink_bytes"][:]
    ev = np.flatnonzero(np.isfinite(acc))
    out = {"final": acc[ev[-1]], "final_round": int(rnd[ev[-1]]), "best": np.nanmax(acc)}
    if target is not None:
        hit = np.flatnonzero(np.isfinite(acc) & (acc >= target))
        out["hit"] = (int(rnd[hit[0]]), int(up[: hit[0] + 1].sum())) if hit.size else None
    return out


# --------------------------------------------------------------------------------------------- the numbers

THREE = {1: [0.20, NAN, 0.55, 0.61], 2: [0.25, NAN, 0.48, 0.70], 3: [0.10, NAN, 0.66, 0.58]}
UPLINK = {1: [900, 800, 800, 700], 2: [1000, 700, 900, 600], 3: [950, 850, 800, 650]}


@pytest.fixture
def three(tmp_path) -> list[Path]:
    return [write_run(tmp_path / f"r{s}.h5", f"run-s{s}", s, THREE[s], UPLINK[s]) for s in (1, 2, 3)]


def test_group_numbers_equal_numpy_mean_and_sample_sd(three):
    target = 0.5
    per = [per_run_from_hdf5(p, target) for p in three]
    grouping = seed_groups(load_runs(three))
    [g] = grouping.groups
    assert grouping.notes == [] and g.name == "run" and g.seeds == [1, 2, 3] and g.n == 3
    finals, bests = [p["final"] for p in per], [p["best"] for p in per]
    assert g.final_accuracy.values == tuple(finals) and g.best_accuracy.values == tuple(bests)
    assert g.final_accuracy.mean == np.mean(finals) and g.final_accuracy.sd == np.std(finals, ddof=1)
    assert g.best_accuracy.mean == np.mean(bests) and g.best_accuracy.sd == np.std(bests, ddof=1)
    rounds, up = g.to_target(target)
    hits = [p["hit"] for p in per]
    assert rounds.values == tuple(float(h[0]) for h in hits) and up.values == tuple(float(h[1]) for h in hits)
    assert rounds.mean == np.mean([h[0] for h in hits]) and rounds.sd == np.std([h[0] for h in hits], ddof=1)
    assert up.mean == np.mean([h[1] for h in hits]) and up.sd == np.std([h[1] for h in hits], ddof=1)

    rc, out = _report(three, "--target", "50%")
    assert rc == 0
    row = seed_rows(out)["run"]
    assert row == ["run", "fedmrn/binary", "3", "1,2,3", f"{mean_sd_pct(finals)} @4", mean_sd_pct(bests), "3/3",
                   f"{np.mean([h[0] for h in hits]):.1f} ± {np.std([h[0] for h in hits], ddof=1):.1f}",
                   f"{format_bytes(np.mean([h[1] for h in hits]))} ± "
                   f"{format_bytes(np.std([h[1] for h in hits], ddof=1))}"]
    assert "run: run-s1 (seed 1), run-s2 (seed 2), run-s3 (seed 3)" in out
    assert "sample standard deviation (ddof=1)" in out
    # the per-run tables are unchanged: one row per file
    assert all(f"run-s{s} " in out for s in (1, 2, 3))


def test_target_reached_by_some_seeds_none_or_one(tmp_path):
    runs = [write_run(tmp_path / "a.h5", "a", 1, [0.3, 0.9]), write_run(tmp_path / "b.h5", "b", 2, [0.8, 0.85]),
            write_run(tmp_path / "c.h5", "c", 3, [0.3, 0.4])]
    [g] = seed_groups(load_runs(runs)).groups
    rounds, up = g.to_target(0.8)
    assert rounds.values == (2.0, 1.0) and rounds.n == 2 and rounds.sd == np.std([2, 1], ddof=1)
    rc, out = _report(runs, "--target", "0.8")
    assert rc == 0
    cells = seed_rows(out)["a"]  # names a, b, c share nothing: the first run's name
    # uplink per round 1000, 2000: a reached it at round 2 (3000 B so far), b at round 1 (1000 B)
    assert up.values == (3000.0, 1000.0)
    assert cells[6:] == ["2/3", f"1.5 ± {np.std([2, 1], ddof=1):.1f}",
                         f"{format_bytes(2000)} ± {format_bytes(np.std([3000, 1000], ddof=1))}"]
    _, out = _report(runs, "--target", "0.88")  # one run reached it: its value, no sd
    assert seed_rows(out)["a"][6:] == ["1/3", "2", format_bytes(3000)]
    _, out = _report(runs, "--target", "0.95")  # none did
    assert seed_rows(out)["a"][6:] == ["0/3", "--", "--"]
    assert "round, uplink to target: over the runs that reached it" in out


# --------------------------------------------------------------------------------------------- which runs merge

@pytest.mark.parametrize("override", [{"lr": 0.05}, {"algorithm.mask": "signed"}, {"rounds": 5},
                                      {"algorithm.levels": 2}, {"bn_recalibrate": True}])
def test_runs_that_differ_in_anything_but_the_seed_never_merge(tmp_path, override):
    acc = [0.5, 0.6, 0.7, 0.8, 0.9]
    n = override.get("rounds", 2)
    files = [write_run(tmp_path / "a1.h5", "a-s1", 1, acc[:2]), write_run(tmp_path / "a2.h5", "a-s2", 2, acc[:2]),
             write_run(tmp_path / "b3.h5", "b-s3", 3, acc[:n], cfg=override),
             write_run(tmp_path / "b4.h5", "b-s4", 4, acc[:n], cfg=override)]
    grouping = seed_groups(load_runs(files))
    assert [(g.name, g.seeds) for g in grouping.groups] == [("a", [1, 2]), ("b", [3, 4])]
    assert grouping.notes == []
    # alone (one run per config) nothing groups
    assert seed_groups(load_runs([files[0], files[2]])).groups == []


def test_groups_in_command_line_order_their_runs_by_seed(tmp_path):
    # as a shell glob lists a generator's files: x-s2, x-s3, then x (the base seed 1)
    files = [write_run(tmp_path / "y.h5", "y", 1, [0.4], cfg={"lr": 0.3}),
             *(write_run(tmp_path / f"x-s{s}.h5", f"x-s{s}", s, [0.1 * s]) for s in (2, 3)),
             write_run(tmp_path / "x.h5", "x", 1, [0.1]), write_run(tmp_path / "y-s7.h5", "y-s7", 7, [0.5],
                                                                cfg={"lr": 0.3})]
    grouping = seed_groups(load_runs(files))
    assert [(g.name, g.seeds) for g in grouping.groups] == [("y", [1, 7]), ("x", [1, 2, 3])]
    assert grouping.groups[1].final_accuracy.values == (0.1, 0.2, 0.30000000000000004)
    _, out = _report(files)
    assert seed_rows(out)["x"][3] == "1,2,3" and "x: x (seed 1), x-s2 (seed 2), x-s3 (seed 3)" in out


def test_output_names_and_world_size_do_not_split_a_group(tmp_path):
    files = [write_run(tmp_path / "x.h5", "one", 1, [0.5], world=1),
             write_run(tmp_path / "y.h5", "two", 2, [0.6], world=3, cfg={"results_dir": "elsewhere"})]
    [g] = seed_groups(load_runs(files)).groups
    assert g.seeds == [1, 2] and g.name == "one"  # no common name: the first run's


def test_a_key_only_one_version_records_is_a_difference_with_a_note(tmp_path):
    new = [write_run(tmp_path / f"n{s}.h5", f"n-s{s}", s, [0.5]) for s in (1, 2)]
    old = write_run(tmp_path / "old.h5", "n-s3", 3, [0.4], drop=("bn_recalibrate",))
    grouping = seed_groups(load_runs([*new, old]))
    assert [g.seeds for g in grouping.groups] == [[1, 2]]  # the older file is not merged
    [note] = grouping.notes
    assert note.startswith("not merged: n-s1 (seed 1), n-s2 (seed 2), n-s3 (seed 3) differ only in seed")
    assert note.endswith("different versions): bn_recalibrate")
    _, out = _report([*new, old])
    assert "note: not merged: n-s1 (seed 1)" in out


def test_runs_without_seed_siblings_leave_the_report_as_it_was(tmp_path):
    # the same config and seed at several world sizes (as tests/integration/test_report.py runs it): no group
    same = [write_run(tmp_path / f"w{p}.h5", "tiny", 7, [0.5, 0.6], world=p) for p in (1, 2, 3)]
    other = write_run(tmp_path / "fa.h5", "tiny", 8, [0.5, 0.6], cfg={"algorithm.name": "fedavg"})
    noseed = write_run(tmp_path / "ns.h5", "tiny", None, [0.5, 0.6])
    rc, out = _report([*same, other, noseed])
    assert rc == 0 and "Seeds:" not in out and "note:" not in out
    assert seed_groups(load_runs([*same, other, noseed])).groups == []


def test_a_seed_run_twice_counts_once_with_a_note(tmp_path):
    files = [write_run(tmp_path / "a.h5", "t-s1", 1, [0.5], world=1), write_run(tmp_path / "b.h5", "t-s2", 2, [0.7]),
             write_run(tmp_path / "c.h5", "t-s1", 1, [0.5], world=3)]
    runs = load_runs(files)
    grouping = seed_groups(runs, display_names(runs))
    [g] = grouping.groups
    assert [r.path.name for r in g.runs] == ["a.h5", "b.h5"] and g.final_accuracy.values == (0.5, 0.7)
    assert grouping.notes == ["c not counted in its group: seed 1 again, as in a (n counts distinct seeds)"]


def test_a_run_without_an_evaluation_or_with_fewer_rounds(tmp_path):
    # of 2 planned rounds, b has done 1 (still running) and c none evaluated yet: c stays a single run
    files = [write_run(tmp_path / "a.h5", "u-s1", 1, [0.5, 0.6]),
             write_run(tmp_path / "b.h5", "u-s2", 2, [0.4], cfg={"rounds": 2}),
             write_run(tmp_path / "c.h5", "u-s3", 3, [NAN], cfg={"rounds": 2})]
    runs = load_runs(files)
    [g] = seed_groups(runs).groups
    assert g.seeds == [1, 2] and g.final_rounds == [2, 1]
    _, out = _report(files)
    assert seed_rows(out)["u"][4] == f"{mean_sd_pct([0.6, 0.4])} @1-2"


def test_group_names_without_the_seed_and_clashes(tmp_path):
    files = [write_run(tmp_path / "fa-1.h5", "tiny", 1, [0.5]), write_run(tmp_path / "fa-2.h5", "tiny", 2, [0.6]),
             write_run(tmp_path / "fm_seed1.h5", "tiny", 1, [0.5], cfg={"algorithm.mask": "signed"}),
             write_run(tmp_path / "fm_seed2.h5", "tiny", 2, [0.6], cfg={"algorithm.mask": "signed"}),
             write_run(tmp_path / "q1.h5", "tiny", 1, [0.5], cfg={"lr": 0.3}),
             write_run(tmp_path / "q2.h5", "tiny", 2, [0.6], cfg={"lr": 0.3}),
             write_run(tmp_path / "z-seed-5.h5", "exp.s5.iid", 5, [0.5], cfg={"lr": 0.4}),
             write_run(tmp_path / "z-seed-6.h5", "exp.s6.iid", 6, [0.6], cfg={"lr": 0.4})]
    names = [g.name for g in seed_groups(load_runs(files)).groups]
    # all named "tiny": the common file stem without the seed where there is one, else numbered
    assert names == ["tiny", "fm", "tiny #2", "exp.iid"]


def test_flat_config_and_unreadable_configs_never_group(tmp_path):
    assert flat_config({"a": 1, "b": {"c": 2, "d": {}}}) == {"a": 1, "b.c": 2, "b.d": {}}
    files = []
    for s in (1, 2):
        p = write_run(tmp_path / f"bad{s}.h5", "bad", s, [0.5])
        with h5py.File(p, "a") as f:
            f.attrs["config_yaml"] = "seed: [unclosed"
        files.append(p)
    assert seed_groups(load_runs(files)).groups == []
    assert load_run(files[0]).seed is None and load_run(files[0]).config == {}


# --------------------------------------------------------------------------------------------- the plots

def test_accuracy_plots_draw_each_group_mean_with_a_min_max_band(three, tmp_path):
    pytest.importorskip("matplotlib")
    from fedmrn_mpi.report.plots import _figure, _plot_accuracy, write_plots

    single = write_run(tmp_path / "single.h5", "single", 9, [0.3, 0.4], cfg={"lr": 0.2})
    runs = load_runs([*three, single])
    names = display_names(runs)
    grouping = seed_groups(runs, names)
    [g] = grouping.groups
    acc = np.array([THREE[s] for s in (1, 2, 3)])
    cum = np.cumsum(np.array([UPLINK[s] for s in (1, 2, 3)], dtype=np.float64), axis=1)
    ev = [0, 2, 3]  # the evaluated rounds (index)
    for uplink, want_x in ((False, np.array([1.0, 3.0, 4.0])), (True, cum[:, ev].mean(axis=0))):
        x, mean, lo, hi = g.accuracy_curve(uplink=uplink)
        assert np.array_equal(x, want_x)
        assert np.array_equal(mean, acc[:, ev].mean(axis=0))
        assert np.array_equal(lo, acc[:, ev].min(axis=0)) and np.array_equal(hi, acc[:, ev].max(axis=0))

        ax = _figure().add_subplot()
        x_of = (lambda r: np.cumsum(r.uplink_bytes)) if uplink else (lambda r: r.rounds)
        assert _plot_accuracy(ax, runs, names, x_of, positive_x=uplink, seeds=grouping, uplink=uplink)
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == ["run: mean of 3 seeds, band min-max", "single"]  # the members are not drawn alone
        assert np.allclose(ax.get_lines()[0].get_ydata(), 100 * mean)
        [band] = ax.collections  # fill_between: one band, from the min to the max
        verts = band.get_paths()[0].vertices
        assert np.isclose(verts[:, 1].min(), 100 * lo.min()) and np.isclose(verts[:, 1].max(), 100 * hi.max())
    written = write_plots(runs, tmp_path / "plots")
    assert {p.name for p in written} >= {"accuracy_vs_round.png", "accuracy_vs_uplink_bytes.png"}


# --------------------------------------------------------------------------------------------- no torch

def test_seed_groups_in_report_never_import_torch(three, tmp_path):
    code = textwrap.dedent("""
        import sys
        from fedmrn_mpi.report import main_report
        assert main_report(sys.argv[1:] + ["--target", "0.5"]) == 0
        assert "torch" not in sys.modules and "matplotlib" not in sys.modules
    """)
    import os
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code, *map(str, three)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Seeds:" in res.stdout
