"""Writes that are killed or fail (issue 11, items 3 and 4) without running a job: the results writer's
complete-row count and its rebuild on reopen, the fault hooks at the real write points, a failed row, a failed
final-model write and a failed checkpoint (RLIMIT_FSIZE: writes past the limit fail with EFBIG, as on a full
disk), and the resume plan for a killed run's file."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedmrn_mpi.report.status import status_lines
from fedmrn_mpi.results import PHASES, ResultsWriter, load_run
from fedmrn_mpi.results.errors import WriteError, describe_write_failure
from fedmrn_mpi.results.schema import (CLIENT_FIELDS, RANK_FIELDS, ROUND_FIELDS, ClientColumns, RankColumns,
                                       RoundRow)
from fedmrn_mpi.results.writer import ROWS_WRITTEN, completed_rows, open_for_reading

ROOT = Path(__file__).resolve().parents[2]
CPR, WORLD = 2, 3
ATTRS = {"config_yaml": "run_name: wf\nrounds: 40\n", "world_size": WORLD, "algorithm": "fedmrn",
         "hosts": ["a", "b"]}


def row(r: int) -> RoundRow:
    """Round r's row with every field the schema has (so this keeps up with schema additions)."""
    return RoundRow(**{**{name: r for name in ROUND_FIELDS}, "test_accuracy": 0.01 * r},
                    phase_seconds=np.full(len(PHASES), 0.1 * r),
                    clients=ClientColumns(**{name: np.array([r, r + 1]) for name in CLIENT_FIELDS}),
                    ranks=RankColumns(np.full((WORLD, len(PHASES)), 0.1 * r),
                                      **{name: np.full(WORLD, r) for name in RANK_FIELDS}))


def _child(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that has this module's helpers (`t`)."""
    prelude = f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]\n" \
              "import os, resource, numpy as np\nimport test_results_write_faults as t\n" \
              "from fedmrn_mpi.results import ResultsWriter\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def _killed_in_row_3(path: Path) -> subprocess.CompletedProcess:
    """Two rows, then SIGKILL in the middle of row 3 through the run layer's hook (kill-in-results)."""
    return _child(f"""
        from fedmrn_mpi.run.hooks import ResultsHook
        w = ResultsWriter({str(path)!r}, t.ATTRS, t.CPR, t.WORLD, {{"partition/sizes": np.arange(5)}})
        hook = ResultsHook(w)  # installs the write-fault hook, as on rank 0
        for r in (1, 2, 3):
            hook.row_ready(t.row(r))
        print("not killed")
    """, env={"FEDMRN_MPI_INJECT_FAULT": "0:3:kill-in-results"})


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in os.listdir(directory) if ".tmp" in p]


def test_describe_write_failure_is_one_line_with_the_system_message():
    assert describe_write_failure(OSError(errno.ENOSPC, "x")) == "No space left on device (errno 28)"
    hdf5 = RuntimeError("Unable to flush file (file write failed: time = Mon\n, filename = 'a.h5', errno = 27, "
                        "error message = 'File too large')")
    assert describe_write_failure(hdf5) == "File too large (errno 27)"
    try:  # torch: a RuntimeError raised while handling the OSError
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8 vs 4")
    except RuntimeError as exc:
        assert describe_write_failure(exc) == "File too large (errno 27)"
    assert describe_write_failure(RuntimeError("two\nlines")) == "two lines"


def test_rows_count_once_flushed_and_the_file_is_swmr_from_the_start(tmp_path):
    path = tmp_path / "r.h5"
    w = ResultsWriter(str(path), ATTRS, CPR, WORLD)
    with open_for_reading(path) as f:  # already SWMR: a reader opens it while the writer holds it
        assert int(f.attrs[ROWS_WRITTEN]) == 0 and completed_rows(f) == 0
    w.append_round(row(1))
    w.append_round(row(2))
    with open_for_reading(path) as f:
        assert int(f.attrs[ROWS_WRITTEN]) == 2 and completed_rows(f) == 2
    w.close()
    assert _no_temp_files(tmp_path)


def test_a_writer_killed_mid_row_leaves_every_complete_round_readable_and_resumable(tmp_path):
    path = tmp_path / "k.h5"
    res = _killed_in_row_3(path)
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr
    with open_for_reading(path) as f:
        # part of row 3 reached the file (rounds/ has it, clients/ not): only the marked rows count
        assert f["rounds/round"].shape[0] == 3 and f["clients/sampled"].shape[0] == 2
        assert int(f.attrs[ROWS_WRITTEN]) == 2 and completed_rows(f) == 2
    run = load_run(path)  # the reader (and with it status and report) shows complete rounds only
    assert run.rounds.tolist() == [1, 2] and run.client_uplink_bytes.shape == (2, CPR) and not run.finished
    assert "round     : 2 / 40" in status_lines(run)
    # HDF5 opens the killed SWMR writer's file for SWMR reading only; reopen rebuilds it under its name
    w = ResultsWriter.reopen(str(path), 2, {"world_size": 2}, 2)
    w.append_round(row(3))
    w.finalize({"w": np.ones(3, np.float32)}, {"rounds_completed": 3})
    with h5py.File(path, "r") as f:  # a plain open works again
        assert f["rounds/round"][:].tolist() == [1, 2, 3] and f["clients/sampled"].shape == (3, CPR)
        assert f["ranks/phase_seconds"].shape == (3, WORLD, len(PHASES))
        assert f["partition/sizes"][:].tolist() == list(range(5)) and list(f.attrs["world_sizes"]) == [3, 2]
        assert list(f["rounds/phase_seconds"].attrs["phases"]) == list(PHASES)
        assert list(f.attrs["hosts"]) == ["a", "b"] and int(f.attrs[ROWS_WRITTEN]) == 3
    assert load_run(path).finished and _no_temp_files(tmp_path)


def test_reopen_refuses_rows_the_file_does_not_hold(tmp_path):
    path = tmp_path / "k.h5"
    assert _killed_in_row_3(path).returncode == -signal.SIGKILL
    with pytest.raises(ValueError, match="holds 2 complete rounds, 3 needed"):
        ResultsWriter.reopen(str(path), 3, {}, WORLD)
    assert load_run(path).rounds.tolist() == [1, 2]  # untouched


def test_reopen_of_a_finished_file_drops_the_model_and_cuts_the_rows(tmp_path):
    path = tmp_path / "f.h5"
    w = ResultsWriter(str(path), ATTRS, CPR, WORLD)
    for r in (1, 2, 3):
        w.append_round(row(r))
    w.finalize({"w": np.ones(3, np.float32)}, {"rounds_completed": 3})
    w = ResultsWriter.reopen(str(path), 2, {}, WORLD)
    with open_for_reading(path) as f:
        assert "model" not in f and "final_model_sha256" not in f.attrs and completed_rows(f) == 2
        assert f["rounds/round"].chunks == (256,) and np.isnan(f["rounds/test_loss"].fillvalue)
    w.close()


def test_a_failed_row_write_is_a_write_error_and_the_rows_before_stay(tmp_path):
    """File size limit at the file's size after row 1: rows 2..16 fit in the chunks row 1 allocated, row 17 needs
    new ones and fails (EFBIG, as a full disk would)."""
    path = tmp_path / "full.h5"
    res = _child(f"""
        w = ResultsWriter({str(path)!r}, t.ATTRS, t.CPR, t.WORLD)
        w.append_round(t.row(1))
        size = os.path.getsize({str(path)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
        try:
            for r in range(2, 40):
                w.append_round(t.row(r))
        except t.WriteError as exc:
            print(exc)
        os._exit(0)  # like the runner, which aborts the job: HDF5 cannot close the file any more
    """)
    assert res.returncode == 0, res.stderr
    message = res.stdout.strip()
    assert message.startswith("cannot write round ") and str(path) in message and "File too large" in message
    assert "\n" not in message
    failed = int(message.split()[3])
    run = load_run(path)
    assert run.rounds.tolist() == list(range(1, failed))
    w = ResultsWriter.reopen(str(path), failed - 1, {}, WORLD)  # --resume once there is room again
    w.append_round(row(failed))
    w.close()
    assert load_run(path).rounds.tolist() == list(range(1, failed + 1))


def test_a_failed_final_model_write_leaves_the_file_with_every_round(tmp_path):
    path = tmp_path / "fin.h5"
    res = _child(f"""
        w = ResultsWriter({str(path)!r}, t.ATTRS, t.CPR, t.WORLD)
        for r in (1, 2):
            w.append_round(t.row(r))
        size = os.path.getsize({str(path)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 4096, resource.RLIM_INFINITY))
        try:
            w.finalize({{"w": np.ones(100_000, np.float32)}}, {{}})
        except t.WriteError as exc:
            print(exc)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == (f"cannot write the results file {path} (the final model): File too large "
                                  f"(errno 27)")
    with h5py.File(path, "r") as f:  # closed cleanly before the model went into a copy
        assert completed_rows(f) == 2 and "model" not in f and "final_model_sha256" not in f.attrs
    assert _no_temp_files(tmp_path)


def _ckpt(value: float, n: int = 20_000) -> dict:
    import torch
    return {"state": {"w": torch.full((n,), value)}, "pending": {"round": 1, "x": np.arange(3)}, "identity": "i"}


def test_a_failed_checkpoint_removes_its_temp_file_and_keeps_the_previous_one(tmp_path):
    from fedmrn_mpi.run.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
    d = str(tmp_path / "run.ckpt")
    save_checkpoint(d, 2, _ckpt(2.0))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, hard))  # the checkpoint is ~80 kB
    try:
        with pytest.raises(WriteError) as info:
            save_checkpoint(d, 3, _ckpt(3.0))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(info.value) == f"cannot write checkpoint {d}/round-000003.pt: File too large (errno 27)"
    assert [os.path.basename(p) for p in list_checkpoints(d)] == ["round-000002.pt"]
    assert _no_temp_files(Path(d))
    assert float(latest_checkpoint(d)["state"]["w"][0]) == 2.0


def test_checkpoint_fault_hook_runs_partway_and_stale_temp_files_go(tmp_path):
    from fedmrn_mpi.run.checkpoint import list_checkpoints, save_checkpoint
    d = tmp_path / "run.ckpt"
    seen = []

    def fault():  # part of the temp file is on disk, the checkpoint not yet
        [tmp] = [p for p in os.listdir(d) if ".tmp" in p]
        seen.append((os.path.getsize(d / tmp), os.path.exists(d / "round-000001.pt")))

    save_checkpoint(str(d), 1, _ckpt(1.0), fault=fault)
    assert seen and seen[0][0] > 0 and seen[0][1] is False
    (d / "round-000002.pt.tmp99999").write_bytes(b"partial")  # a writer killed mid-write
    save_checkpoint(str(d), 2, _ckpt(2.0))
    assert sorted(os.listdir(d)) == ["round-000001.pt", "round-000002.pt"] and len(list_checkpoints(str(d))) == 2

    def not_io():
        raise ValueError("not a write failure")

    with pytest.raises(ValueError, match="not a write failure"):  # only OS failures become WriteError
        save_checkpoint(str(d), 3, _ckpt(3.0), fault=not_io)
    assert _no_temp_files(d)


def test_write_faults_act_only_at_their_point(tmp_path, monkeypatch):
    from fedmrn_mpi.run import faults
    monkeypatch.setenv(faults.FAULT_ENV, "0:3:kill-in-results,0:2:wait-before-results")
    monkeypatch.setenv(faults.MARKER_ENV, str(tmp_path / "m"))
    faults.maybe_write_fault(0, 3, "row")  # kill-in-results acts mid-row only
    faults.maybe_write_fault(1, 3, "mid-row")  # another rank
    faults.maybe_write_fault(0, 3, "mid-checkpoint")
    (tmp_path / "m.go").touch()
    faults.maybe_write_fault(0, 2, "row")  # waits for m.go, which is there
    assert int((tmp_path / "m.waiting").read_text()) == os.getpid()


def test_plan_start_resumes_a_killed_file_and_checks_its_rows(tmp_path):
    from fedmrn_mpi.config import load_config
    from fedmrn_mpi.run.checkpoint import CheckpointError, checkpoint_dir, save_checkpoint
    from fedmrn_mpi.run.resume import plan_start, resume_identity
    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"), ["rounds=5"])
    path = tmp_path / "k.h5"
    assert _killed_in_row_3(path).returncode == -signal.SIGKILL
    payload = {**_ckpt(3.0, 4), "identity": resume_identity(cfg), "pending": row(3).to_dict()}
    save_checkpoint(checkpoint_dir(str(path)), 3, payload)
    start = plan_start(cfg, str(path), resume=True)
    assert (start.round, start.rows) == (4, 2)
    save_checkpoint(checkpoint_dir(str(path)), 4, {**payload, "pending": row(4).to_dict()})  # needs rows 1..3
    with pytest.raises(CheckpointError, match="holds 2 complete rounds"):
        plan_start(cfg, str(path), resume=True)
