"""Readers for the standard on-disk image-classification formats.

Nothing is downloaded: every reader takes a directory that already holds the files and fails with
:class:`DatasetFileError` (naming the missing path and where the files come from) or
:class:`DatasetFormatError` (naming the file and what is wrong with it). Sizes and counts are checked,
hashes are not, so re-packed copies of the same data load too.

Images are kept as uint8 ``(N, C, H, W)`` pixels; :meth:`Dataset.normalize` (and ``x_train``/``x_test``)
gives float32 normalised per channel as ``(pixel / 255 - mean[c]) / std[c]``, with per-split constants from
:data:`NORMALIZATION` (the ones the FedMRN reference experiments' transforms use; see there).
Labels are int64 ``(N,)`` tensors in ``0 .. num_classes - 1``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "NORMALIZATION",
    "SPLITS",
    "Dataset",
    "DatasetError",
    "DatasetFileError",
    "DatasetFormatError",
    "read_idx",
    "read_mnist",
    "read_fashion_mnist",
    "read_cifar10",
    "read_cifar100",
    "read_svhn",
    "make_synthetic",
    "normalize_images",
    "source_files",
]

PathLike = str | os.PathLike[str]

#: Per-channel ``(mean, std)`` on the [0, 1] pixel scale, per split: ``NORMALIZATION[name][split]`` with split
#: "train" or "test". These are the constants of the FedMRN reference experiments' torchvision transforms
#: (``Normalize(mean, std)`` in their train and test pipelines), so results are comparable with the paper's;
#: they are not all the statistics of the split they are applied to:
#:   - fashion_mnist normalises each split with that split's own statistics (checked against the Debian
#:     package's files: train 0.28604/0.35302, test 0.28685/0.35244);
#:   - mnist and cifar100 use the common training-set statistics for both splits;
#:   - svhn uses one scalar per split (train 0.4496/0.1995, test 0.4560/0.2244), broadcast to the 3 channels;
#:   - cifar10 uses the ImageNet constants for both splits.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
NORMALIZATION: dict[str, dict[str, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "mnist": {"train": ((0.1307,), (0.3081,)), "test": ((0.1307,), (0.3081,))},
    "fashion_mnist": {"train": ((0.2860,), (0.3530,)), "test": ((0.2868,), (0.3524,))},
    "cifar10": {"train": _IMAGENET, "test": _IMAGENET},
    "cifar100": {"train": _CIFAR100, "test": _CIFAR100},
    "svhn": {"train": ((0.4496,) * 3, (0.1995,) * 3), "test": ((0.4560,) * 3, (0.2244,) * 3)},
}
SPLITS = ("train", "test")


class DatasetError(Exception):
    """Base class of the data-layer errors."""


class DatasetFileError(DatasetError, FileNotFoundError):
    """A dataset file (or its directory) is missing."""


class DatasetDependencyError(DatasetError, ImportError):
    """Reading this dataset needs an optional package that is not installed (the message says how to get it)."""


class DatasetFormatError(DatasetError, ValueError):
    """A dataset file exists but does not hold what its format promises."""


@dataclass(eq=False, repr=False)
class Dataset:
    """A train/test split held in memory.

    Images are kept as they are stored on disk (uint8 pixels, 4x smaller than float32, which matters with
    dozens of ranks per node) and normalised per batch by :meth:`normalize`; ``x_train``/``x_test`` give
    the whole split normalised. ``mean``/``std`` are the training split's constants, ``test_mean``/``test_std``
    the test split's (empty: the same as training). Datasets without pixels (synthetic) keep float32 images,
    which normalisation passes through.
    """

    images_train: torch.Tensor
    y_train: torch.Tensor
    images_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    source: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    test_mean: tuple[float, ...] = ()
    test_std: tuple[float, ...] = ()

    def normalization(self, split: str = "train") -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` for `split` ("train" or "test"); empty test constants fall back to the train ones."""
        if split == "train":
            return self.mean, self.std
        if split == "test":
            return (self.test_mean or self.mean), (self.test_std or self.std)
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def normalize(self, images: torch.Tensor, split: str = "train") -> torch.Tensor:
        """float32 ``(pixel / 255 - mean[c]) / std[c]`` with `split`'s constants for uint8 images; float
        images pass through."""
        return normalize_images(images, *self.normalization(split))

    @property
    def x_train(self) -> torch.Tensor:
        return self.normalize(self.images_train, "train")

    @property
    def x_test(self) -> torch.Tensor:
        return self.normalize(self.images_test, "test")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])

    def __repr__(self) -> str:
        # The default dataclass repr would print whole tensors.
        return (
            f"Dataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, source={self.source!r})"
        )


# --------------------------------------------------------------------------------------------------
# shared helpers


def normalize_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 normalised per channel; float input is returned unchanged."""
    if images.is_floating_point():
        return images
    shape = (1, -1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).reshape(shape)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).reshape(shape)
    return images.to(torch.float32).div_(255.0).sub_(m).div_(s)


def _constants(name: str) -> dict[str, tuple[float, ...]]:
    """The :class:`Dataset` normalisation fields of dataset `name`, from :data:`NORMALIZATION`."""
    (mean, std), (test_mean, test_std) = (NORMALIZATION[name][split] for split in SPLITS)
    return {"mean": mean, "std": std, "test_mean": test_mean, "test_std": test_std}


def _pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) pixels as an owned, contiguous tensor."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8).copy())


def _labels_tensor(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))


def _check_labels(labels: np.ndarray, num_classes: int, file: str) -> None:
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DatasetFormatError(
            f"{file}: label {int(bad[0])} out of range 0..{num_classes - 1} "
            f"({bad.size} labels out of range)"
        )


def _check_count(images: np.ndarray, labels: np.ndarray, image_file: str, label_file: str) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"count mismatch: {image_file} holds {images.shape[0]} images but {label_file} holds "
            f"{labels.shape[0]} labels"
        )


def _check_dir(data_dir: Path, dataset: str, hint: str) -> None:
    if not data_dir.exists():
        raise DatasetFileError(f"{dataset}: data directory {data_dir} does not exist. {hint}")
    if not data_dir.is_dir():
        raise DatasetFileError(f"{dataset}: data directory {data_dir} is not a directory. {hint}")


# --------------------------------------------------------------------------------------------------
# idx (MNIST, FashionMNIST)

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: PathLike, expected_ndim: int) -> np.ndarray:
    """Read an unsigned-byte idx file (gzipped or plain, told apart by content) into a uint8 array.

    The idx header is two zero bytes, a type code (0x08 = ubyte), the number of dimensions and then
    one big-endian int32 per dimension.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetFormatError(f"{path}: corrupt gzip data ({e})") from e
    if len(raw) < 4:
        raise DatasetFormatError(f"{path}: {len(raw)} bytes, too short for an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] != expected_ndim:
        want = (_IDX_UBYTE << 8) | expected_ndim
        raise DatasetFormatError(
            f"{path}: bad idx magic 0x{magic:08x}, expected 0x{want:08x} "
            f"(unsigned bytes, {expected_ndim} dimension{'s' if expected_ndim > 1 else ''})"
        )
    header = 4 + 4 * expected_ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated idx header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=expected_ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes"
        raise DatasetFormatError(
            f"{path}: {what}: header says shape {dims} = {expected} bytes of data, file holds {got}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_LIST = (
    "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and "
    "t10k-labels-idx1-ubyte(.gz)"
)
_IDX_HINTS = {
    "fashion_mnist": (
        "Install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), which "
        f"puts the files in /usr/share/datasets/fashion-mnist, or set data.dir to a folder holding {_IDX_LIST} "
        "(from https://github.com/zalandoresearch/fashion-mnist). Nothing is downloaded at run time."
    ),
    "mnist": (
        f"Set data.dir to a folder holding {_IDX_LIST} of the MNIST database "
        "(http://yann.lecun.com/exdb/mnist/ or a mirror). Nothing is downloaded at run time."
    ),
}
# torchvision keeps the same idx files under <root>/<Name>/raw; accept that layout as well.
_TORCHVISION_NAMES = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _idx_folder(root: Path, name: str) -> Path:
    folders = [root, root / "raw", root / _TORCHVISION_NAMES[name] / "raw"]
    return next((f for f in folders if _find_idx_file(f, _IDX_FILES["train"][0])), root)


def _read_idx_dataset(data_dir: PathLike, name: str) -> Dataset:
    root = Path(data_dir).expanduser()
    hint = _IDX_HINTS[name]
    _check_dir(root, name, hint)
    folder = _idx_folder(root, name)

    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (image_stem, label_stem) in _IDX_FILES.items():
        paths = []
        for stem in (image_stem, label_stem):
            p = _find_idx_file(folder, stem)
            if p is None:
                raise DatasetFileError(
                    f"{name}: missing file {folder / (stem + '.gz')} (or uncompressed {folder / stem}). {hint}"
                )
            paths.append(p)
        images = read_idx(paths[0], 3)
        labels = read_idx(paths[1], 1)
        if images.shape[1:] != (28, 28):
            raise DatasetFormatError(f"{paths[0]}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
        _check_count(images, labels, str(paths[0]), str(paths[1]))
        _check_labels(labels, 10, str(paths[1]))
        arrays[split] = (images[:, None, :, :], labels)

    return Dataset(
        images_train=_pixels(arrays["train"][0]),
        y_train=_labels_tensor(arrays["train"][1]),
        images_test=_pixels(arrays["test"][0]),
        y_test=_labels_tensor(arrays["test"][1]),
        num_classes=10,
        name=name,
        source=str(folder),
        **_constants(name),
    )


def read_fashion_mnist(data_dir: PathLike) -> Dataset:
    """FashionMNIST from the four idx files (gzipped or plain) in ``data_dir``: 1x28x28, 10 classes."""
    return _read_idx_dataset(data_dir, "fashion_mnist")


def read_mnist(data_dir: PathLike) -> Dataset:
    """MNIST from the four idx files (gzipped or plain) in ``data_dir``: 1x28x28, 10 classes."""
    return _read_idx_dataset(data_dir, "mnist")


# --------------------------------------------------------------------------------------------------
# CIFAR python batches


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only.

    A pickle can run arbitrary code on load, and data directories are often shared; the CIFAR batches
    need nothing beyond numpy's array reconstruction, so everything else is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        ("_codecs", "encode"): ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        return super().find_class(*target)


def _load_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # pickle raises many types on garbage input
        raise DatasetFormatError(f"{path}: not a readable CIFAR python batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    # Batches pickled by Python 2 have bytes keys; ones re-pickled by Python 3 have str keys.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", label_key):
        if key not in batch:
            raise DatasetFormatError(f"{path}: no '{key}' entry (keys: {sorted(map(str, batch))})")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(
            f"{path}: 'data' is {data.dtype} with shape {data.shape}, expected uint8 (N, 3072)"
        )
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DatasetFormatError(f"{path}: '{label_key}' is not a list of integers ({e})") from e
    if labels.shape[0] != data.shape[0]:
        raise DatasetFormatError(
            f"{path}: count mismatch: {data.shape[0]} images but {labels.shape[0]} '{label_key}'"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_folder(root: Path, subdir: str, first_file: str) -> Path:
    return root if (root / first_file).is_file() or not (root / subdir).is_dir() else root / subdir


#: name -> (the folder the archive extracts to, training files, test file)
_CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    "cifar100": ("cifar-100-python", ("train",), "test"),
}


def _read_cifar(
    data_dir: PathLike,
    name: str,
    subdir: str,
    train_files: Sequence[str],
    test_file: str,
    label_key: str,
    num_classes: int,
    hint: str,
) -> Dataset:
    root = Path(data_dir).expanduser()
    _check_dir(root, name, hint)
    folder = _cifar_folder(root, subdir, train_files[0])

    def load(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for file in files:
            p = folder / file
            if not p.is_file():
                where = f" (looked in {root} and {root / subdir})" if folder == root else ""
                raise DatasetFileError(f"{name}: missing file {p}{where}. {hint}")
            x, y = _load_cifar_batch(p, label_key)
            _check_labels(y, num_classes, str(p))
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = load(train_files)
    x_test, y_test = load([test_file])
    return Dataset(
        images_train=_pixels(x_train),
        y_train=_labels_tensor(y_train),
        images_test=_pixels(x_test),
        y_test=_labels_tensor(y_test),
        num_classes=num_classes,
        name=name,
        source=str(folder),
        **_constants(name),
    )


_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def read_cifar10(data_dir: PathLike) -> Dataset:
    """CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``) in ``data_dir`` or
    ``data_dir/cifar-10-batches-py``: 3x32x32, 10 classes."""
    hint = (
        f"Download the python version cifar-10-python.tar.gz from {_CIFAR_URL}, extract it (tar xzf) and "
        "set data.dir to the extracted cifar-10-batches-py folder or its parent. Nothing is downloaded at run time."
    )
    subdir, train, test = _CIFAR_LAYOUT["cifar10"]
    return _read_cifar(data_dir, "cifar10", subdir, train, test, "labels", 10, hint)


def read_cifar100(data_dir: PathLike) -> Dataset:
    """CIFAR-100 python files (``train``, ``test``; fine labels) in ``data_dir`` or
    ``data_dir/cifar-100-python``: 3x32x32, 100 classes."""
    hint = (
        f"Download the python version cifar-100-python.tar.gz from {_CIFAR_URL}, extract it (tar xzf) and "
        "set data.dir to the extracted cifar-100-python folder or its parent. Nothing is downloaded at run time."
    )
    subdir, train, test = _CIFAR_LAYOUT["cifar100"]
    return _read_cifar(data_dir, "cifar100", subdir, train, test, "fine_labels", 100, hint)


# --------------------------------------------------------------------------------------------------
# SVHN (.mat, MATLAB v5)

_SVHN_HINT = (
    "Download train_32x32.mat and test_32x32.mat (the cropped-digits format) from "
    "http://ufldl.stanford.edu/housenumbers/ and set data.dir to the folder holding them. "
    "Nothing is downloaded at run time."
)


def _load_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        from scipy.io import loadmat  # optional dependency: only SVHN needs it
    except ImportError as e:
        raise DatasetDependencyError(
            "reading SVHN .mat files needs scipy: pip install scipy (or install fedmrn_mpi with the "
            "'svhn' extra: pip install 'fedmrn_mpi[svhn]')"
        ) from e
    try:
        mat = loadmat(str(path), variable_names=("X", "y"))
    except NotImplementedError as e:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise DatasetFormatError(f"{path}: MATLAB v7.3 file; expected the MATLAB v5 format of the SVHN site") from e
    except Exception as e:
        raise DatasetFormatError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from e
    for key in ("X", "y"):
        if key not in mat:
            raise DatasetFormatError(f"{path}: no variable '{key}'")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetFormatError(f"{path}: X has shape {x.shape}, expected (32, 32, 3, N)")
    if x.dtype != np.uint8:
        raise DatasetFormatError(f"{path}: X is {x.dtype}, expected uint8")
    y = y.reshape(-1)
    if y.size and not np.all(np.isfinite(y) & (y == np.round(y))):
        raise DatasetFormatError(f"{path}: y holds non-integer values")
    labels = y.astype(np.int64)
    if labels.shape[0] != x.shape[3]:
        raise DatasetFormatError(f"{path}: count mismatch: X holds {x.shape[3]} images but y holds {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise DatasetFormatError(f"{path}: label {int(labels[(labels < 0) | (labels > 10)][0])} out of range 1..10")
    labels[labels == 10] = 0  # SVHN stores digit 0 as label 10
    # MATLAB's (H, W, C, N) -> (N, C, H, W); the copy makes it contiguous for the normalisation.
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, labels


def read_svhn(data_dir: PathLike) -> Dataset:
    """SVHN cropped digits (``train_32x32.mat``, ``test_32x32.mat``) in ``data_dir``: 3x32x32, 10 classes.

    Needs scipy (the optional ``svhn`` extra)."""
    root = Path(data_dir).expanduser()
    _check_dir(root, "svhn", _SVHN_HINT)
    splits = {}
    for split in ("train", "test"):
        p = root / f"{split}_32x32.mat"
        if not p.is_file():
            raise DatasetFileError(f"svhn: missing file {p}. {_SVHN_HINT}")
        splits[split] = _load_svhn_mat(p)
    return Dataset(
        images_train=_pixels(splits["train"][0]),
        y_train=_labels_tensor(splits["train"][1]),
        images_test=_pixels(splits["test"][0]),
        y_test=_labels_tensor(splits["test"][1]),
        num_classes=10,
        name="svhn",
        source=str(root),
        **_constants("svhn"),
    )


# --------------------------------------------------------------------------------------------------
# synthetic


def make_synthetic(
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
    num_classes: int = 10,
    shape: Sequence[int] = (1, 28, 28),
    noise: float = 1.0,
) -> Dataset:
    """A tiny deterministic dataset with learnable class structure, for fast tests.

    Each class has a smooth random prototype image (a 7x7 grid of N(0, 1) values, each cell repeated
    over a block of pixels, so convolutions and pooling see spatial structure); a sample is its class
    prototype plus i.i.d. N(0, noise^2) pixel noise. Labels are balanced (``i % num_classes``) and
    shuffled. Randomness comes from ``numpy.random.SeedSequence(seed)`` spawned into three independent
    PCG64 streams (prototypes, train, test), so changing ``n_train`` changes neither the prototypes nor
    the test set. The values are already roughly zero-mean; no further normalisation is applied.
    """
    c, h, w = (int(s) for s in shape)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"synthetic: n_train and n_test must be >= 1, got {n_train} and {n_test}")
    if num_classes < 2:
        raise ValueError(f"synthetic: num_classes must be >= 2, got {num_classes}")
    if seed < 0:
        raise ValueError(f"synthetic: seed must be a non-negative integer, got {seed}")
    proto_ss, train_ss, test_ss = np.random.SeedSequence(int(seed)).spawn(3)

    grid = 7
    coarse = np.random.Generator(np.random.PCG64(proto_ss)).standard_normal((num_classes, c, grid, grid))
    rows = np.minimum(np.arange(h) * grid // h, grid - 1)
    cols = np.minimum(np.arange(w) * grid // w, grid - 1)
    prototypes = coarse[:, :, rows][:, :, :, cols].astype(np.float32)

    def draw(n: int, ss: np.random.SeedSequence) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.Generator(np.random.PCG64(ss))
        labels = (np.arange(n) % num_classes)[np.argsort(rng.random(n), kind="stable")]
        x = prototypes[labels] + np.float32(noise) * rng.standard_normal((n, c, h, w), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), _labels_tensor(labels)

    x_train, y_train = draw(int(n_train), train_ss)
    x_test, y_test = draw(int(n_test), test_ss)
    return Dataset(
        images_train=x_train,
        y_train=y_train,
        images_test=x_test,
        y_test=y_test,
        num_classes=int(num_classes),
        name="synthetic",
        source=f"synthetic(seed={seed}, n_train={n_train}, n_test={n_test})",
        mean=(0.0,) * c,
        std=(1.0,) * c,
    )


# --------------------------------------------------------------------------------------------------
# which files a reader reads


def source_files(name: str, data_dir: PathLike) -> list[Path] | None:
    """The files the reader of dataset `name` reads from `data_dir` (found as the reader finds them), or
    None when the directory or any of them is missing. Used to checksum what a prepared file is made from."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        return None
    if name in _TORCHVISION_NAMES:
        folder = _idx_folder(root, name)
        found = [_find_idx_file(folder, stem) for split in _IDX_FILES.values() for stem in split]
    elif name in _CIFAR_LAYOUT:
        subdir, train, test = _CIFAR_LAYOUT[name]
        folder = _cifar_folder(root, subdir, train[0])
        found = [p if p.is_file() else None for p in (folder / f for f in (*train, test))]
    elif name == "svhn":
        found = [p if p.is_file() else None for p in (root / f"{s}_32x32.mat" for s in ("train", "test"))]
    else:
        raise ValueError(f"no source files known for dataset {name!r}")
    return None if any(p is None for p in found) else [p for p in found if p is not None]
