"""Prepared dataset files (`fedmrn-mpi data prepare`), dataset aliases and `fedmrn-mpi data check`."""

import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from datagen import make_cifar10, make_idx_dataset
from fedmrn_mpi.config import ConfigError, load_config
from fedmrn_mpi.data.prepared import PreparedData, PreparedFileError
from fedmrn_mpi.data.readers import DatasetFileError
from fedmrn_mpi.data.registry import canonical_name, get_spec
from fedmrn_mpi.run.data_commands import main_data
from fedmrn_mpi.run.dataset import open_run_data

from conftest import ROOT

CPU = torch.device("cpu")


@pytest.mark.parametrize("name, canonical", [
    ("fmnist", "fashion_mnist"), ("fashion-mnist", "fashion_mnist"), ("FashionMNIST", "fashion_mnist"),
    ("Fashion_MNIST", "fashion_mnist"), ("cifar-10", "cifar10"), ("CIFAR10", "cifar10"), ("cifar_100", "cifar100"),
    ("cifar-100", "cifar100"), ("SVHN", "svhn"), ("mnist", "mnist")])
def test_dataset_aliases_resolve_in_the_registry_and_in_configs(name, canonical):
    assert canonical_name(name) == canonical and get_spec(name).name == canonical
    assert load_config(None, [f"data.name={name}"]).data.name == canonical


def test_an_unknown_dataset_name_is_still_an_error_with_a_suggestion():
    assert canonical_name("cifar-1000") is None
    with pytest.raises(ConfigError, match=r"data\.name.*'cifar-1000'.*did you mean 'cifar100'"):
        load_config(None, ["data.name=cifar-1000"])


def _cfg(*over):
    return load_config(ROOT / "configs" / "tiny.yaml", list(over))


def _prepare(tmp_path, *over, name="data.h5"):
    out = tmp_path / name
    assert main_data(["prepare", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(out), *over]) == 0
    return out


def _same(a, b):
    assert np.array_equal(a.sizes, b.sizes) and np.array_equal(a.label_counts, b.label_counts)
    for k in range(len(a.sizes)):
        (xa, ya), (xb, yb) = a.client(k), b.client(k)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.dtype == xb.dtype
    assert a.num_test == b.num_test
    for first, last in ((0, a.num_test), (3, 17)):
        (xa, ya), (xb, yb) = a.test(first, last), b.test(first, last)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and len(ya) == min(last, a.num_test) - first
    x = a.test(0, 5)[0]
    assert torch.equal(a.train_transform(x), b.train_transform(x))
    assert torch.equal(a.test_transform(x), b.test_transform(x))


def test_prepared_synthetic_data_gives_every_rank_the_same_tensors_as_the_generator(tmp_path):
    out = _prepare(tmp_path)
    raw = open_run_data(_cfg(), CPU, need_train=True)
    prep = open_run_data(_cfg(f"data.prepared={out}"), CPU, need_train=True, check_source=True)
    _same(raw, prep)
    server = open_run_data(_cfg(f"data.prepared={out}"), CPU, need_train=False)
    assert server.client is None and server.num_test == raw.num_test


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_prepared_raw_files_round_trip_with_their_sources_checked(tmp_path, dataset):
    src = tmp_path / "src"
    (make_idx_dataset(src, n_train=60, n_test=20) if dataset == "mnist" else make_cifar10(src, per_batch=12))
    over = [f"data.name={dataset}", f"data.dir={src}", "data.partition=dirichlet", "data.alpha=0.5",
            "model.name=cnn4"]
    out = _prepare(tmp_path, *over)
    with h5py.File(out, "r") as f:
        assert f["train/images"].dtype == np.uint8 and f.attrs["source_sha256"]
        files = [name for name, _, _ in __import__("json").loads(f.attrs["source_files"])]
    assert len(files) == (4 if dataset == "mnist" else 6)
    raw = open_run_data(_cfg(*over), CPU, need_train=True)
    prep = open_run_data(_cfg(*over, f"data.prepared={out}"), CPU, True, check_source=True)
    _same(raw, prep)
    # the same file, now from other source files: refused, naming the sources
    victim = sorted(p for p in src.rglob("*") if p.is_file())[0]
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    with pytest.raises(PreparedFileError, match="source files"):
        open_run_data(_cfg(*over, f"data.prepared={out}"), CPU, True, check_source=True)
    # ranks that do not check the sources (all but rank 0) still read it
    open_run_data(_cfg(*over, f"data.prepared={out}"), CPU, True)


@pytest.mark.parametrize("over, what", [
    (["seed=99"], "partition_seed"), (["data.partition=dirichlet"], "partition"),
    (["num_clients=6"], "num_clients"), (["data.synthetic_train=300"], "n_train")])
def test_a_prepared_file_for_other_settings_is_refused_naming_them(tmp_path, over, what):
    out = _prepare(tmp_path)
    with pytest.raises(PreparedFileError, match=f"prepared for other data.*{what}.*data prepare"):
        open_run_data(_cfg(*over, f"data.prepared={out}"), CPU, True)


def test_damaged_or_foreign_prepared_files_are_clear_errors(tmp_path):
    with pytest.raises(DatasetFileError, match="no file"):
        PreparedData(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(PreparedFileError, match="not a prepared dataset file"):
        PreparedData(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(PreparedFileError, match="not a readable HDF5 file"):
        PreparedData(tmp_path / "text.h5")
    out = _prepare(tmp_path)
    with h5py.File(out, "r") as f:
        offset = f["train/images"].id.get_chunk_info(0).byte_offset
    raw = bytearray(out.read_bytes())
    raw[offset + 100] ^= 0xFF  # a flipped bit inside the first chunk of training images
    out.write_bytes(bytes(raw))
    pd = PreparedData(out)
    with pytest.raises(PreparedFileError, match="cannot read train/images.*damaged"):
        pd.client(0)


def test_prepare_writes_atomically_and_leaves_no_temporary_file(tmp_path):
    _prepare(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5"]


def test_data_check_prints_the_partition_and_fails_clearly_on_missing_files(tmp_path, capsys):
    src = tmp_path / "src"
    make_idx_dataset(src, n_train=60, n_test=20)
    tiny = str(ROOT / "configs" / "tiny.yaml")
    assert main_data(["check", "-c", tiny, "data.name=fmnist", f"data.dir={src}", "num_clients=6",
                      "data.partition=classes", "data.classes_per_client=2", "clients_per_round=2"]) == 0
    out = capsys.readouterr().out
    assert "train-images-idx3-ubyte.gz" in out and re.search(r"train\s+60 samples", out)
    assert "partition: 6 clients" in out and "2.00 classes per client" in out
    assert len([ln for ln in out.splitlines() if ln.split()[:1] and ln.split()[0].isdigit()]) == 6
    assert main_data(["check", "-c", tiny, "data.name=cifar10", f"data.dir={tmp_path / 'nowhere'}"]) == 1
    err = capsys.readouterr().err
    assert "data check failed" in err and "nowhere" in err and "Traceback" not in err
    assert main_data(["check", "-c", tiny, "data.nmae=x"]) == 2


def test_data_check_of_a_prepared_file(tmp_path, capsys):
    out = _prepare(tmp_path)
    assert main_data(["check", "-c", str(ROOT / "configs" / "tiny.yaml"), f"data.prepared={out}"]) == 0
    assert "matches this config" in capsys.readouterr().out
    assert main_data(["check", "-c", str(ROOT / "configs" / "tiny.yaml"), f"data.prepared={out}", "seed=5"]) == 1
    assert "partition_seed" in capsys.readouterr().err


def test_the_data_command_runs_from_the_command_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fedmrn_mpi", "data", "prepare", "-c",
                          str(ROOT / "configs" / "tiny.yaml"), "-o", str(tmp_path / "d.h5")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "use it with: data.prepared=" in res.stdout and (tmp_path / "d.h5").is_file()


def test_switching_to_a_prepared_file_may_happen_on_resume_but_not_changing_the_augmentation():
    from fedmrn_mpi.run.resume import resume_identity
    base = resume_identity(_cfg())
    assert resume_identity(_cfg("data.prepared=/some/where.h5")) == base
    assert resume_identity(_cfg("data.augment=crop_flip")) != base
