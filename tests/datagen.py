"""Write tiny fake datasets in the real on-disk formats, for tests.

Each ``make_*`` helper writes the files a reader expects into a folder and returns the raw uint8
images (N, C, H, W) and int64 labels it wrote, so a test can compare what is read back.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images NCHW, int64 labels)


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An unsigned-byte idx file for ``array`` (magic 0x0000080<ndim> unless given)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False, magic: int | None = None) -> Path:
    """Write ``array`` as an idx file; with gz the name gains ``.gz`` and the bytes are gzipped."""
    data = idx_bytes(array, magic)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)
    return path


def make_idx_dataset(folder: Path, n_train: int = 30, n_test: int = 12, gz: bool = True, seed: int = 0) -> Arrays:
    """The four MNIST/FashionMNIST idx files with random 28x28 images and labels 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    out: Arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[split] = (images[:, None], labels.astype(np.int64))
    return out


def _cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: bytes) -> None:
    # bytes keys and protocol 2, as in the Toronto files (pickled by Python 2).
    batch = {
        b"batch_label": b"fake batch",
        b"data": images.reshape(len(images), -1),
        label_key: [int(v) for v in labels],
        b"filenames": [b"img_%d.png" % i for i in range(len(images))],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    data = pickle.dumps(batch, protocol=2)
    # The Toronto files were written with NumPy 1.x, whose arrays name numpy.core (not numpy._core).
    old, new = b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
    assert old in data
    path.write_bytes(data.replace(old, new))


def make_cifar10(folder: Path, per_batch: int = 6, n_test: int = 8, subdir: bool = False, seed: int = 0) -> Arrays:
    """``data_batch_1..5`` and ``test_batch`` (in ``folder/cifar-10-batches-py`` if subdir)."""
    target = folder / "cifar-10-batches-py" if subdir else folder
    target.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, size=per_batch)
        _cifar_batch(target / f"data_batch_{i}", x, y, b"labels")
        xs.append(x)
        ys.append(y)
    xt = rng.integers(0, 256, size=(n_test, 3, 32, 32), dtype=np.uint8)
    yt = rng.integers(0, 10, size=n_test)
    _cifar_batch(target / "test_batch", xt, yt, b"labels")
    return {"train": (np.concatenate(xs), np.concatenate(ys).astype(np.int64)), "test": (xt, yt.astype(np.int64))}


def make_cifar100(folder: Path, n_train: int = 20, n_test: int = 8, subdir: bool = True, seed: int = 0) -> Arrays:
    """``train`` and ``test`` with fine labels 0..99 (in ``folder/cifar-100-python`` if subdir)."""
    target = folder / "cifar-100-python" if subdir else folder
    target.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    out: Arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 100, size=n)
        y[0] = 99  # make sure the top label is exercised
        _cifar_batch(target / split, x, y, b"fine_labels")
        out[split] = (x, y.astype(np.int64))
    return out


def make_svhn(folder: Path, n_train: int = 15, n_test: int = 7, seed: int = 0) -> Arrays:
    """``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB v5, X 32x32x3xN uint8, y Nx1 with 10 for
    digit 0) written by scipy.io.savemat. Returned labels are the 0..9 digits."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    out: Arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        savemat(folder / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y})
        out[split] = (x, digits.astype(np.int64))
    return out
