"""Checkpoints, stop signals and --resume (DESIGN §3.4)."""

import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, mpirun_path
from fedmrn_mpi.run.checkpoint import (CheckpointError, checkpoint_dir, latest_checkpoint, list_checkpoints,
                                   load_checkpoint, save_checkpoint)
from fedmrn_mpi.run.stop import EXIT_STOPPED


def _args(out, *over):
    return ["run", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(out), *over]


def _env(extra=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), FEDMRN_MPI_SIGNAL_DEBOUNCE="0.05")
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    env.update(extra or {})
    return env


def _start(args, nprocs, cwd, log, env=None):
    cmd = [mpirun_path(), "-n", str(nprocs), sys.executable, "-m", "fedmrn_mpi", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=_env(env), stdout=log, stderr=subprocess.STDOUT, text=True)


def _rounds_written(path) -> int:
    try:
        with h5py.File(path, "r", swmr=True) as f:
            return int(f["rounds/round"].shape[0])
    except (OSError, KeyError):
        return 0


def _reference_and_started_run(cli, tmp_path, over, nprocs=3):
    """An uninterrupted one-process run of `over`, then the same config started under mpirun (running)."""
    ref = cli(_args(tmp_path / "ref.h5", *over))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run.h5"
    log = open(tmp_path / "log.txt", "w")
    proc = _start(_args(out, *over), nprocs, tmp_path, log)
    _wait_rounds(out, 1, proc)
    return out, proc, log


def _wait_rounds(path, n, proc, timeout=120):
    t0 = time.time()
    while _rounds_written(path) < n:
        assert proc.poll() is None, "run ended before the signal"
        assert time.time() - t0 < timeout, "run too slow"
        time.sleep(0.1)


def test_save_keeps_two_newest_atomically_and_falls_back_on_corruption(tmp_path):
    d = str(tmp_path / "run.ckpt")
    assert checkpoint_dir(str(tmp_path / "run.h5")) == d
    st = {"w": torch.arange(6.0).reshape(2, 3)}
    for r in (2, 4, 6):
        save_checkpoint(d, r, {"state": st, "pending": {"round": r, "x": np.arange(3)}, "identity": "i"})
    assert [os.path.basename(p) for p in list_checkpoints(d)] == ["round-000004.pt", "round-000006.pt"]
    assert not [f for f in os.listdir(d) if ".tmp" in f]
    ck = load_checkpoint(list_checkpoints(d)[-1])
    assert ck["round"] == 6 and torch.equal(ck["state"]["w"], st["w"])
    assert np.array_equal(ck["pending"]["x"], np.arange(3))
    with open(list_checkpoints(d)[-1], "wb") as fh:
        fh.write(b"garbage")
    assert latest_checkpoint(d)["round"] == 4
    with open(list_checkpoints(d)[0], "wb") as fh:
        fh.write(b"garbage")
    with pytest.raises(CheckpointError, match="round-000004.pt"):
        latest_checkpoint(d)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_stop_signal_checkpoints_and_resume_matches_uninterrupted(cli, tmp_path, sig):
    over = ["rounds=5", "data.synthetic_train=1600"]
    out, proc, log = _reference_and_started_run(cli, tmp_path, over)
    with log:
        proc.send_signal(sig)  # mpirun forwards it to every rank
        rc = proc.wait(timeout=120)
    text = (tmp_path / "log.txt").read_text()
    assert rc == EXIT_STOPPED, text
    assert "checkpoint after round" in text and "Abort" not in text
    stopped_at = _rounds_written(out)
    assert 1 <= stopped_at < 5
    with h5py.File(out, "r") as f:
        assert "final_model_sha256" not in f.attrs
    res = cli(_args(out, *over, "--resume"), nprocs=2)  # another world size: results do not depend on it
    assert res.returncode == 0, res.stderr
    assert "resuming after round" in res.stdout
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(out) as b:
        assert a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]
        for key in ("round", "test_accuracy", "test_loss", "train_loss", "uplink_bytes"):
            assert np.array_equal(a["rounds/" + key][:], b["rounds/" + key][:], equal_nan=True), key
        assert np.array_equal(a["clients/sampled"][:], b["clients/sampled"][:])
        assert list(b.attrs["world_sizes"]) == [3, 2]


def _wait_file(path, proc, timeout=120):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, f"run ended before {path} appeared"
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.02)


def _held_run(cli, tmp_path, over, hold_rank, nprocs=3):
    """Reference run, then the same config under mpirun with `hold_rank` held inside round 2 until a stop."""
    ref = cli(_args(tmp_path / "ref.h5", *over))
    assert ref.returncode == 0, ref.stderr
    marker = str(tmp_path / "hold")
    env = {"FEDMRN_MPI_INJECT_FAULT": f"{hold_rank}:2:hold", "FEDMRN_MPI_FAULT_MARKER": marker,
           "FEDMRN_MPI_SIGNAL_DEBOUNCE": "0"}
    log = open(tmp_path / "log.txt", "w")
    proc = _start(_args(tmp_path / "run.h5", *over), nprocs, tmp_path, log, env)
    return tmp_path / "run.h5", proc, log, marker


def test_second_signal_stops_within_the_round_and_resume_still_matches(cli, tmp_path):
    over = ["rounds=4"]
    out, proc, log, marker = _held_run(cli, tmp_path, over, hold_rank=1)
    with log:
        _wait_file(marker + ".holding", proc)  # rank 1 is inside round 2: the stop cannot reach a boundary
        proc.send_signal(signal.SIGUSR1)  # mpirun forwards it to every rank
        _wait_file(marker + ".requested", proc)
        t0 = time.time()
        proc.send_signal(signal.SIGUSR1)
        rc = proc.wait(timeout=60)
    assert time.time() - t0 < 30
    text = (tmp_path / "log.txt").read_text()
    assert rc == EXIT_STOPPED, text
    # rank 0 saw the second signal itself, or a client rank told it first
    assert re.search(r"second (stop )?signal", text) and "checkpoint after round 1" in text
    assert _rounds_written(out) <= 1  # round 1's row is written during round 2, or kept in the checkpoint
    res = cli(_args(out, *over, "--resume"), nprocs=3)
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(out) as b:
        assert a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]
        assert np.array_equal(a["rounds/test_accuracy"][:], b["rounds/test_accuracy"][:], equal_nan=True)


@pytest.mark.parametrize("stop", [False, True])
def test_late_signals_during_shutdown_change_nothing(cli, tmp_path, stop):
    """Signals after the stop was accepted or the run finished, even while the interpreter tears down (when
    Python has reset its own handlers), leave the exit status at 0 / 75 on every rank."""
    out = tmp_path / "late.h5"
    env = {"FEDMRN_MPI_INJECT_FAULT": "*:0:signal-at-exit"}
    with open(tmp_path / "log.txt", "w") as log:
        proc = _start(_args(out, "rounds=3"), 3, tmp_path, log, env)
        if stop:
            _wait_rounds(out, 1, proc)
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    text = (tmp_path / "log.txt").read_text()
    assert rc == (EXIT_STOPPED if stop else 0), text
    with h5py.File(out, "r") as f:
        assert ("final_model_sha256" in f.attrs) is not stop


def test_periodic_checkpoints_and_resume_rules(cli, tmp_path):
    out = tmp_path / "p.h5"
    res = cli(_args(out, "rounds=5", "checkpoint_every=1"))
    assert res.returncode == 0, res.stderr
    ckpts = list_checkpoints(checkpoint_dir(str(out)))
    assert [os.path.basename(p) for p in ckpts] == ["round-000003.pt", "round-000004.pt"]
    # finished: --resume has nothing to do
    again = cli(_args(out, "rounds=5", "--resume"))
    assert again.returncode == 0 and "already complete" in again.stdout
    # unfinished file, checkpoint from another configuration: refused, file untouched
    with h5py.File(out, "a") as f:
        del f.attrs["final_model_sha256"]
    bad = cli(_args(out, "rounds=5", "lr=0.2", "--resume"))
    assert bad.returncode != 0 and "different configuration" in bad.stderr
    assert _rounds_written(out) == 5
    # more rounds is allowed: continue from round 4's checkpoint to round 6
    more = cli(_args(out, "rounds=6", "--resume"))
    assert more.returncode == 0, more.stderr
    with h5py.File(out) as f:
        assert list(f["rounds/round"][:]) == [1, 2, 3, 4, 5, 6] and "final_model_sha256" in f.attrs
    # no checkpoint for an unfinished file: refused
    lone = tmp_path / "lone.h5"
    with h5py.File(lone, "w") as f:
        f.create_dataset("rounds/round", data=[1])
    res = cli(_args(lone, "--resume"))
    assert res.returncode != 0 and "no checkpoint" in res.stderr
    # nothing at all: --resume starts fresh
    fresh = cli(_args(tmp_path / "fresh.h5", "--resume"))
    assert fresh.returncode == 0 and "starting a fresh run" in fresh.stdout


def test_signals_close_together_are_one_request():
    from fedmrn_mpi.run import stop
    s = stop.StopSignals()
    s._handler(signal.SIGTERM, None)
    s._handler(signal.SIGTERM, None)  # the same stop delivered through another path
    assert s.requested and not s.urgent
    s.first_at -= stop.DEBOUNCE_SECONDS + 1
    s._handler(signal.SIGUSR1, None)
    assert s.urgent
    with pytest.raises(stop.StopNow, match="SIGUSR1"):
        s.check()


def test_second_signal_on_a_client_rank_only_still_checkpoints(cli, tmp_path):
    over = ["rounds=4"]
    out, proc, log, marker = _held_run(cli, tmp_path, over, hold_rank=2)
    with log:
        _wait_file(marker + ".holding", proc)
        client = int(open(marker + ".holding").read())
        os.kill(client, signal.SIGUSR1)
        _wait_file(marker + ".requested", proc)
        os.kill(client, signal.SIGUSR1)  # rank 0 never sees a signal: the client must tell it
        rc = proc.wait(timeout=90)
    text = (tmp_path / "log.txt").read_text()
    assert rc == EXIT_STOPPED, text
    assert "a second stop signal reached rank 2" in text and "checkpoint after round 1" in text
    res = cli(_args(out, *over, "--resume"), nprocs=3)
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(out) as b:
        assert a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]


def test_resume_of_a_finished_run_with_another_config_is_refused(cli, tmp_path):
    out = tmp_path / "done.h5"
    assert cli(_args(out, "rounds=1")).returncode == 0
    res = cli(_args(out, "rounds=1", "lr=0.05", "--resume"))
    assert res.returncode != 0 and "different configuration" in res.stderr
