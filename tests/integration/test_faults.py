"""Faults under a real mpirun: a diverged client (on_bad_update abort|skip) and a stuck rank (round_timeout)."""

import math
import os
import signal
import time

import h5py
import numpy as np
import pytest

from conftest import ROOT
from fedmrn_mpi.run.checkpoint import checkpoint_dir, latest_checkpoint
from fedmrn_mpi.run.watchdog import EXIT_ROUND_TIMEOUT

pytestmark = pytest.mark.mpi


def _tiny(tmp_path, out, *over):
    return ["run", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(tmp_path / out), *over]


def _fault(spec):
    return {"FEDMRN_MPI_INJECT_FAULT": spec}


def test_bad_update_abort_names_rank_client_and_round_and_resumes_with_skip(cli, tmp_path):
    res = cli(_tiny(tmp_path, "a.h5", "rounds=4"), nprocs=3, timeout=120, env_extra=_fault("2:3:nan"))
    assert res.returncode == 1, res.stderr
    assert "rank 0 failed in round 3: round 3: the update of client" in res.stderr
    assert "(trained on rank 2) is not finite" in res.stderr and "on_bad_update=skip" in res.stderr
    assert "Traceback" not in res.stderr
    assert "checkpoint after round 2" in res.stdout  # the last completed round is kept
    with h5py.File(tmp_path / "a.h5", "r", swmr=True) as f:
        assert f["rounds/round"][:].tolist() == [1]
    # the user's way out: continue with on_bad_update=skip (a key that may change on resume)
    res = cli(_tiny(tmp_path, "a.h5", "rounds=4", "on_bad_update=skip", "--resume"), nprocs=2, timeout=120,
              env_extra=_fault(f"*:3:nan:{_a_client_of_round(3)}"))
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["rounds/round"][:].tolist() == [1, 2, 3, 4] and f["rounds/skipped_clients"][2] == 1


def _a_client_of_round(r):
    from fedmrn_mpi.config import load_config
    from fedmrn_mpi.training import sample_clients
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    return int(sample_clients(cfg.seed, r, cfg.num_clients, cfg.clients_per_round)[0])


def _skip_run(cli, tmp_path, name, nprocs, spec, *over):
    res = cli(_tiny(tmp_path, name, "rounds=3", "on_bad_update=skip", *over), nprocs=nprocs, timeout=180,
              env_extra=_fault(spec))
    assert res.returncode == 0, res.stderr
    return res, h5py.File(tmp_path / name, "r")


@pytest.mark.parametrize("downlink", ["model", "masks"])
def test_skip_drops_the_client_records_it_and_does_not_depend_on_the_rank_count(cli, tmp_path, downlink):
    # client 6 of round 2 diverges wherever it is trained; client 0's loss is infinite in round 3
    spec = "*:2:nan:6,*:3:inf-loss:0"
    res2, a = _skip_run(cli, tmp_path, "n2.h5", 2, spec, f"algorithm.downlink={downlink}")
    res3, b = _skip_run(cli, tmp_path, "n3.h5", 3, spec, f"algorithm.downlink={downlink}")
    with a, b:
        assert a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]
        sampled, skipped = b["clients/sampled"][:], b["clients/skipped"][:]
        assert 6 in sampled[1] and 0 in sampled[2], "the test needs these clients sampled (tiny.yaml's seed)"
        assert skipped[1].tolist() == (sampled[1] == 6).astype(int).tolist()
        assert skipped[2].tolist() == (sampled[2] == 0).astype(int).tolist()
        assert b["rounds/skipped_clients"][:].tolist() == [0, 1, 1]
        assert all(math.isfinite(x) for x in b["rounds/train_loss"][:])
        assert np.isnan(b["clients/train_loss"][1][sampled[1] == 6]).all()
        assert np.array_equal(a["rounds/train_loss"][:], b["rounds/train_loss"][:])
    assert "round 2: skipped client 6 (rank" in res3.stdout and "round 3: skipped client 0" in res3.stdout
    # without the faults the model differs: the skip really changed the average
    res, c = _skip_run(cli, tmp_path, "clean.h5", 2, "")
    with c, h5py.File(tmp_path / "n2.h5") as a:
        assert c.attrs["final_model_sha256"] != a.attrs["final_model_sha256"]
        assert np.array_equal(c["rounds/train_loss"][:1], a["rounds/train_loss"][:1])  # round 1 untouched


def test_a_round_where_every_client_is_skipped_keeps_the_model(cli, tmp_path):
    res, f = _skip_run(cli, tmp_path, "all.h5", 3, "*:2:nan", "eval_every=1")
    with f:
        assert f["rounds/skipped_clients"][:].tolist() == [0, 4, 0]
        assert math.isnan(f["rounds/train_loss"][1])
        acc = f["rounds/test_accuracy"][:]
        assert acc[1] == acc[0]  # round 2's model is round 1's
    assert "round 2: every client's update was skipped; the global model is unchanged" in res.stdout


def test_a_stuck_rank_ends_the_job_after_round_timeout(cli, tmp_path):
    """Rank 2 SIGSTOPs itself in round 3: rank 0 names it, checkpoints round 2, keeps round 1..2's rows, exits
    with EXIT_ROUND_TIMEOUT; the run then resumes to the end."""
    marker = str(tmp_path / "fault")
    t0 = time.time()
    try:
        res = cli(_tiny(tmp_path, "t.h5", "rounds=4", "round_timeout=4", "checkpoint_every=0"), nprocs=3,
                  timeout=150, env_extra={**_fault("2:3:stop"), "FEDMRN_MPI_FAULT_MARKER": marker})
    finally:  # whatever happened, leave no stopped process behind
        if os.path.exists(marker + ".stopped"):
            pid = int(open(marker + ".stopped").read())
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    took = time.time() - t0
    assert res.returncode == EXIT_ROUND_TIMEOUT, res.stdout + res.stderr
    assert "round 3 exceeded round_timeout (4 s" in res.stderr
    assert "rank(s) [2] have not reported (rank 2 had not received the round's model)" in res.stderr \
        or "rank(s) [2] have not reported (rank 2 was training" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert took < 120
    assert "checkpoint after round 2" in res.stdout
    with h5py.File(tmp_path / "t.h5", "r", swmr=True) as f:
        assert f["rounds/round"][:].tolist() == [1]  # round 2's row waits in the checkpoint for its evaluation
    assert latest_checkpoint(checkpoint_dir(str(tmp_path / "t.h5")))["round"] == 2
    res = cli(_tiny(tmp_path, "t.h5", "rounds=4", "--resume"), nprocs=2, timeout=150)
    assert res.returncode == 0, res.stderr
    ref = cli(_tiny(tmp_path, "ref.h5", "rounds=4"), nprocs=2, timeout=150)
    assert ref.returncode == 0, ref.stderr
    with h5py.File(tmp_path / "t.h5") as a, h5py.File(tmp_path / "ref.h5") as b:
        assert a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]
        assert a["rounds/round"][:].tolist() == [1, 2, 3, 4]
