"""`report` shows the clients' partition: the reader exposes partition/sizes and partition/label_counts, the
partition table has exact min/median/max sizes and mean classes per client, `-o DIR` writes one heat map per
run, and files without the datasets (older versions) still report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedmrn_mpi.report import main_report
from fedmrn_mpi.report.partition_display import partition_file_names, partition_summary
from fedmrn_mpi.report.table import partition_table
from fedmrn_mpi.results import ResultsWriter, load_run
from fedmrn_mpi.results.schema import PARTITION, PARTITION_LABEL_COUNTS, PARTITION_SIZES, RoundRow
from result_rows import round_row

ROOT = Path(__file__).resolve().parents[2]
CPR, WORLD = 2, 2

# 5 clients x 4 classes: sizes 6, 6, 8, 9, 11 (min 6, median 8, max 11); classes held 2, 2, 4, 1, 2 (mean 2.2)
COUNTS = np.array([[5, 0, 0, 1], [0, 3, 3, 0], [2, 2, 2, 2], [0, 0, 0, 9], [10, 0, 1, 0]], dtype=np.int64)
# 4 clients x 2 classes: sizes 1, 2, 6, 3 (median 2.5); classes held 1, 1, 2, 1 (mean 1.25)
EVEN = np.array([[1, 0], [0, 2], [3, 3], [3, 0]], dtype=np.int64)


def _row(r: int) -> RoundRow:
    return round_row(r, WORLD, test_accuracy=0.2 * r, uplink_bytes=100, downlink_bytes=200)


def write_results(path: Path, name: str, counts: np.ndarray | None = None, sizes: bool = True) -> Path:
    """A finished 2-round file; with `counts`, its partition datasets as run/start.py writes them (sizes the
    row sums unless `sizes` is False)."""
    static = {}
    if counts is not None:
        static[f"{PARTITION}/{PARTITION_LABEL_COUNTS}"] = counts
        if sizes:
            static[f"{PARTITION}/{PARTITION_SIZES}"] = counts.sum(axis=1)
    cfg = f"run_name: {name}\nrounds: 2\nclients_per_round: {CPR}\nalgorithm:\n  name: fedmrn\n  mask: binary\n"
    attrs = {"config_yaml": cfg, "world_size": WORLD, "algorithm": "fedmrn", "num_masked_params": 12,
             "num_unmasked_values": 3}
    w = ResultsWriter(str(path), attrs, CPR, WORLD, static)
    for r in (1, 2):
        w.append_round(_row(r))
    w.finalize({"w": np.zeros(3, dtype=np.float32)}, {"total_seconds": 1.0})
    return path


def _partition_rows(out: str) -> dict[str, list[str]]:
    """Rows of the partition table keyed by run name."""
    lines = out.splitlines()
    start = lines.index("Partition: the clients' training data.") + 3  # title, headers, rule
    rows = {}
    for line in lines[start:]:
        if not line.strip() or line.startswith("min, median"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


# ------------------------------------------------------------------------------------------------ the reader

def test_reader_exposes_the_partition(tmp_path):
    run = load_run(write_results(tmp_path / "a.h5", "a", COUNTS))
    assert run.partition_sizes.dtype == np.int64 and run.label_counts.dtype == np.int64
    np.testing.assert_array_equal(run.partition_sizes, [6, 6, 8, 9, 11])
    np.testing.assert_array_equal(run.label_counts, COUNTS)


def test_reader_gives_none_without_the_datasets_or_for_malformed_ones(tmp_path):
    old = load_run(write_results(tmp_path / "old.h5", "old"))
    assert old.partition_sizes is None and old.label_counts is None
    only_counts = load_run(write_results(tmp_path / "c.h5", "c", COUNTS, sizes=False))
    assert only_counts.partition_sizes is None and only_counts.label_counts is not None
    odd = write_results(tmp_path / "odd.h5", "odd")
    with h5py.File(odd, "a") as f:
        f[f"{PARTITION}/{PARTITION_SIZES}"] = np.array([1.5, 2.5])       # not integer
        f[f"{PARTITION}/{PARTITION_LABEL_COUNTS}"] = np.array([1, 2, 3])  # not clients x classes
    run = load_run(odd)
    assert run.partition_sizes is None and run.label_counts is None
    assert partition_summary(run) is None


# ---------------------------------------------------------------------------------------------- the numbers

def test_summary_numbers_are_exact(tmp_path):
    s = partition_summary(load_run(write_results(tmp_path / "a.h5", "a", COUNTS)))
    assert (s.clients, s.classes, s.min_size, s.median_size, s.max_size) == (5, 4, 6, 8.0, 11)
    assert s.mean_classes_per_client == pytest.approx(2.2, abs=1e-12)
    e = partition_summary(load_run(write_results(tmp_path / "e.h5", "e", EVEN)))
    assert (e.clients, e.classes, e.min_size, e.median_size, e.max_size) == (4, 2, 1, 2.5, 6)
    assert e.mean_classes_per_client == 1.25
    # sizes from the label counts' row sums where partition/sizes is missing
    c = partition_summary(load_run(write_results(tmp_path / "c.h5", "c", COUNTS, sizes=False)))
    assert (c.min_size, c.median_size, c.max_size, c.mean_classes_per_client) == (s.min_size, 8.0, 11, 2.2)


def test_partition_table_rows_and_a_file_without_the_partition(tmp_path):
    runs = [load_run(write_results(tmp_path / f"{n}.h5", n, c)) for n, c in
            (("a", COUNTS), ("even", EVEN), ("old", None))]
    text = partition_table(runs)
    rows = _partition_rows(text)
    assert rows == {"a": ["a", "5", "4", "6", "8", "11", "2.20"], "even": ["even", "4", "2", "1", "2.5", "6", "1.25"],
                    "old": ["old"] + ["--"] * 6}
    assert "--: not recorded in the file" in text
    assert partition_table(runs[2:]).startswith("Partition: not recorded in these files")


def test_file_names_are_sanitised_and_unique():
    assert partition_file_names(["my run/β:1", "a", "A", "a", "..", "ok-1.x_y"]) == [
        "partition_my_run_1.png", "partition_a.png", "partition_A_2.png", "partition_a_3.png", "partition_run.png",
        "partition_ok-1.x_y.png"]


# ------------------------------------------------------------------------------------------------ the command

def test_report_prints_the_table_and_writes_one_heat_map_per_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    files = [write_results(tmp_path / "a.h5", "my run/1", COUNTS), write_results(tmp_path / "old.h5", "old")]
    out_dir = tmp_path / "plots"
    assert main_report([str(p) for p in files] + ["-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert _partition_rows(out)["my run/1"] == ["my run/1", "5", "4", "6", "8", "11", "2.20"]
    assert _partition_rows(out)["old"][1:] == ["--"] * 6
    png = out_dir / "partition_my_run_1.png"
    assert png.stat().st_size > 1000 and str(png) in out
    assert not list(out_dir.glob("partition_old*"))  # no partition recorded: no heat map
    assert (out_dir / "accuracy_vs_round.png").exists()


def test_heat_map_of_many_clients_and_classes_stays_bounded(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    counts = np.random.default_rng(0).integers(0, 5, size=(300, 100), dtype=np.int64)
    path = write_results(tmp_path / "big.h5", "big", counts)
    assert main_report([str(path), "-o", str(tmp_path / "plots")]) == 0
    capsys.readouterr()
    w, h = _png_size(tmp_path / "plots" / "partition_big.png")
    assert w <= 14 * 120 and h <= 9 * 120  # figure size capped at 14 x 9 inches, 120 dpi


def test_cli_report_with_output_dir(tmp_path):
    pytest.importorskip("matplotlib")
    path = write_results(tmp_path / "a.h5", "cli", EVEN)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-m", "fedmrn_mpi", "report", str(path), "-o", str(tmp_path / "out")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert _partition_rows(res.stdout)["cli"] == ["cli", "4", "2", "1", "2.5", "6", "1.25"]
    png = tmp_path / "out" / "partition_cli.png"
    assert png.stat().st_size > 1000 and str(png) in res.stdout
