"""Stop signals, checkpoints and --resume of real runs under mpirun (docs/design.md)."""

import os
import re
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT
from launchers import launcher
from fedmrn_mpi.run.checkpoint import checkpoint_dir, list_checkpoints
from fedmrn_mpi.run.stop import EXIT_STOPPED


def _args(out, *over):
    return ["run", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(out), *over]


def _start(args, nprocs, cwd, log, env=None):
    env = launcher().env({"FEDMRN_MPI_SIGNAL_DEBOUNCE": "0.05", **(env or {})})
    return subprocess.Popen(launcher().python_command(nprocs, args), cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)


def _rounds_written(path) -> int:
    try:
        with h5py.File(path, "r", swmr=True) as f:
            return int(f["rounds/round"].shape[0])
    except (OSError, KeyError):
        return 0


def _wait_rounds(path, n, proc, timeout=120):
    t0 = time.time()
    while _rounds_written(path) < n:
        assert proc.poll() is None, "run ended before the signal"
        assert time.time() - t0 < timeout, "run too slow"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_stop_signal_checkpoints_and_resume_matches_uninterrupted(cli, tmp_path, sig):
    over = ["rounds=5", "data.synthetic_train=1600"]
    out, proc, log, _ = _held_run(cli, tmp_path, over, hold_rank=1, kind="pause")
    with log:
        launcher().signal(proc, sig)
        rc = proc.wait(timeout=120)
    text = (tmp_path / "log.txt").read_text()
    assert rc == EXIT_STOPPED, text
    assert "checkpoint after round 2" in text and "Abort" not in text
    assert _rounds_written(out) == 1  # round 2's row waits in the checkpoint for its evaluation
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


def _held_run(cli, tmp_path, over, hold_rank, kind="hold", nprocs=3):
    """An uninterrupted one-process reference run, then the same config under mpirun with `hold_rank` stopped
    at the start of round 2's training until a stop signal arrives (kind "pause": the first one, then it goes
    on; "hold": until the second). Returns once the rank is held, so every signal lands inside round 2."""
    ref = cli(_args(tmp_path / "ref.h5", *over))
    assert ref.returncode == 0, ref.stderr
    marker = str(tmp_path / "hold")
    env = {"FEDMRN_MPI_INJECT_FAULT": f"{hold_rank}:2:{kind}", "FEDMRN_MPI_FAULT_MARKER": marker,
           "FEDMRN_MPI_SIGNAL_DEBOUNCE": "0"}
    log = open(tmp_path / "log.txt", "w")
    proc = _start(_args(tmp_path / "run.h5", *over), nprocs, tmp_path, log, env)
    _wait_file(marker + ".holding", proc)
    return tmp_path / "run.h5", proc, log, marker


def test_second_signal_stops_within_the_round_and_resume_still_matches(cli, tmp_path):
    over = ["rounds=4"]
    out, proc, log, marker = _held_run(cli, tmp_path, over, hold_rank=1)
    with log:  # rank 1 is held inside round 2: the stop cannot reach a round boundary
        launcher().signal(proc, signal.SIGUSR1)
        _wait_file(marker + ".requested", proc)
        t0 = time.time()
        launcher().signal(proc, signal.SIGUSR1)
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
    out, marker = tmp_path / "late.h5", str(tmp_path / "pause")
    # every rank signals itself at exit; rank 1 pauses in round 2 until the stop request has reached it
    env = {"FEDMRN_MPI_INJECT_FAULT": "*:0:signal-at-exit" + (",1:2:pause" if stop else ""),
           "FEDMRN_MPI_FAULT_MARKER": marker}
    with open(tmp_path / "log.txt", "w") as log:
        proc = _start(_args(out, "rounds=3"), 3, tmp_path, log, env)
        if stop:
            _wait_file(marker + ".holding", proc)
            launcher().signal(proc, signal.SIGTERM)
        rc = proc.wait(timeout=120)
    text = (tmp_path / "log.txt").read_text()
    assert rc == (EXIT_STOPPED if stop else 0), text
    with h5py.File(out, "r") as f:
        assert ("final_model_sha256" in f.attrs) is not stop
        assert f["rounds/round"].shape[0] == (1 if stop else 3)
    if stop:
        assert "checkpoint after round 2" in text


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


def test_second_signal_on_a_client_rank_only_still_checkpoints(cli, tmp_path):
    over = ["rounds=4"]
    out, proc, log, marker = _held_run(cli, tmp_path, over, hold_rank=2)
    with log:
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


def test_per_client_state_survives_a_stop_and_a_resume_on_another_rank_count(cli, tmp_path):
    """Error-feedback residuals are kept by client id: a run stopped after round 2 on 3 ranks and resumed on
    2 gives the digest of an uninterrupted one-process run."""
    over = ["rounds=4", "algorithm.name=topk", "algorithm.error_feedback=true", "algorithm.fraction=0.05"]
    out, proc, log, _ = _held_run(cli, tmp_path, over, hold_rank=1, kind="pause")
    with log:
        launcher().signal(proc, signal.SIGTERM)
        rc = proc.wait(timeout=120)
    text = (tmp_path / "log.txt").read_text()
    assert rc == EXIT_STOPPED and "checkpoint after round 2" in text, text
    ck = torch.load(list_checkpoints(checkpoint_dir(str(out)))[-1], weights_only=True)
    assert ck["client_states"], "the residuals of the clients seen so far are in the checkpoint"
    res = cli(_args(out, *over, "--resume"), nprocs=2)
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(out) as b:
        assert a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]
        assert np.array_equal(a["rounds/test_accuracy"][:], b["rounds/test_accuracy"][:], equal_nan=True)
