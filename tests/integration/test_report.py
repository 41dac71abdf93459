"""`report` and `status` on results files made by real runs (1, 2 and 3 ranks, and a FedAvg run), on a file a
separate writer process is still appending to in SWMR mode, and on bad inputs."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import matplotlib.image as mpimg
import numpy as np
import pytest

from fedmrn_mpi.report import main_report, main_status
from fedmrn_mpi.results import format_bytes, format_duration, load_run
from fedmrn_mpi.comm.wire import HEADER_SIZE

PNGS = ("accuracy_vs_round.png", "accuracy_vs_uplink_bytes.png", "phase_times.png")
NUM_VALUES = 389_920 + 1920  # cnn4: masked params + unmasked values


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Four real 2-round runs of configs/tiny.yaml: fedmrn at 1, 2 and 3 ranks (one config), fedavg at 1."""
    from conftest import ROOT, run_cli

    d = tmp_path_factory.mktemp("runs")
    tiny = str(ROOT / "configs" / "tiny.yaml")
    specs = {"w1": (None, []), "w2": (2, []), "w3": (3, []), "fedavg": (None, ["algorithm.name=fedavg"])}
    out = {}
    for name, (nprocs, over) in specs.items():
        res = run_cli(["run", "-c", tiny, "-o", str(d / f"{name}.h5"), *over], nprocs, d)
        assert res.returncode == 0, f"{name}: {res.stderr[-3000:]}"
        out[name] = d / f"{name}.h5"
    return out


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """Rows of the report table keyed by the name column (cells are separated by two or more spaces)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("name "))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


def _check_png(path: Path) -> None:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200, (path, img.shape)
    rgb = img[..., :3]
    assert rgb.std() > 0.03, f"{path.name} looks blank (std {rgb.std():.4f})"
    assert (rgb < 0.9).any(axis=-1).mean() > 0.01, f"{path.name} has almost no drawn pixels"


# ------------------------------------------------------------------------------------------------ the table

def test_table_lists_every_file_with_the_numbers_in_the_hdf5(runs, capsys):
    files = [runs[k] for k in ("w1", "w2", "w3", "fedavg")]
    assert main_report([str(p) for p in files]) == 0
    out = capsys.readouterr().out
    rows = _table_rows(out)
    # every run is named "tiny": the table falls back to file stems to tell them apart
    assert set(rows) == {"w1", "w2", "w3", "fedavg"}
    for p in files:
        cells = rows[p.stem]
        name, alg, ranks, rounds, final, best, up, down, bits, spr = cells
        with h5py.File(p, "r") as f:
            acc = f["rounds/test_accuracy"][:]
            last = np.flatnonzero(np.isfinite(acc))[-1]
            assert ranks == str(int(f.attrs["world_size"]))
            assert rounds == f"{len(f['rounds/round'])}/2" == "2/2"
            assert final == f"{100 * acc[last]:.2f}% @{int(f['rounds/round'][last])}"
            assert best == f"{100 * np.nanmax(acc):.2f}%"
            assert up == format_bytes(int(f["rounds/uplink_bytes"][:].sum()))
            assert down == format_bytes(int(f["rounds/downlink_bytes"][:].sum()))
            want_bits = 8 * f["clients/uplink_bytes"][:].mean() / NUM_VALUES
            assert bits == f"{want_bits:.3f}"
            assert spr == f"{f['rounds/wall_seconds'][:].mean():.2f}"
            assert alg == ("fedavg" if f.attrs["algorithm"] == "fedavg" else "fedmrn/binary")
    # the whole upload message per client: 1 bit per masked param + float32 unmasked values + the header
    payload = (389_920 + 7) // 8 + 4 * 1920
    assert float(rows["w1"][8]) == pytest.approx(8 * (HEADER_SIZE + payload) / NUM_VALUES, abs=1e-3)
    assert float(rows["fedavg"][8]) == pytest.approx(32.0, abs=0.01)
    assert "header included" in out
    # the 1/2/3-rank files share one config: a scaling table follows, the fedavg file is not in it
    assert "Scaling" in out and "speed-up" in out


def test_load_run_matches_the_file(runs):
    run = load_run(runs["w3"])
    with h5py.File(runs["w3"], "r") as f:
        assert run.world_size == 3 and run.planned_rounds == 2 and run.rounds_done == 2
        assert run.finished and run.final_model_sha256 == f.attrs["final_model_sha256"]
        assert run.total_uplink_bytes == int(f["rounds/uplink_bytes"][:].sum())
        assert run.phase_seconds.shape == (2, 7) and run.phases[0] == "local_train"
        assert run.seconds_per_round == pytest.approx(float(f["rounds/wall_seconds"][:].mean()))
    assert run.name == "tiny" and run.algorithm_label == "fedmrn/binary"


# ------------------------------------------------------------------------------------------------ the plots

def test_plots_are_real_images_and_scaling_appears_for_the_world_size_group(runs, tmp_path, capsys):
    out_dir = tmp_path / "new" / "plots"  # created by the command
    files = [str(runs[k]) for k in ("w1", "w2", "w3", "fedavg")]
    assert main_report([*files, "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    names = sorted(p.name for p in out_dir.iterdir())
    # one partition heat map per run; same-named runs are told apart by their display names
    heat = [f"partition_{k}.png" for k in ("w1", "w2", "w3", "fedavg")]
    assert names == sorted([*PNGS, "scaling.png", *heat])
    for n in names:
        _check_png(out_dir / n)
        assert str(out_dir / n) in out  # the list of files written


def test_no_scaling_plot_when_all_files_have_one_world_size(runs, tmp_path, capsys):
    out_dir = tmp_path / "plots"
    assert main_report([str(runs["w1"]), str(runs["fedavg"]), "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    heat = ["partition_w1.png", "partition_fedavg.png"]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([*PNGS, *heat])
    assert "Scaling" not in out and "scaling.png" not in out


# --------------------------------------------------------------------------------------------- bad inputs

def _bad_file(kind: str, d: Path) -> Path:
    p = d / f"{kind}.h5"
    if kind == "not_hdf5":
        p.write_text("round,accuracy\n1,0.5\n")
    elif kind == "no_rounds":
        with h5py.File(p, "w") as f:
            f.attrs["config_yaml"] = "rounds: 3\n"
            f.create_dataset("something/else", data=np.arange(3))
    return p  # "missing": never created


@pytest.mark.parametrize("kind,message", [("missing", "no such file"), ("not_hdf5", "not an HDF5 file"),
                                          ("no_rounds", "rounds/round")])
def test_bad_file_exits_2_naming_it_and_writes_nothing(runs, kind, message, tmp_path, capsys):
    bad = _bad_file(kind, tmp_path)
    out_dir = tmp_path / "plots"
    # a good file first: the command must still fail before printing or writing anything
    assert main_report([str(runs["w1"]), str(bad), "-o", str(out_dir)]) == 2
    cap = capsys.readouterr()
    assert str(bad) in cap.err and message in cap.err
    assert cap.out == "" and not out_dir.exists()
    assert main_status([str(bad)]) == 2
    cap = capsys.readouterr()
    assert str(bad) in cap.err and message in cap.err and cap.out == ""


def _empty_results(path: Path, rounds: int) -> None:
    """A results file as the writer leaves it before the first round ends."""
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["config_yaml"] = f"run_name: empty\nrounds: {rounds}\nalgorithm:\n  name: fedmrn\n  mask: signed\n"
        f.attrs.update({"world_size": 2, "algorithm": "fedmrn", "version": "0.1.0"})
        for name in ("round", "test_accuracy", "test_loss", "train_loss", "uplink_bytes", "downlink_bytes",
                     "wall_seconds"):
            f.create_dataset(f"rounds/{name}", shape=(0,), maxshape=(None,), dtype="f8")
        f.create_dataset("rounds/phase_seconds", shape=(0, 7), maxshape=(None, 7), dtype="f8")


def test_a_file_with_zero_rounds_is_reported_as_such(tmp_path, capsys):
    p = tmp_path / "empty.h5"
    _empty_results(p, rounds=5)
    assert main_report([str(p), "-o", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    row = _table_rows(out)["empty"]
    assert row[1:4] == ["fedmrn/signed", "2", "0/5"] and row[4] == "no rounds"
    assert sorted(q.name for q in (tmp_path / "plots").iterdir()) == sorted(PNGS)
    assert main_status([str(p)]) == 0
    out = capsys.readouterr().out
    assert "round     : 0 / 5" in out and "not evaluated yet" in out and "ETA       : unknown" in out


# ------------------------------------------------------------------------------------------------- status

def test_status_of_a_finished_run(runs, capsys):
    assert main_status([str(runs["w2"])]) == 0
    out = capsys.readouterr().out
    with h5py.File(runs["w2"], "r") as f:
        acc, loss = f["rounds/test_accuracy"][-1], f["rounds/test_loss"][-1]
        sha = f.attrs["final_model_sha256"]
        spr = f["rounds/wall_seconds"][:].mean()
    assert "round     : 2 / 2" in out
    assert f"accuracy  : {100 * acc:.2f}%  loss {loss:.4f}  (round 2)" in out
    assert f"s/round   : {spr:.2f}" in out
    assert "ETA       : 0s" in out
    assert f"finished  : yes (final_model_sha256 {sha})" in out


# A writer in another process, as a running job is: it keeps the file open in SWMR mode and appends rows on
# command ("N" appends N rows, "q" closes), answering "ok <rows>" once the rows are flushed.
_WRITER = textwrap.dedent('''
    import sys, h5py, numpy as np
    path, planned = sys.argv[1], int(sys.argv[2])
    f = h5py.File(path, "w", libver="latest")
    f.attrs["config_yaml"] = f"run_name: live\\nrounds: {planned}\\nalgorithm:\\n  name: fedmrn\\n  mask: binary\\n"
    f.attrs.update({"world_size": 3, "algorithm": "fedmrn", "version": "0.1.0",
                    "num_masked_params": 1000, "num_unmasked_values": 24})
    cols = {"round": "i8", "test_accuracy": "f8", "test_loss": "f8", "train_loss": "f8", "uplink_bytes": "i8",
            "downlink_bytes": "i8", "wall_seconds": "f8"}
    ds = {k: f.create_dataset("rounds/" + k, shape=(0,), maxshape=(None,), dtype=t, chunks=(64,))
          for k, t in cols.items()}
    ph = f.create_dataset("rounds/phase_seconds", shape=(0, 7), maxshape=(None, 7), dtype="f8", chunks=(64, 7))
    ph.attrs["phases"] = np.array(["local_train", "encode", "gather", "decode_aggregate", "broadcast",
                                   "evaluate", "idle"], dtype=h5py.string_dtype())
    cu = f.create_dataset("clients/uplink_bytes", shape=(0, 2), maxshape=(None, 2), dtype="i8", chunks=(64, 2))
    f.swmr_mode = True
    n = 0
    for line in sys.stdin:
        if line.strip() == "q":
            break
        for _ in range(int(line)):
            r = n + 1
            row = {"round": r, "test_accuracy": 0.1 * r if r % 2 == 0 else np.nan,
                   "test_loss": 3.0 - 0.1 * r if r % 2 == 0 else np.nan, "train_loss": 1.0 / r,
                   "uplink_bytes": 256, "downlink_bytes": 4096, "wall_seconds": 10.0 if r <= 3 else 20.0}
            for k, d in ds.items():
                d.resize(r, axis=0)
                d[n] = row[k]
            for d, v in ((ph, np.full(7, 1.0)), (cu, [128, 128])):
                d.resize(r, axis=0)
                d[n] = v
            n = r
        f.flush()
        print("ok", n, flush=True)
    f.close()
''')


def test_status_and_report_read_a_file_a_writer_is_appending_to(tmp_path, capsys):
    path = tmp_path / "live.h5"
    w = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "20"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)

    def append(k: int) -> None:
        w.stdin.write(f"{k}\n")
        w.stdin.flush()
        assert w.stdout.readline().split()[0] == "ok"

    try:
        append(3)
        assert main_status([str(path)]) == 0
        out = capsys.readouterr().out
        assert "round     : 3 / 20" in out
        assert "accuracy  : 20.00%  loss 2.8000  (round 2)" in out
        assert "s/round   : 10.00  (mean of rounds 1-3)" in out
        assert f"ETA       : {format_duration(17 * 10.0)}  (17 rounds left)" in out
        assert "finished  : no; file last modified" in out

        append(4)  # rounds 4-7 take 20 s, round 3 took 10 s: the pace is that of the last 5 rounds
        assert main_status([str(path)]) == 0
        out = capsys.readouterr().out
        recent = (10.0 + 4 * 20.0) / 5  # rounds 3..7
        assert "round     : 7 / 20" in out and "(round 6)" in out
        assert f"s/round   : {recent:.2f}  (mean of rounds 3-7)" in out
        assert f"ETA       : {format_duration(13 * recent)}  (13 rounds left)" in out

        assert main_report([str(path)]) == 0
        row = _table_rows(capsys.readouterr().out)["live"]
        assert row[1:5] == ["fedmrn/binary", "3", "7/20", "60.00% @6"]
        assert row[6] == format_bytes(7 * 256) and row[8] == f"{8 * 128 / 1024:.3f}"
    finally:
        if w.poll() is None:
            w.stdin.write("q\n")
            w.stdin.close()
        w.wait(timeout=30)
    assert w.returncode == 0


def test_formatting_helpers():
    assert format_bytes(512) == "512 B"
    assert format_bytes(564760) == "551.5 KiB"
    assert format_bytes(3 * 1024**2) == "3.00 MiB"
    assert format_duration(45) == "45s" and format_duration(185) == "3m05s" and format_duration(7380) == "2h03m"
