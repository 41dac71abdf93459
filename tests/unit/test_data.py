"""Tests of fedmrn_mpi.data: readers on tiny files in the real formats, the registry, partitioners."""

from __future__ import annotations

import importlib.util
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import datagen
from fedmrn_mpi.data import (
    DATASETS,
    DEFAULT_DIRS,
    NORMALIZATION,
    SPLITS,
    Dataset,
    DatasetFileError,
    DatasetFormatError,
    classes,
    dataset_names,
    dirichlet,
    iid,
    load_dataset,
    make_synthetic,
    partition,
    partition_stats,
    read_cifar10,
    read_cifar100,
    read_fashion_mnist,
    read_mnist,
    read_svhn,
)

HAVE_SCIPY = importlib.util.find_spec("scipy") is not None
REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _expected(images: np.ndarray, name: str, split: str) -> np.ndarray:
    mean, std = NORMALIZATION[name][split]
    x = images.astype(np.float32) / np.float32(255)
    x -= np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    return x / np.asarray(std, np.float32).reshape(1, -1, 1, 1)


def _check(ds: Dataset, written: datagen.Arrays, name: str, num_classes: int, shape: tuple[int, int, int]) -> None:
    assert ds.name == name and ds.num_classes == num_classes and ds.input_shape == shape
    for x, y, split in ((ds.x_train, ds.y_train, "train"), (ds.x_test, ds.y_test, "test")):
        images, labels = written[split]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape) == (len(labels), *shape) and tuple(y.shape) == (len(labels),)
        np.testing.assert_array_equal(y.numpy(), labels)
        np.testing.assert_allclose(x.numpy(), _expected(images, name, split), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(ds.normalize(ds.images_train if split == "train" else ds.images_test, split),
                                      x.numpy())


# --------------------------------------------------------------------------------------------------
# idx readers


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name,reader", [("fashion_mnist", read_fashion_mnist), ("mnist", read_mnist)])
def test_idx_roundtrip(tmp_path: Path, gz: bool, name: str, reader) -> None:
    written = datagen.make_idx_dataset(tmp_path, gz=gz)
    ds = reader(tmp_path)
    _check(ds, written, name, 10, (1, 28, 28))
    assert ds.source == str(tmp_path)
    # A pixel of 0 and of 255 map to the documented constants of each split.
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        mean, std = NORMALIZATION[name][split]
        assert float(x.min()) == pytest.approx((0 - mean[0]) / std[0], abs=1e-5)
        assert float(x.max()) == pytest.approx((1 - mean[0]) / std[0], abs=1e-5)


def test_idx_torchvision_layout_and_registry(tmp_path: Path) -> None:
    written = datagen.make_idx_dataset(tmp_path / "FashionMNIST" / "raw")
    ds = load_dataset("fashion_mnist", str(tmp_path))
    _check(ds, written, "fashion_mnist", 10, (1, 28, 28))
    assert load_dataset("Fashion-MNIST", tmp_path / "FashionMNIST" / "raw").num_train == 30


@pytest.mark.parametrize("missing", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_idx_missing_file_names_path_and_source(tmp_path: Path, missing: str) -> None:
    datagen.make_idx_dataset(tmp_path)
    (tmp_path / f"{missing}.gz").unlink()
    with pytest.raises(DatasetFileError) as e:
        read_fashion_mnist(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / f"{missing}.gz") in msg and "fashion_mnist" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "data.dir" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetFileError, match="does not exist"):
        read_mnist(tmp_path / "nowhere")
    with pytest.raises(DatasetFileError) as e:
        read_mnist(tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(e.value) and "MNIST" in str(e.value)


def test_idx_bad_magic(tmp_path: Path) -> None:
    datagen.make_idx_dataset(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    datagen.write_idx(bad, np.zeros((30, 28, 28), np.uint8), magic=0x0D03)  # float type code
    with pytest.raises(DatasetFormatError, match="bad idx magic") as e:
        read_fashion_mnist(tmp_path)
    assert str(bad) in str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path: Path, gz: bool) -> None:
    datagen.make_idx_dataset(tmp_path, gz=gz)
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(DatasetFormatError) as e:
        read_fashion_mnist(tmp_path)
    assert str(path) in str(e.value)
    assert ("truncated" in str(e.value)) if not gz else ("gzip" in str(e.value) or "truncated" in str(e.value))


def test_idx_short_header_and_wrong_size(tmp_path: Path) -> None:
    datagen.make_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetFormatError, match="too short"):
        read_mnist(tmp_path)
    datagen.make_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    datagen.write_idx(path, np.zeros((30, 32, 32), np.uint8))
    with pytest.raises(DatasetFormatError, match="expected 28x28"):
        read_mnist(tmp_path)


def test_idx_count_mismatch_and_label_range(tmp_path: Path) -> None:
    datagen.make_idx_dataset(tmp_path, n_train=30, gz=True)
    labels = tmp_path / "train-labels-idx1-ubyte"
    datagen.write_idx(labels, np.zeros(29, np.uint8), gz=True)
    with pytest.raises(DatasetFormatError, match="count mismatch") as e:
        read_fashion_mnist(tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(e.value)
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in str(e.value)

    datagen.write_idx(labels, np.full(30, 10, np.uint8), gz=True)
    with pytest.raises(DatasetFormatError, match="label 10 out of range") as e:
        read_fashion_mnist(tmp_path)
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in str(e.value)


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    t0 = time.perf_counter()
    ds = load_dataset("fashion_mnist", None)
    elapsed = time.perf_counter() - t0
    assert ds.num_train == 60000 and ds.num_test == 10000 and ds.num_classes == 10
    assert ds.input_shape == (1, 28, 28) and ds.source == str(REAL_FMNIST)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    # The reference normalises each FashionMNIST split with that split's own statistics.
    assert abs(float(ds.x_train.mean())) < 1e-3 and abs(float(ds.x_train.std()) - 1) < 1e-3
    assert abs(float(ds.x_test.mean())) < 1e-3 and abs(float(ds.x_test.std()) - 1) < 1e-3
    print(f"real FashionMNIST loaded in {elapsed:.2f} s")


# --------------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("subdir", [False, True])
def test_cifar10_roundtrip(tmp_path: Path, subdir: bool) -> None:
    written = datagen.make_cifar10(tmp_path, subdir=subdir)
    ds = read_cifar10(tmp_path)
    _check(ds, written, "cifar10", 10, (3, 32, 32))
    assert ds.source == str(tmp_path / "cifar-10-batches-py" if subdir else tmp_path)


def test_cifar100_roundtrip(tmp_path: Path) -> None:
    written = datagen.make_cifar100(tmp_path, subdir=True)
    ds = load_dataset("cifar100", tmp_path)
    _check(ds, written, "cifar100", 100, (3, 32, 32))
    assert int(ds.y_train.max()) == 99


def test_cifar_str_keys_accepted(tmp_path: Path) -> None:
    written = datagen.make_cifar100(tmp_path, subdir=False)
    for split in ("train", "test"):
        x, y = written[split]
        with (tmp_path / split).open("wb") as f:
            pickle.dump({"data": x.reshape(len(x), -1), "fine_labels": y.tolist()}, f)
    _check(read_cifar100(tmp_path), written, "cifar100", 100, (3, 32, 32))


def test_cifar_missing_names_path_and_source(tmp_path: Path) -> None:
    datagen.make_cifar10(tmp_path, subdir=True)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetFileError) as e:
        read_cifar10(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_4") in msg
    assert "cifar-10-python.tar.gz" in msg and "cs.toronto.edu" in msg
    with pytest.raises(DatasetFileError) as e:
        read_cifar100(tmp_path / "cifar-10-batches-py")
    assert str(tmp_path / "cifar-10-batches-py" / "train") in str(e.value) and "cifar-100-python" in str(e.value)


def test_cifar_corrupt(tmp_path: Path) -> None:
    written = datagen.make_cifar10(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DatasetFormatError) as e:
        read_cifar10(tmp_path)
    assert str(tmp_path / "data_batch_2") in str(e.value)

    x, _ = written["test"]
    with (tmp_path / "data_batch_2").open("wb") as f:  # one label short
        pickle.dump({b"data": x.reshape(len(x), -1), b"labels": [0] * (len(x) - 1)}, f, protocol=2)
    with pytest.raises(DatasetFormatError, match="count mismatch"):
        read_cifar10(tmp_path)

    with (tmp_path / "data_batch_2").open("wb") as f:  # images of the wrong size
        pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, f, protocol=2)
    with pytest.raises(DatasetFormatError, match="3072"):
        read_cifar10(tmp_path)

    with (tmp_path / "data_batch_2").open("wb") as f:  # label out of range
        pickle.dump({b"data": x.reshape(len(x), -1), b"labels": [10] * len(x)}, f, protocol=2)
    with pytest.raises(DatasetFormatError, match="out of range") as e:
        read_cifar10(tmp_path)
    assert str(tmp_path / "data_batch_2") in str(e.value)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_pickle_refuses_arbitrary_globals(tmp_path: Path) -> None:
    datagen.make_cifar10(tmp_path)
    with (tmp_path / "test_batch").open("wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DatasetFormatError, match="refusing to unpickle global (__builtin__|builtins).print"):
        read_cifar10(tmp_path)


# --------------------------------------------------------------------------------------------------
# SVHN


@pytest.mark.skipif(not HAVE_SCIPY, reason="scipy (the svhn extra) not installed")
def test_svhn_roundtrip(tmp_path: Path) -> None:
    written = datagen.make_svhn(tmp_path)
    ds = load_dataset("svhn", tmp_path)
    _check(ds, written, "svhn", 10, (3, 32, 32))
    assert int(ds.y_train.min()) == 0  # label 10 became digit 0


@pytest.mark.skipif(not HAVE_SCIPY, reason="scipy (the svhn extra) not installed")
def test_svhn_corrupt(tmp_path: Path) -> None:
    from scipy.io import savemat

    datagen.make_svhn(tmp_path)
    path = tmp_path / "test_32x32.mat"
    savemat(path, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((5, 1), np.uint8)})
    with pytest.raises(DatasetFormatError, match="count mismatch") as e:
        read_svhn(tmp_path)
    assert str(path) in str(e.value)
    savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]], np.uint8)})
    with pytest.raises(DatasetFormatError, match="out of range"):
        read_svhn(tmp_path)
    savemat(path, {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(DatasetFormatError, match="expected \\(32, 32, 3, N\\)"):
        read_svhn(tmp_path)
    path.write_bytes(b"garbage" * 20)
    with pytest.raises(DatasetFormatError, match="not a readable MATLAB file"):
        read_svhn(tmp_path)


def test_svhn_missing_names_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetFileError) as e:
        read_svhn(tmp_path)
    assert str(tmp_path / "train_32x32.mat") in str(e.value) and "test_32x32.mat" in str(e.value)


def test_svhn_without_scipy_says_pip_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train_32x32.mat").write_bytes(b"")
    (tmp_path / "test_32x32.mat").write_bytes(b"")
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError("No module named 'scipy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(ImportError, match="pip install scipy"):
        read_svhn(tmp_path)


# --------------------------------------------------------------------------------------------------
# per-split normalisation


def test_normalization_table_is_the_reference_one() -> None:
    assert set(NORMALIZATION) == set(dataset_names()) - {"synthetic"}
    assert all(set(v) == set(SPLITS) == {"train", "test"} for v in NORMALIZATION.values())
    assert NORMALIZATION["fashion_mnist"] == {"train": ((0.2860,), (0.3530,)), "test": ((0.2868,), (0.3524,))}
    assert NORMALIZATION["mnist"]["train"] == NORMALIZATION["mnist"]["test"] == ((0.1307,), (0.3081,))
    assert NORMALIZATION["svhn"] == {"train": ((0.4496,) * 3, (0.1995,) * 3), "test": ((0.4560,) * 3, (0.2244,) * 3)}
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert NORMALIZATION["cifar10"]["train"] == NORMALIZATION["cifar10"]["test"] == imagenet
    cifar100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    assert NORMALIZATION["cifar100"]["train"] == NORMALIZATION["cifar100"]["test"] == cifar100
    for name, splits in NORMALIZATION.items():
        c = DATASETS[name].input_shape[0]
        assert all(len(m) == len(s) == c for m, s in splits.values()), name


def test_fashion_mnist_splits_use_their_own_constants(tmp_path: Path) -> None:
    datagen.make_idx_dataset(tmp_path)
    ds = read_fashion_mnist(tmp_path)
    assert (ds.mean, ds.std, ds.test_mean, ds.test_std) == ((0.2860,), (0.3530,), (0.2868,), (0.3524,))
    assert ds.normalization("test") == ((0.2868,), (0.3524,))
    px = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    want_train = (torch.tensor([0.0, 0.2, 1.0]) - 0.2860) / 0.3530
    want_test = (torch.tensor([0.0, 0.2, 1.0]) - 0.2868) / 0.3524
    torch.testing.assert_close(ds.normalize(px).flatten(), want_train)
    torch.testing.assert_close(ds.normalize(px, "train").flatten(), want_train)
    torch.testing.assert_close(ds.normalize(px, "test").flatten(), want_test)
    assert torch.equal(ds.x_test, ds.normalize(ds.images_test, "test"))
    assert not torch.equal(ds.x_test, ds.normalize(ds.images_test))
    with pytest.raises(ValueError, match="split"):
        ds.normalize(px, "val")


def test_empty_test_constants_mean_same_as_train() -> None:
    images = torch.arange(12, dtype=torch.uint8).reshape(3, 1, 2, 2)
    labels = torch.zeros(3, dtype=torch.int64)
    ds = Dataset(images, labels, images, labels, 2, "tiny", "memory", mean=(0.5,), std=(0.25,))
    assert ds.normalization("test") == ds.normalization("train") == ((0.5,), (0.25,))
    assert torch.equal(ds.x_test, ds.x_train)
    # Float images (synthetic data) pass through either split unchanged.
    syn = make_synthetic(n_train=20, n_test=10, seed=1)
    assert torch.equal(syn.x_test, syn.images_test) and torch.equal(syn.normalize(syn.images_train, "test"),
                                                                      syn.images_train)


# --------------------------------------------------------------------------------------------------
# synthetic and registry


def test_synthetic_deterministic_and_learnable() -> None:
    a = make_synthetic(n_train=300, n_test=100, seed=3)
    b = load_dataset("synthetic", None, n_train=300, n_test=100, seed=3)
    c = make_synthetic(n_train=300, n_test=100, seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10
    assert torch.bincount(a.y_train).tolist() == [30] * 10
    # The test set does not depend on n_train.
    assert torch.equal(make_synthetic(n_train=50, n_test=100, seed=3).x_test, a.x_test)
    # Nearest class mean (fitted on train) classifies the test set well: the structure is learnable.
    xtr, xte = a.x_train.flatten(1), a.x_test.flatten(1)
    means = torch.stack([xtr[a.y_train == k].mean(0) for k in range(10)])
    acc = (torch.cdist(xte, means).argmin(1) == a.y_test).float().mean().item()
    assert acc > 0.9


def test_registry() -> None:
    assert dataset_names() == ["fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "synthetic"]
    assert set(DEFAULT_DIRS) == set(dataset_names()) - {"synthetic"}
    assert DEFAULT_DIRS["fashion_mnist"] == "/usr/share/datasets/fashion-mnist"
    assert DATASETS["cifar100"].num_classes == 100 and DATASETS["svhn"].input_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="fashion_mnist, mnist, cifar10, cifar100, svhn, synthetic"):
        load_dataset("imagenet", None)
    with pytest.raises(ValueError, match="does not take option"):
        load_dataset("mnist", None, n_train=5)
    with pytest.raises(ValueError, match="allowed: n_train, n_test, seed"):
        load_dataset("synthetic", None, n_trian=5)


# --------------------------------------------------------------------------------------------------
# partitioners


def _labels(n_per_class: int = 200, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    y = np.repeat(np.arange(num_classes), n_per_class)
    return y[np.random.Generator(np.random.PCG64(seed)).permutation(y.size)]


def _assert_valid(parts: list[np.ndarray], n: int, cover: bool) -> None:
    """Sorted int64, non-empty, disjoint; with cover, every index used (all three schemes do)."""
    assert all(p.dtype == np.int64 and p.size > 0 and np.all(np.diff(p) > 0) for p in parts)
    allidx = np.concatenate(parts)
    assert np.unique(allidx).size == allidx.size  # disjoint
    assert allidx.min() >= 0 and allidx.max() < n
    if cover:
        assert allidx.size == n


def test_iid() -> None:
    y = _labels()
    parts = iid(y, 7, seed=1)
    _assert_valid(parts, y.size, cover=True)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid(torch.from_numpy(y), 7, seed=1)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, iid(y, 7, seed=2)))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "classes"])
def test_partition_deterministic_and_disjoint(scheme: str) -> None:
    y = _labels()
    a = partition(y, scheme, 20, seed=1234, alpha=0.3, classes_per_client=3)
    b = partition(y, scheme, 20, seed=1234, alpha=0.3, classes_per_client=3)
    c = partition(y, scheme, 20, seed=1235, alpha=0.3, classes_per_client=3)
    assert len(a) == 20
    _assert_valid(a, y.size, cover=True)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))
    stats = partition_stats(a, y, 10)
    assert stats.shape == (20, 10) and stats.dtype == np.int64
    assert stats.sum() == sum(p.size for p in a)


def test_dirichlet_partition_is_pinned() -> None:
    # The sampler uses only Generator.random() on PCG64, so this must not change with NumPy versions.
    y = np.arange(100) % 4
    parts = dirichlet(y, 5, alpha=0.5, seed=7, min_size=1)
    fingerprint = [int(p.size) for p in parts] + [int(p[0]) for p in parts]
    assert sum(fingerprint[:5]) == 100
    assert fingerprint == PINNED_DIRICHLET


# Recorded with NumPy 2.4 (client sizes, then each client's first index).
PINNED_DIRICHLET: list[int] = [7, 34, 32, 19, 8, 6, 3, 1, 0, 4]


def test_dirichlet_skew_increases_as_alpha_falls() -> None:
    y = _labels(300)
    prior = np.bincount(y) / y.size

    def skew(alpha: float) -> float:
        s = partition_stats(dirichlet(y, 20, alpha, seed=1234), y, 10).astype(float)
        dist = s / s.sum(1, keepdims=True)
        return float(0.5 * np.abs(dist - prior).sum(1).mean())  # mean total-variation distance

    skews = [skew(a) for a in (100.0, 1.0, 0.3, 0.1)]
    assert all(a < b for a, b in zip(skews, skews[1:])), skews
    assert skews[0] < 0.1 and skews[-1] > 0.5


def test_dirichlet_min_size_and_errors() -> None:
    y = _labels(50)
    parts = dirichlet(y, 10, 0.5, seed=0, min_size=20)
    assert min(p.size for p in parts) >= 20
    with pytest.raises(ValueError, match="no draw in 5 gave each of 50 clients"):
        dirichlet(y, 50, 0.001, seed=0, min_size=5, max_tries=5)
    with pytest.raises(ValueError, match="only 500 available"):
        dirichlet(y, 100, 0.5, seed=0, min_size=6)
    with pytest.raises(ValueError, match="alpha must be a positive"):
        dirichlet(y, 10, 0.0, seed=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        dirichlet(y, 10, 0.5, seed=-1)


def test_classes_exact_k_and_balanced() -> None:
    y = _labels(200)
    for k in (1, 3, 10):
        parts = classes(y, 30, k, seed=1234)
        _assert_valid(parts, y.size, cover=True)
        stats = partition_stats(parts, y, 10)
        assert ((stats > 0).sum(1) == k).all()
        holders = (stats > 0).sum(0)
        assert holders.max() - holders.min() <= 1
        # Within a class the holders' shares differ by at most one sample.
        for c in range(10):
            shares = stats[stats[:, c] > 0, c]
            assert shares.max() - shares.min() <= 1
    # Client class sets are not just a fixed rotation.
    sets = {tuple(np.flatnonzero(r)) for r in partition_stats(classes(y, 30, 3, seed=1), y, 10) > 0}
    assert len(sets) > 10


def test_impossible_requests() -> None:
    y = _labels(2, num_classes=3)  # 6 samples
    for scheme in ("iid", "dirichlet", "classes"):
        with pytest.raises(ValueError, match="only 6 training samples"):
            partition(y, scheme, 7, seed=0, alpha=0.5, classes_per_client=1)
    with pytest.raises(ValueError, match="class 0 has 2 samples but 4 clients hold it"):
        classes(y, 6, 2, seed=0)
    with pytest.raises(ValueError, match="classes_per_client must be an integer in 1..3"):
        classes(y, 2, 4, seed=0)
    with pytest.raises(ValueError, match="iid\\|dirichlet\\|classes"):
        partition(y, "shards", 2, seed=0, alpha=0.5, classes_per_client=1)
    with pytest.raises(ValueError, match="num_clients must be a positive integer"):
        iid(y, 0, seed=0)


def test_partition_real_grid_sizes() -> None:
    # The paper's grid on a FashionMNIST-sized label vector: every scheme gives 100 non-empty clients.
    y = np.repeat(np.arange(10), 6000)
    for scheme, kw in (("iid", {}), ("dirichlet", {"alpha": 0.3}), ("classes", {"classes_per_client": 3})):
        parts = partition(y, scheme, 100, seed=1234, **kw)
        _assert_valid(parts, y.size, cover=True)
        assert min(p.size for p in parts) >= (10 if scheme == "dirichlet" else 1)
