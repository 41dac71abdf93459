"""The data a rank holds for a run: from the raw files or from a prepared file, split over the clients.

Either way a rank ends up with the same tensors: client k's samples in partition order, the test set, and the
per-split normalisation, so a run from a prepared file gives the same results as one from the raw files.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import Config
from ..data.augment import make_augment, resolve
from ..data.partition import partition, partition_stats
from ..data.readers import NORMALIZATION, Dataset, normalize_images
from ..data.registry import get_spec, load_dataset, source_files
from ..rng.seeds import derive_seed

Batch = tuple[torch.Tensor, torch.Tensor]


def data_identity(cfg: Config) -> dict[str, Any]:
    """Everything that decides which samples each client holds (a prepared file records it and a run using
    the file must match it)."""
    d = cfg.data
    ident: dict[str, Any] = {"dataset": d.name, "partition": d.partition, "num_clients": cfg.num_clients,
                             "partition_seed": derive_seed(cfg.seed, "partition") & 0x7FFFFFFF}
    if d.partition == "dirichlet":
        ident["alpha"] = d.alpha
    if d.partition == "classes":
        ident["classes_per_client"] = d.classes_per_client
    if d.name == "synthetic":
        ident.update(synthetic_options(cfg))
    return ident


def synthetic_options(cfg: Config) -> dict[str, int]:
    return {"n_train": cfg.data.synthetic_train, "n_test": cfg.data.synthetic_test,
            "seed": derive_seed(cfg.seed, "synthetic-data") & 0x7FFFFFFF}


def expected_constants(name: str) -> dict[str, tuple[float, ...]]:
    """The normalisation constants this version uses for dataset `name` (none for synthetic data)."""
    ref = NORMALIZATION.get(name)
    if ref is None:
        return {"train_mean": (), "train_std": (), "test_mean": (), "test_std": ()}
    return {"train_mean": ref["train"][0], "train_std": ref["train"][1],
            "test_mean": ref["test"][0], "test_std": ref["test"][1]}


def load_raw(cfg: Config) -> Dataset:
    """The dataset from its raw files (or generated, for synthetic)."""
    opts = synthetic_options(cfg) if cfg.data.name == "synthetic" else {}
    return load_dataset(cfg.data.name, cfg.data.dir, **opts)


def split(cfg: Config, data: Dataset) -> list[np.ndarray]:
    """The partition of `data`'s training split over the clients."""
    return partition(data.y_train.numpy(), cfg.data.partition, cfg.num_clients,
                     derive_seed(cfg.seed, "partition") & 0x7FFFFFFF, cfg.data.alpha, cfg.data.classes_per_client)


def raw_files(cfg: Config) -> list[Path] | None:
    """The raw source files of the config's dataset, or None when they are not where the config points."""
    spec = get_spec(cfg.data.name)
    if spec.default_dir is None:
        return []
    directory = cfg.data.dir or spec.default_dir
    return source_files(spec.name, os.path.expandvars(os.path.expanduser(directory)))


def source_checksum(cfg: Config, files: list[Path]) -> tuple[list[list[Any]], str]:
    """([name, bytes, sha256] per source file, one SHA-256 over them all) — what a prepared file was made
    from. Synthetic data has no files: its checksum covers its generator settings."""
    listing = []
    for p in files:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(functools.partial(fh.read, 1 << 22), b""):
                h.update(block)
        listing.append([p.name, p.stat().st_size, h.hexdigest()])
    total = hashlib.sha256()
    for name, size, digest in sorted(listing):
        total.update(f"{name}\0{size}\0{digest}\n".encode())
    if not files:
        total.update(repr(sorted(data_identity(cfg).items())).encode())
    return listing, total.hexdigest()


@dataclass
class RunData:
    """What one rank keeps of the data."""

    num_classes: int
    input_shape: tuple[int, int, int]
    sizes: np.ndarray                                  # samples per client
    label_counts: np.ndarray                           # clients x classes
    train_transform: Callable[[torch.Tensor], torch.Tensor]
    test_transform: Callable[[torch.Tensor], torch.Tensor]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None
    client: Callable[[int], Batch] | None              # client k's samples on the device (client ranks)
    test: Callable[[int, int], Batch]                  # test rows [first, last) on the device (every rank)
    num_test: int
    source: str                                        # where the data came from, for the log


def open_run_data(cfg: Config, device: torch.device, need_train: bool, check_source: bool = False) -> RunData:
    """This rank's data: every client's samples when it trains clients, and the test set (every rank evaluates
    a share of it).

    With `data.prepared` only slices are read, when they are used (a client's when it trains, the test rows
    a rank evaluates); otherwise the raw files are parsed and split here. `check_source`: hash the raw files,
    when present, and refuse a prepared file made from other ones (one rank does it)."""
    augment = make_augment(resolve(cfg.data.augment, cfg.data.name))
    if cfg.data.prepared:
        return _from_prepared(cfg, device, need_train, check_source, augment)
    data = load_raw(cfg)
    parts = split(cfg, data)
    x_test, y_test = data.images_test.to(device), data.y_test.to(device)
    client = None
    if need_train:
        x, y = data.images_train.to(device), data.y_train.to(device)
        index = [torch.from_numpy(p).to(device) for p in parts]
        client = lambda k: (x[index[k]], y[index[k]])  # noqa: E731
    (mean, std), (test_mean, test_std) = data.normalization("train"), data.normalization("test")
    return RunData(num_classes=data.num_classes, input_shape=data.input_shape,
                   sizes=np.array([len(p) for p in parts], dtype=np.int64),
                   label_counts=partition_stats(parts, data.y_train.numpy(), data.num_classes),
                   train_transform=functools.partial(normalize_images, mean=mean, std=std),
                   test_transform=functools.partial(normalize_images, mean=test_mean, std=test_std),
                   augment=augment, client=client, test=lambda a, b: (x_test[a:b], y_test[a:b]),
                   num_test=data.num_test, source=data.source)


def _from_prepared(cfg: Config, device: torch.device, need_train: bool, check_source: bool,
                   augment: Any) -> RunData:
    from ..data.prepared import PreparedData  # h5py only where a prepared file is read
    pd = PreparedData(cfg.data.prepared)
    digest = None
    if check_source:
        files = raw_files(cfg)
        if files:
            digest = source_checksum(cfg, files)[1]
    pd.check(data_identity(cfg), expected_constants(cfg.data.name), digest)
    c = pd.constants

    def client(k: int) -> Batch:
        x, y = pd.client(k)
        return x.to(device), y.to(device)

    def test(first: int, last: int) -> Batch:
        x, y = pd.test(first, last)
        return x.to(device), y.to(device)

    return RunData(num_classes=pd.num_classes, input_shape=pd.input_shape, sizes=pd.sizes,
                   label_counts=pd.label_counts,
                   train_transform=functools.partial(normalize_images, mean=c["train_mean"], std=c["train_std"]),
                   test_transform=functools.partial(normalize_images, mean=c["test_mean"], std=c["test_std"]),
                   augment=augment, client=client if need_train else None, test=test,
                   num_test=pd.num_test, source=f"{pd.path} (prepared{', sources checked' if digest else ''})")
