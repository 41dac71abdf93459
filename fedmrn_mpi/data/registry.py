"""Dataset names -> readers, default directories and static facts (classes, input shape).

The static facts let models be built, and configs be checked, before any file is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .readers import (
    Dataset,
    make_synthetic,
    read_cifar10,
    read_cifar100,
    read_fashion_mnist,
    read_mnist,
    read_svhn,
    source_files,
)

__all__ = ["ALIASES", "DatasetSpec", "DATASETS", "DEFAULT_DIRS", "canonical_name", "dataset_names", "get_spec",
           "load_dataset", "source_files"]


@dataclass(frozen=True)
class DatasetSpec:
    """What the runner needs to know about a dataset without loading it."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    reader: Callable[..., Dataset]  # file datasets: reader(directory); others: reader(**options)
    default_dir: str | None  # None: the dataset needs no files (synthetic)
    options: tuple[str, ...] = field(default=())  # keyword options load_dataset passes on
    description: str = ""


#: Where each dataset is looked for when ``data.dir`` is not set. FashionMNIST's is where the Debian
#: package ``dataset-fashion-mnist`` installs it; the others are relative to the working directory.
DEFAULT_DIRS: dict[str, str] = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "data/mnist",
    "cifar10": "data/cifar10",
    "cifar100": "data/cifar100",
    "svhn": "data/svhn",
}

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("fashion_mnist", 10, (1, 28, 28), read_fashion_mnist, DEFAULT_DIRS["fashion_mnist"],
                    description="FashionMNIST idx files (Debian package dataset-fashion-mnist)"),
        DatasetSpec("mnist", 10, (1, 28, 28), read_mnist, DEFAULT_DIRS["mnist"],
                    description="MNIST idx files"),
        DatasetSpec("cifar10", 10, (3, 32, 32), read_cifar10, DEFAULT_DIRS["cifar10"],
                    description="CIFAR-10 python batches"),
        DatasetSpec("cifar100", 100, (3, 32, 32), read_cifar100, DEFAULT_DIRS["cifar100"],
                    description="CIFAR-100 python batches, fine labels"),
        DatasetSpec("svhn", 10, (3, 32, 32), read_svhn, DEFAULT_DIRS["svhn"],
                    description="SVHN cropped digits .mat files (needs scipy)"),
        DatasetSpec("synthetic", 10, (1, 28, 28), make_synthetic, None,
                    options=("n_train", "n_test", "seed"),
                    description="deterministic class-prototype images plus noise, for tests"),
    )
}


def dataset_names() -> list[str]:
    """The accepted dataset names, in registry order."""
    return list(DATASETS)


#: Other names people type for the datasets (after lower-casing, with "-", "_" and spaces dropped).
ALIASES: dict[str, str] = {
    "fmnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "svhncropped": "svhn",
}


def canonical_name(name: str) -> str | None:
    """The registry name of `name` or of one of its common spellings ("fmnist", "Fashion-MNIST", "cifar-10",
    "CIFAR_100"); None when it names no dataset."""
    text = str(name).strip().lower()
    if text in DATASETS:
        return text
    compact = "".join(ch for ch in text if ch not in "-_ ")
    by_compact = {n.replace("_", ""): n for n in DATASETS}
    return by_compact.get(compact) or ALIASES.get(compact)


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; ValueError listing the allowed names if unknown."""
    canonical = canonical_name(name)
    spec = DATASETS.get(canonical) if canonical else None
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(dataset_names())}")
    return spec


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> Dataset:
    """Load dataset ``name`` from ``data_dir`` (None or "" = its default directory).

    ``options`` go to readers that take them (synthetic: ``n_train``, ``n_test``, ``seed``); any other
    option is a ValueError, so a typo in a config does not pass silently.
    """
    spec = get_spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) if spec.options else "none"
        raise ValueError(f"dataset {spec.name!r} does not take option(s) {', '.join(unknown)}; allowed: {allowed}")
    if spec.default_dir is None:
        return spec.reader(**options)
    directory = os.fspath(data_dir) if data_dir not in (None, "") else spec.default_dir
    return spec.reader(os.path.expandvars(os.path.expanduser(directory)))
