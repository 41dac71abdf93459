"""Data layer: on-disk dataset readers, a name registry, federated partitioners and batch augmentation."""

from . import augment
from .augment import AUGMENTATIONS, crop_flip, make_augment
from .partition import PARTITION_SCHEMES, classes, dirichlet, iid, partition, partition_stats
from .readers import (
    NORMALIZATION,
    SPLITS,
    Dataset,
    DatasetError,
    DatasetFileError,
    DatasetFormatError,
    make_synthetic,
    read_cifar10,
    read_cifar100,
    read_fashion_mnist,
    read_mnist,
    read_svhn,
)
from .registry import DATASETS, DEFAULT_DIRS, DatasetSpec, dataset_names, get_spec, load_dataset

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DEFAULT_DIRS",
    "NORMALIZATION",
    "PARTITION_SCHEMES",
    "SPLITS",
    "Dataset",
    "DatasetError",
    "DatasetFileError",
    "DatasetFormatError",
    "DatasetSpec",
    "augment",
    "classes",
    "crop_flip",
    "dataset_names",
    "dirichlet",
    "get_spec",
    "iid",
    "load_dataset",
    "make_augment",
    "make_synthetic",
    "partition",
    "partition_stats",
    "read_cifar10",
    "read_cifar100",
    "read_fashion_mnist",
    "read_mnist",
    "read_svhn",
]
