"""Runs from a prepared data file (`fedmrn-mpi data prepare`) under a real mpirun: the same results as from
the raw files in one process, with CIFAR's reference augmentation on."""

import h5py

from datagen import make_cifar10

from conftest import ROOT


def _digest(path):
    with h5py.File(path, "r") as f:
        return f.attrs["final_model_sha256"], str(f.attrs["data_source"]), f.attrs["rank_setup_seconds"][:]


def test_a_run_from_the_prepared_file_equals_the_run_from_the_raw_files(cli, tmp_path):
    src = tmp_path / "cifar"
    make_cifar10(src, per_batch=40, n_test=40, subdir=True)
    # the alias, the raw directory, CIFAR's default augmentation (crop + flip) on a small CNN
    cfg = ["-c", str(ROOT / "configs" / "tiny.yaml"), "data.name=cifar-10", f"data.dir={src}", "num_clients=8"]
    res = cli(["data", "prepare", *cfg, "-o", str(tmp_path / "cifar.h5")])
    assert res.returncode == 0, res.stderr
    raw = cli(["run", *cfg, "-o", str(tmp_path / "raw.h5")])
    assert raw.returncode == 0, raw.stderr
    prep = cli(["run", *cfg, f"data.prepared={tmp_path / 'cifar.h5'}", "-o", str(tmp_path / "prep.h5")], nprocs=3)
    assert prep.returncode == 0, prep.stderr
    plain = cli(["run", *cfg, "data.augment=none", "-o", str(tmp_path / "plain.h5")])
    assert plain.returncode == 0, plain.stderr
    d_raw, s_raw, t_raw = _digest(tmp_path / "raw.h5")
    d_prep, s_prep, t_prep = _digest(tmp_path / "prep.h5")
    assert d_raw == d_prep
    assert s_raw.endswith("cifar-10-batches-py") and "prepared, sources checked" in s_prep
    assert len(t_raw) == 1 and len(t_prep) == 3 and all(t > 0 for t in t_prep)
    assert _digest(tmp_path / "plain.h5")[0] != d_raw  # the augmentation is in effect


def test_a_prepared_file_for_another_seed_stops_every_rank_with_one_clear_message(cli, tmp_path):
    tiny = str(ROOT / "configs" / "tiny.yaml")
    assert cli(["data", "prepare", "-c", tiny, "-o", str(tmp_path / "d.h5")]).returncode == 0
    res = cli(["run", "-c", tiny, "seed=7", f"data.prepared={tmp_path / 'd.h5'}", "-o", str(tmp_path / "r.h5")],
              nprocs=3)
    assert res.returncode != 0
    assert "partition_seed" in res.stderr and "data prepare" in res.stderr and "Traceback" not in res.stderr
