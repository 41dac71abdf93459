"""End-to-end runs under a real mpirun (small -n) and in one process."""

import math
import time

import h5py
import numpy as np
import pytest

from fedmrn_mpi.wire import HEADER_SIZE

TINY = ["-c", "{root}/configs/tiny.yaml"]


def _tiny(tmp_path, out, *over):
    from conftest import ROOT
    return ["run", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(tmp_path / out), *over]


def test_two_rounds_under_mpirun_n3_write_a_valid_results_file(cli, tmp_path):
    res = cli(_tiny(tmp_path, "r.h5"), nprocs=3)
    assert res.returncode == 0, res.stderr
    assert "round    2/2" in res.stdout and "final_model_sha256" in res.stdout
    with h5py.File(tmp_path / "r.h5", "r") as f:
        for key in ("config_yaml", "version", "world_size", "algorithm", "final_model_sha256"):
            assert key in f.attrs
        assert f.attrs["world_size"] == 3 and f.attrs["algorithm"] == "fedmrn"
        assert "rounds: 2" in f.attrs["config_yaml"]
        assert list(f["rounds/round"][:]) == [1, 2]
        acc = f["rounds/test_accuracy"][:]
        assert np.all((acc >= 0) & (acc <= 1)) and np.all(np.isfinite(f["rounds/test_loss"][:]))
        assert np.all(np.isfinite(f["rounds/train_loss"][:]))
        payload = f.attrs["payload_bytes_per_client"]
        assert payload == (389_920 + 7) // 8 + 4 * 1920
        assert list(f["rounds/uplink_bytes"][:]) == [4 * (HEADER_SIZE + payload)] * 2
        assert np.all(f["clients/uplink_bytes"][:] == HEADER_SIZE + payload)
        state_bytes = 4 * (389_920 + 1920)
        assert np.all(f["rounds/downlink_bytes"][:] == 2 * (state_bytes + 16))
        assert f["clients/sampled"].shape == (2, 4) and set(np.unique(f["clients/rank"][:])) <= {1, 2}
        ph = f["rounds/phase_seconds"]
        assert ph.shape == (2, 7) and list(ph.attrs["phases"])[0] == "local_train"
        assert f["ranks/phase_seconds"].shape == (2, 3, 7)
        assert np.all(f["rounds/wall_seconds"][:] > 0)
        assert len(f["model"]) == 21 and f["model/classifier.weight"].shape == (10, 256)


@pytest.mark.parametrize("algo", ["fedmrn", "fedavg"])
def test_same_digest_in_one_process_and_under_mpirun_n3(cli, tmp_path, algo):
    one = cli(_tiny(tmp_path, "a.h5", f"algorithm.name={algo}"))
    three = cli(_tiny(tmp_path, "b.h5", f"algorithm.name={algo}"), nprocs=3)
    assert one.returncode == 0 and three.returncode == 0, one.stderr + three.stderr
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert a.attrs["world_size"] == 1 and b.attrs["world_size"] == 3
        assert a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]
        for key in ("test_accuracy", "test_loss", "train_loss", "uplink_bytes"):
            assert np.array_equal(a["rounds/" + key][:], b["rounds/" + key][:]), key
        assert np.array_equal(a["clients/sampled"][:], b["clients/sampled"][:])


def test_config_error_under_mpirun_exits_nonzero_before_training(cli, tmp_path):
    res = cli(_tiny(tmp_path, "bad.h5", "rouds=3"), nprocs=2, timeout=60)
    assert res.returncode != 0
    assert "rouds" in res.stderr and "did you mean 'rounds'" in res.stderr
    assert res.stderr.count("config error") == 1  # reported once, not once per rank
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_failure_on_a_client_rank_ends_the_job_and_keeps_written_rounds(cli, tmp_path, kind):
    t0 = time.time()
    res = cli(_tiny(tmp_path, "f.h5", "rounds=4"), nprocs=3, timeout=120,
              env_extra={"FEDMRN_MPI_INJECT_FAULT": f"2:3:{kind}"})
    assert res.returncode != 0
    assert time.time() - t0 < 100
    if kind == "raise":
        assert "rank 2 failed in round 3" in res.stderr and "fault injected" in res.stderr
    # round 1 was written and flushed before the failure and is readable
    with h5py.File(tmp_path / "f.h5", "r", swmr=True) as f:
        assert f["rounds/round"][0] == 1 and math.isfinite(f["rounds/test_accuracy"][0])


def test_missing_dataset_is_a_clear_error(cli, tmp_path):
    res = cli(_tiny(tmp_path, "m.h5", "data.name=fashion_mnist", f"data.dir={tmp_path}/nowhere"), nprocs=2,
              timeout=60)
    assert res.returncode != 0
    assert "nowhere" in res.stderr and "dataset-fashion-mnist" in res.stderr


@pytest.mark.parametrize("algo", ["fedavg", "fedmrn"])
def test_training_learns_the_synthetic_task(cli, tmp_path, algo):
    res = cli(_tiny(tmp_path, "l.h5", f"algorithm.name={algo}", "rounds=4", "num_clients=4",
                    "clients_per_round=4", "data.synthetic_train=1600", "eval_every=4"))
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "l.h5") as f:
        acc = f["rounds/test_accuracy"][:]
        assert np.isnan(acc[:3]).all()
        assert acc[3] > 0.5, acc
        tl = f["rounds/train_loss"][:]
        assert tl[-1] < tl[0]
