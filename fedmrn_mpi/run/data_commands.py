"""`fedmrn-mpi data prepare` and `fedmrn-mpi data check`: the dataset of a config, without training.

    fedmrn-mpi data prepare -c CONFIG [-o DATA.h5] [key=value ...]   one HDF5 file the ranks read slices of
    fedmrn-mpi data check   -c CONFIG [key=value ...]                 files, shapes, counts, labels, partition
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .. import __version__
from ..config import Config, ConfigError, load_config
from ..data.partition import partition_stats
from ..data.prepared import PreparedData, write_prepared
from ..data.readers import DatasetError
from ..results.partition_summary import summarize_partition
from .dataset import data_identity, expected_constants, load_raw, raw_files, source_checksum, split

EXIT_DATA = 1
EXIT_CONFIG = 2
_MAX_CLASS_COLUMNS = 20  # wider label spaces show each client's largest classes instead of every count


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedmrn-mpi data", description="Prepare or check a config's dataset.")
    sub = p.add_subparsers(dest="action", required=True)
    for name, text in (("prepare", "write the dataset, split over the clients, to one HDF5 file"),
                       ("check", "verify the data files and print the partition's statistics")):
        a = sub.add_parser(name, help=text)
        a.add_argument("-c", "--config", help="YAML config (default: the built-in main job)")
        if name == "prepare":
            a.add_argument("-o", "--output", help="prepared file (default: <results_dir>/<run_name>.data.h5)")
        a.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config keys")
    return p


def main_data(argv: list[str]) -> int:
    """Entry point of `fedmrn-mpi data ...`; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"fedmrn-mpi: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.action == "prepare":
            return prepare(cfg, args.output or os.path.join(cfg.results_dir, f"{cfg.run_name}.data.h5"))
        return check(cfg)
    except (DatasetError, ValueError) as exc:  # readers and partitioners name the file or the setting
        print(f"fedmrn-mpi: data {args.action} failed: {exc}", file=sys.stderr)
        return EXIT_DATA
    except BrokenPipeError:  # `data check ... | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def prepare(cfg: Config, out: str) -> int:
    """Read the raw files once, split them, and write the prepared file."""
    t0 = time.perf_counter()
    data = load_raw(cfg)
    parts = split(cfg, data)
    counts = partition_stats(parts, data.y_train.numpy(), data.num_classes)
    listing, digest = source_checksum(cfg, raw_files(cfg) or [])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_prepared(out, data, parts, counts, data_identity(cfg), listing, digest, __version__)
    size = os.path.getsize(out)
    print(f"wrote {out}: {data.name} from {data.source}, {sum(len(p) for p in parts)} training samples over "
          f"{len(parts)} clients ({cfg.data.partition}), {data.num_test} test samples, {size / 2**20:.1f} MiB, "
          f"sources {digest[:16]}…, in {time.perf_counter() - t0:.1f} s")
    print(f"use it with: data.prepared={out} (or `prepared: {out}` under `data:` in the config)")
    return 0


def check(cfg: Config) -> int:
    """Verify the dataset (raw files, or the prepared file when the config names one) and print its
    partition; a problem is one line naming the file and what is wrong."""
    if cfg.data.prepared:
        pd = PreparedData(cfg.data.prepared)
        try:
            files = raw_files(cfg)
            digest = source_checksum(cfg, files)[1] if files else None
            pd.check(data_identity(cfg), expected_constants(cfg.data.name), digest)
            pd.check_labels()
            print(f"{cfg.data.name}: prepared file {pd.path} ({os.path.getsize(pd.path) / 2**20:.1f} MiB) matches "
                  f"this config; made from {pd.source_dir} (sources {pd.source_sha256[:16]}…, "
                  f"{'checked against the raw files' if digest else 'raw files not present, not re-hashed'})")
            print(f"  train {int(pd.offsets[-1])} samples in clients, test {pd.f['test/labels'].shape[0]} samples, "
                  f"images {pd.input_shape}, {pd.num_classes} classes, labels in range")
            print_partition(pd.sizes, pd.label_counts)
        finally:
            pd.close()
        return 0
    data = load_raw(cfg)
    files = raw_files(cfg) or []
    print(f"{data.name}: {data.source}")
    for p in files:
        print(f"  {p.name:<32} {p.stat().st_size:>12,d} bytes")
    for split_name, y in (("train", data.y_train.numpy()), ("test", data.y_test.numpy())):
        hist = np.bincount(y, minlength=data.num_classes)
        print(f"  {split_name:<5} {y.size:>6} samples, images {data.input_shape} uint8, labels "
              f"{int(y.min())}..{int(y.max())} of {data.num_classes} classes (per class {hist.min()}..{hist.max()})")
    parts = split(cfg, data)
    print_partition(np.array([len(p) for p in parts]), partition_stats(parts, data.y_train.numpy(),
                                                                       data.num_classes))
    return 0


def print_partition(sizes: np.ndarray, counts: np.ndarray) -> None:
    """One summary line, then one row per client: size, number of classes, and its label counts."""
    s = summarize_partition(sizes, counts)
    print(f"partition: {s.clients} clients, samples per client min {s.min_size} / median {s.median_size:g} / "
          f"max {s.max_size}, {s.mean_classes_per_client:.2f} classes per client on average")
    k = counts.shape[1]
    if k <= _MAX_CLASS_COLUMNS:
        print(f"{'client':>6} {'samples':>7} {'classes':>7}  " + " ".join(f"{c:>5}" for c in range(k)))
        for i, (n, row) in enumerate(zip(sizes, counts)):
            print(f"{i:>6} {n:>7} {int((row > 0).sum()):>7}  " + " ".join(f"{v:>5}" for v in row))
        return
    print(f"{'client':>6} {'samples':>7} {'classes':>7}  largest classes (class:count)")
    for i, (n, row) in enumerate(zip(sizes, counts)):
        top = np.argsort(-row, kind="stable")[:5]
        print(f"{i:>6} {n:>7} {int((row > 0).sum()):>7}  " + " ".join(f"{c}:{row[c]}" for c in top if row[c]))
