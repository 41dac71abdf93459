"""Prepared dataset files: one HDF5 file holding a dataset already split over the clients.

With dozens of ranks per node, every rank parsing the same gzip/pickle/.mat files at start-up costs seconds
and gigabytes. `fedmrn-mpi data prepare` writes the dataset once, in the layout the ranks read:

    train/images   uint8 (M, C, H, W)  the clients' samples, client after client, each in partition order
    train/labels   int64 (M,)
    train/indices  int64 (M,)          each row's index in the original training split (the partition)
    train/offsets  int64 (K + 1,)      client k owns rows offsets[k]:offsets[k+1]
    test/images    uint8 (N, C, H, W)
    test/labels    int64 (N,)
    partition/label_counts  int64 (K, classes)

and attributes: the format and its version, `identity` (JSON: dataset and partition settings, partition
seed), the normalisation constants of both splits, `source_sha256` and `source_files` (JSON list of
[name, bytes, sha256] of the files it was made from). Image and label datasets carry HDF5's Fletcher-32
checksum, so a flipped bit is an error on read, not a silently different run.

A client's rows are one contiguous slice, so a rank reads exactly the clients it trains, when it trains them.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch

from .readers import Dataset, DatasetFileError, DatasetFormatError

__all__ = ["FORMAT", "FORMAT_VERSION", "PreparedData", "PreparedFileError", "write_prepared"]

FORMAT = "fedmrn_mpi prepared dataset"
FORMAT_VERSION = 1
_CHUNK_BYTES = 1 << 20  # about 1 MiB of images per HDF5 chunk: a client's slice spans one or a few chunks


class PreparedFileError(DatasetFormatError):
    """A prepared file that is unreadable, corrupt, or made for another dataset, partition or source."""


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...] | None:
    if shape[0] == 0:
        return None
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return (max(1, min(shape[0], _CHUNK_BYTES // row)),) + tuple(shape[1:])


def _put(f: h5py.File, name: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    chunks = _chunks(arr.shape, arr.dtype.itemsize)
    f.create_dataset(name, data=arr, chunks=chunks, fletcher32=chunks is not None)


def write_prepared(path: str | os.PathLike[str], data: Dataset, parts: Sequence[np.ndarray],
                   label_counts: np.ndarray, identity: Mapping[str, Any], source_files: list[list[Any]],
                   source_sha256: str, version: str) -> None:
    """Write `data` split by `parts` to `path` atomically (a temporary file renamed into place)."""
    path = os.fspath(path)
    order = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    order_t = torch.from_numpy(order)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["created_by"] = f"fedmrn_mpi {version}"
            f.attrs["identity"] = json.dumps(dict(identity), sort_keys=True)
            f.attrs["num_classes"] = data.num_classes
            f.attrs["source_sha256"] = source_sha256
            f.attrs["source_files"] = json.dumps(source_files)
            f.attrs["source_dir"] = data.source
            for key, value in normalization(data).items():
                f.attrs[key] = np.asarray(value, dtype=np.float64)
            _put(f, "train/images", data.images_train[order_t].numpy())
            _put(f, "train/labels", data.y_train[order_t].numpy())
            _put(f, "train/indices", order)
            f.create_dataset("train/offsets", data=offsets)
            _put(f, "test/images", data.images_test.numpy())
            _put(f, "test/labels", data.y_test.numpy())
            f.create_dataset("partition/label_counts", data=np.asarray(label_counts, dtype=np.int64))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def normalization(data: Dataset) -> dict[str, tuple[float, ...]]:
    """The per-split normalisation constants of `data`, under the prepared file's attribute names."""
    (train_mean, train_std), (test_mean, test_std) = data.normalization("train"), data.normalization("test")
    return {"train_mean": train_mean, "train_std": train_std, "test_mean": test_mean, "test_std": test_std}


def _open_read_only(path: str) -> h5py.File:
    """Read-only, without HDF5's file locks: many ranks open the file at once, on shared file systems where
    those locks may not work (h5py builds on an HDF5 too old for the option lock as usual)."""
    try:
        return h5py.File(path, "r", locking=False)
    except (TypeError, ValueError):
        return h5py.File(path, "r")


class PreparedData:
    """An open prepared file: its description is read at once, images only when asked for."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise DatasetFileError(f"data.prepared: no file {self.path}; write it with "
                                   f"`fedmrn-mpi data prepare -c CONFIG -o {self.path}`")
        try:
            self.f = _open_read_only(self.path)
        except OSError as exc:
            raise PreparedFileError(f"data.prepared: {self.path} is not a readable HDF5 file ({exc})") from exc
        try:
            a = self.f.attrs
            if a.get("format") != FORMAT:
                raise PreparedFileError(f"data.prepared: {self.path} is not a prepared dataset file "
                                        f"(format attribute {a.get('format')!r})")
            if int(a.get("format_version", -1)) != FORMAT_VERSION:
                raise PreparedFileError(f"data.prepared: {self.path} has format version "
                                        f"{a.get('format_version')}, this version reads {FORMAT_VERSION}; "
                                        "prepare it again")
            self.identity: dict[str, Any] = json.loads(a["identity"])
            self.num_classes = int(a["num_classes"])
            self.source_sha256 = str(a["source_sha256"])
            self.source_files = json.loads(a["source_files"])
            self.source_dir = str(a.get("source_dir", ""))
            self.constants = {k: tuple(float(v) for v in a[k])
                              for k in ("train_mean", "train_std", "test_mean", "test_std")}
            self.offsets = self._read("train/offsets").astype(np.int64)
            self.label_counts = self._read("partition/label_counts").astype(np.int64)
            self._check_layout()
        except PreparedFileError:
            self.f.close()
            raise
        except (KeyError, ValueError, TypeError, OSError) as exc:
            self.f.close()
            raise PreparedFileError(f"data.prepared: {self.path} is incomplete or corrupt ({exc}); "
                                    "prepare it again") from exc

    # -- description --------------------------------------------------------------------------------------

    @property
    def sizes(self) -> np.ndarray:
        """Samples per client."""
        return np.diff(self.offsets)

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_test(self) -> int:
        return int(self.f["test/labels"].shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.f["train/images"].shape[1:]
        return int(c), int(h), int(w)

    def _check_layout(self) -> None:
        n = self.f["train/images"].shape[0]
        for name in ("train/labels", "train/indices"):
            if self.f[name].shape != (n,):
                raise PreparedFileError(f"data.prepared: {self.path}: {name} has shape {self.f[name].shape}, "
                                        f"train/images has {n} rows")
        if self.f["test/labels"].shape != (self.f["test/images"].shape[0],):
            raise PreparedFileError(f"data.prepared: {self.path}: test/labels and test/images differ in length")
        off = self.offsets
        if off.ndim != 1 or off.size < 2 or off[0] != 0 or off[-1] != n or np.any(np.diff(off) < 0):
            raise PreparedFileError(f"data.prepared: {self.path}: train/offsets does not cut the {n} training "
                                    "rows into clients")
        if self.label_counts.shape != (self.num_clients, self.num_classes) or \
                not np.array_equal(self.label_counts.sum(1), self.sizes):
            raise PreparedFileError(f"data.prepared: {self.path}: partition/label_counts does not match "
                                    "train/offsets")

    def check(self, identity: Mapping[str, Any], constants: Mapping[str, Sequence[float]],
              source_sha256: str | None = None) -> None:
        """PreparedFileError naming every setting in which this file differs from what the run expects:
        the dataset and partition settings (`identity`), the normalisation constants, and (when the raw
        files were at hand to hash) the source files."""
        diffs = [f"{k}: file {self.identity.get(k)!r}, config {v!r}"
                 for k, v in identity.items() if self.identity.get(k) != v]
        diffs += [f"{k}: file {k} not in config" for k in self.identity if k not in identity]
        diffs += [f"normalisation {k}: file {self.constants[k]}, this version {tuple(v)}"
                  for k, v in constants.items() if not np.allclose(self.constants[k], v, rtol=0, atol=1e-12)]
        if source_sha256 is not None and source_sha256 != self.source_sha256:
            diffs.append(f"source files: the file was made from files with SHA-256 {self.source_sha256[:16]}…, "
                         f"the data directory holds {source_sha256[:16]}…")
        if diffs:
            raise PreparedFileError(f"data.prepared: {self.path} was prepared for other data than this run's: "
                                    + "; ".join(diffs) + ". Prepare it again for this config: fedmrn-mpi data "
                                    f"prepare -c CONFIG -o {self.path}")

    # -- reads --------------------------------------------------------------------------------------------

    def _read(self, name: str, sel: Any = ()) -> np.ndarray:
        try:
            return self.f[name][sel]
        except OSError as exc:  # Fletcher-32 mismatch, truncated file
            raise PreparedFileError(f"data.prepared: {self.path}: cannot read {name} ({exc}); the file is "
                                    "damaged: prepare it again") from exc

    def client(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client `k`'s images (uint8) and labels, in partition order."""
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        return (torch.from_numpy(self._read("train/images", np.s_[lo:hi])),
                torch.from_numpy(self._read("train/labels", np.s_[lo:hi]).astype(np.int64)))

    def test(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Test images (uint8) and labels, rows `start:stop`."""
        sel = np.s_[start:stop]
        return (torch.from_numpy(self._read("test/images", sel)),
                torch.from_numpy(self._read("test/labels", sel).astype(np.int64)))

    def check_labels(self) -> None:
        """Read every label once and check its range (for `data check`)."""
        for name in ("train/labels", "test/labels"):
            y = self._read(name)
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise PreparedFileError(f"data.prepared: {self.path}: {name} holds labels outside "
                                        f"0..{self.num_classes - 1}")

    def close(self) -> None:
        self.f.close()

