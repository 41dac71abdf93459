"""End-to-end runs under a real mpirun (small -n) and in one process."""

import math
import sys
from pathlib import Path
import time

import h5py
import numpy as np
import pytest

from fedmrn_mpi.comm.transport import CHANNELS
from fedmrn_mpi.comm.wire import HEADER_SIZE



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
        ctrl = 8 * (2 + 3 + 1)  # round, flags, the evaluation's block boundaries of the 3 ranks
        assert np.all(f["rounds/downlink_bytes"][:] == 2 * (state_bytes + ctrl))
        # the transport counted every byte: what one rank sent, another received
        sent, recv = f["ranks/bytes_sent"][:], f["ranks/bytes_received"][:]
        assert sent.shape == recv.shape == (2, 3) and np.array_equal(sent.sum(1), recv.sum(1))
        assert np.all(sent[:, 0] == f["rounds/downlink_bytes"][:] + 2 * 8)  # + its own (empty) upload size
        assert np.all(recv[:, 0] == f["rounds/uplink_bytes"][:] + 2 * 8)  # + the others' upload sizes
        # control: upload sizes (every rank to the 2 others) + the 2 client ranks' end-of-round reports
        report = 8 * (7 + 2 * len(CHANNELS) + 1)
        # round 2's reports also carry the evaluation of round 1's model: loss and correct count of the two
        # blocks of 100 test images, from each rank
        scores = 8 * 2 * 2
        assert list(f["rounds/control_bytes"][:]) == [3 * 2 * 8 + 2 * report, 3 * 2 * 8 + 2 * (report + scores)]
        # every rank evaluated a share (round 2's row holds round 1's model's evaluation)
        assert np.all(f["ranks/phase_seconds"][1, :, list(f["rounds/phase_seconds"].attrs["phases"]).index("evaluate")] > 0)
        assert f["clients/sampled"].shape == (2, 4) and set(np.unique(f["clients/rank"][:])) <= {1, 2}
        ph = f["rounds/phase_seconds"]
        assert ph.shape == (2, 7) and list(ph.attrs["phases"])[0] == "local_train"
        assert f["ranks/phase_seconds"].shape == (2, 3, 7)
        assert np.all(f["rounds/wall_seconds"][:] > 0)
        assert len(f["model"]) == 21 and f["model/classifier.weight"].shape == (10, 256)


@pytest.mark.parametrize("algo", ["fedmrn", "fedavg"])
def test_results_do_not_depend_on_the_rank_count(cli, tmp_path, algo):
    """-n 1 (one process), 2, 3 and 5: bit-identical metrics and final model (docs/design.md, Reproducibility)."""
    runs = {}
    for n in (1, 2, 3, 5):
        res = cli(_tiny(tmp_path, f"n{n}.h5", f"algorithm.name={algo}"), nprocs=None if n == 1 else n)
        assert res.returncode == 0, res.stderr
        runs[n] = h5py.File(tmp_path / f"n{n}.h5", "r")
    ref = runs[1]
    print(algo, {n: f.attrs["final_model_sha256"][:16] for n, f in runs.items()})
    for n, f in runs.items():
        assert f.attrs["world_size"] == n
        assert f.attrs["final_model_sha256"] == ref.attrs["final_model_sha256"], n
        for key in ("test_accuracy", "test_loss", "train_loss", "uplink_bytes"):
            assert np.array_equal(f["rounds/" + key][:], ref["rounds/" + key][:], equal_nan=True), (n, key)
        assert np.array_equal(f["clients/sampled"][:], ref["clients/sampled"][:])
        assert np.array_equal(f["clients/train_loss"][:], ref["clients/train_loss"][:])
        # with P-1 < K some ranks train several clients; every sampled client ran on a client rank
        ranks = f["clients/rank"][:]
        assert ranks.min() == (0 if n == 1 else 1) and ranks.max() <= n - 1
    for f in runs.values():
        f.close()


def test_mask_downlink_rebuilds_the_same_model_with_fewer_bytes(cli, tmp_path):
    model = cli(_tiny(tmp_path, "model.h5", "rounds=3"), nprocs=3)
    masks = cli(_tiny(tmp_path, "masks.h5", "rounds=3", "algorithm.downlink=masks", "sync_every=2"), nprocs=3)
    assert model.returncode == 0 and masks.returncode == 0, model.stderr + masks.stderr
    with h5py.File(tmp_path / "model.h5") as a, h5py.File(tmp_path / "masks.h5") as b:
        assert a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]
        da, db = a["rounds/downlink_bytes"][:], b["rounds/downlink_bytes"][:]
        state = 4 * (389_920 + 1920)
        ctrl = 8 * (2 + 3 + 1)
        assert list(da) == [2 * (state + ctrl)] * 3
        relay = 4 * (HEADER_SIZE + a.attrs["payload_bytes_per_client"])
        # round 1 sends the state once; then only the relayed uploads (+ digests on rounds 2 and 3)
        assert db[0] == 2 * (state + ctrl + 8 + relay)
        assert db[1] == 2 * (ctrl + 8 + relay + 32) and db[2] == db[1]
        assert db[1] < da[1] / 3
        assert list(b["rounds/resync"][:]) == [0, 0, 0]


def test_digest_mismatch_triggers_a_full_resync(cli, tmp_path):
    clean = cli(_tiny(tmp_path, "clean.h5", "rounds=3", "algorithm.downlink=masks", "sync_every=1"), nprocs=3)
    bad = cli(_tiny(tmp_path, "bad.h5", "rounds=3", "algorithm.downlink=masks", "sync_every=1"), nprocs=3,
              env_extra={"FEDMRN_MPI_INJECT_FAULT": "2:1:corrupt"})
    assert clean.returncode == 0 and bad.returncode == 0, clean.stderr + bad.stderr
    assert "digest differs on rank(s) [2]" in bad.stdout
    with h5py.File(tmp_path / "clean.h5") as a, h5py.File(tmp_path / "bad.h5") as b:
        assert list(b["rounds/digest_mismatches"][:]) == [1, 0, 0]
        assert list(b["rounds/resync"][:]) == [0, 1, 0]
        assert b["rounds/downlink_bytes"][1] > a["rounds/downlink_bytes"][1]  # the float32 state went down again
        assert a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]


def test_chunked_collectives_with_a_lowered_limit(tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    from launchers import launcher
    for n, limit in ((3, 1000), (4, 7)):
        res = subprocess.run(launcher().command(n, [sys.executable, str(ROOT / "tests" / "mpi_scripts" /
                                                                        "chunked_collectives.py"), str(limit)]),
                             capture_output=True, text=True, timeout=120, env=launcher().env())
        assert res.returncode == 0 and "chunked collectives ok" in res.stdout, res.stdout + res.stderr


def test_thousand_clients_fifty_per_round_on_nine_ranks(cli, tmp_path):
    res = cli(_tiny(tmp_path, "k.h5", "num_clients=1000", "clients_per_round=50", "data.synthetic_train=3000",
                    "rounds=1", "batch_size=8"), nprocs=9, timeout=300)
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "k.h5") as f:
        ranks = f["clients/rank"][0]
        assert f["clients/sampled"].shape == (1, 50) and sorted(set(ranks.tolist())) == list(range(1, 9))
        counts = np.bincount(ranks, minlength=9)[1:]
        assert counts.max() - counts.min() <= 2  # LPT on equal sizes spreads 50 clients 7/6 over 8 ranks


def test_config_error_under_mpirun_exits_nonzero_before_training(cli, tmp_path):
    res = cli(_tiny(tmp_path, "bad.h5", "rouds=3"), nprocs=2, timeout=60)
    assert res.returncode != 0
    assert "rouds" in res.stderr and "did you mean 'rounds'" in res.stderr
    assert res.stderr.count("config error") == 1  # reported once, not once per rank
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize("rank,kind", [(2, "raise"), (2, "kill"), (0, "raise")])
def test_failure_on_any_rank_ends_the_job_and_keeps_written_rounds(cli, tmp_path, rank, kind):
    t0 = time.time()
    res = cli(_tiny(tmp_path, "f.h5", "rounds=4"), nprocs=3, timeout=120,
              env_extra={"FEDMRN_MPI_INJECT_FAULT": f"{rank}:3:{kind}"})
    assert res.returncode != 0
    assert time.time() - t0 < 60
    if kind == "raise":
        assert f"rank {rank} failed in round 3" in res.stderr and "fault injected" in res.stderr
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


def test_readme_one_process_and_mpirun_agree_with_default_threads(cli, tmp_path):
    """The reproducibility contract for the README's commands: the default config (real FashionMNIST, default
    threads = 1 per rank) gives the same digest and metrics in one process and under mpirun -n 3."""
    from conftest import ROOT
    over = ["rounds=2", "num_clients=60", "clients_per_round=2", "eval_every=1", "device=cpu"]
    base = ["run", "-c", str(ROOT / "configs" / "default.yaml")]
    one = cli([*base, "-o", str(tmp_path / "one.h5"), *over])
    three = cli([*base, "-o", str(tmp_path / "three.h5"), *over], nprocs=3)
    assert one.returncode == 0 and three.returncode == 0, one.stderr + three.stderr
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "three.h5") as b:
        assert a.attrs["world_size"] == 1 and b.attrs["world_size"] == 3
        for f in (a, b):  # what the contract depends on is recorded
            assert f.attrs["threads_per_rank"] == 1 and f.attrs["device_type"] == "cpu"
            assert f.attrs["cpu_capability"] and f.attrs["torch_version"]
        assert a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]
        for key in ("test_accuracy", "test_loss", "train_loss", "uplink_bytes"):
            assert np.array_equal(a["rounds/" + key][:], b["rounds/" + key][:]), key


BASELINES = [
    ("signsgd", ["algorithm.error_feedback=true"]), ("qsgd", ["algorithm.levels=3"]),
    ("topk", ["algorithm.error_feedback=true", "algorithm.fraction=0.05"]), ("eden", []), ("fedpm", []),
    ("fedbat", ["algorithm.rho=6"]), ("fedmrn", ["algorithm.training=post"]),
]


@pytest.mark.parametrize("algo,over", BASELINES, ids=[f"{a}{'-' + o[0].split('.')[1] if o else ''}"
                                                      for a, o in BASELINES])
def test_every_algorithm_runs_under_mpirun_and_does_not_depend_on_the_rank_count(cli, tmp_path, algo, over):
    """3 rounds (clients come back, so per-client state such as error-feedback residuals is used after it moved
    between ranks) under -n 3 and -n 2: the same digest, metrics and exact uplink bytes."""
    digests, sent = {}, {}
    for n in (3, 2):
        res = cli(_tiny(tmp_path, f"{algo}{n}.h5", f"algorithm.name={algo}", "rounds=3", *over), nprocs=n)
        assert res.returncode == 0, res.stderr
        with h5py.File(tmp_path / f"{algo}{n}.h5") as f:
            digests[n] = f.attrs["final_model_sha256"]
            payload = int(f.attrs["payload_bytes_per_client"])
            sent[n] = f["clients/uplink_bytes"][:]
            assert list(f["rounds/uplink_bytes"][:]) == list(sent[n].sum(axis=1))
            if algo == "qsgd":  # Elias coding: each upload its own size; payload_bytes_per_client is the bound
                assert np.all(sent[n] <= HEADER_SIZE + payload) and np.all(sent[n] < (HEADER_SIZE + payload) / 2)
            else:
                assert np.all(sent[n] == HEADER_SIZE + payload)
            assert np.all(np.isfinite(f["rounds/test_loss"][:])) and np.all(np.isfinite(f["rounds/train_loss"][:]))
            assert f.attrs["payload_bits_per_param"] == pytest.approx(8 * payload / (389_920 + 1920))
            # error-feedback residuals travel to and from the ranks that train the clients (not with -n 1)
            stateful = "algorithm.error_feedback=true" in over
            assert np.all(f["rounds/state_bytes"][:] > 0) if stateful else np.all(f["rounds/state_bytes"][:] == 0)
    assert digests[3] == digests[2] and np.array_equal(sent[3], sent[2])


def test_compare_job_array_task_runs_its_config_and_resumes(tmp_path):
    """jobs/compare_array.sbatch outside Slurm (TASK picks the config, LAUNCHER=mpirun): task 1 runs the
    second config of COMPARE_DIR into RESULTS/<name>.h5; run again, it finds the file complete."""
    import shutil
    import subprocess
    from conftest import ROOT, mpirun_path
    from launchers import launcher
    cdir = tmp_path / "cmp"
    cdir.mkdir()
    for name in ("a-fedavg", "b-signsgd"):
        shutil.copy(ROOT / "configs" / "tiny.yaml", cdir / f"{name}.yaml")
    with open(cdir / "b-signsgd.yaml", "a") as fh:
        fh.write("# the method under test\n")
    env = launcher().env(dict(FEDMRN_DIR=str(ROOT), TASK="1", COMPARE_DIR=str(cdir),
                              RESULTS=str(tmp_path / "res"), LAUNCHER="mpirun", MPIRUN=mpirun_path(), NTASKS="2",
                              VENV=str(Path(sys.executable).parents[1]), PYTHON=sys.executable,
                              OVERRIDES="algorithm.name=signsgd rounds=1"))
    for attempt in range(2):
        res = subprocess.run(["bash", str(ROOT / "jobs" / "compare_array.sbatch")], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stdout + res.stderr
    assert "already complete" in res.stdout
    with h5py.File(tmp_path / "res" / "b-signsgd.h5") as f:
        assert f.attrs["algorithm"] == "signsgd" and "final_model_sha256" in f.attrs
    assert not (tmp_path / "res" / "a-fedavg.h5").exists()


def test_batched_clients_train_each_ranks_clients_together_and_stay_close_to_one_after_another(cli, tmp_path):
    # 4 clients per round on 2 client ranks: two per rank, trained as one vmapped step each
    seq = cli(_tiny(tmp_path, "seq.h5", "rounds=3"), nprocs=3)
    bat = cli(_tiny(tmp_path, "bat.h5", "rounds=3", "batched_clients=true"), nprocs=3)
    assert seq.returncode == 0 and bat.returncode == 0, seq.stderr + bat.stderr
    with h5py.File(tmp_path / "seq.h5") as a, h5py.File(tmp_path / "bat.h5") as b:
        assert np.array_equal(a["clients/sampled"][:], b["clients/sampled"][:])
        # float32 sums in another order (vmapped NCHW against channels-last convolutions): close, not
        # bit-identical (docs/design.md, "Reproducibility"). Round 1 starts from the same model, so it agrees
        # tightly; later rounds drift apart as any two float orders do at lr 0.1 on this small model.
        la, lb = a["clients/train_loss"][:], b["clients/train_loss"][:]
        assert np.allclose(la[0], lb[0], rtol=1e-5) and np.allclose(la, lb, rtol=2e-2)
        assert np.allclose(a["rounds/test_loss"][:], b["rounds/test_loss"][:], rtol=2e-2, equal_nan=True)
