"""Reads a results file, finished or still being written (SWMR), into a `Run`."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from .schema import (ALGORITHM, CLIENTS, CONFIG_YAML, FINAL_MODEL_SHA256, FORMAT_1_0, FORMAT_1_0_DATASETS,
                     FORMAT_VERSION_ATTR, NUM_MASKED_PARAMS, NUM_UNMASKED_VALUES, PARTITION, PARTITION_LABEL_COUNTS,
                     PARTITION_SIZES, PHASE_SECONDS, PHASES, PHASES_ATTR, RANKS, ROUND, ROUND_FIELDS, ROUNDS,
                     TOTAL_SECONDS, UNKNOWN, UNVERSIONED, WORLD_SIZE, FormatVersion, parse_format_version,
                     version_problem, version_text)
from .writer import HDF5_SIGNATURE, completed_rows, open_for_reading


class ResultsFileError(Exception):
    """A results file that cannot be read; the message names the file."""


@dataclass
class Run:
    """One results file: identity, per-round series and derived summaries."""

    path: Path
    run_name: str | None
    algorithm: str
    mask: str | None
    world_size: int | None
    planned_rounds: int | None
    config_yaml: str
    finished: bool
    final_model_sha256: str | None
    total_seconds: float | None
    mtime: float
    rounds: np.ndarray
    test_accuracy: np.ndarray
    test_loss: np.ndarray
    train_loss: np.ndarray
    uplink_bytes: np.ndarray
    downlink_bytes: np.ndarray
    wall_seconds: np.ndarray
    phase_seconds: np.ndarray  # rounds x phases
    phases: list[str]
    client_uplink_bytes: np.ndarray | None  # rounds x clients_per_round: each upload message, header included
    clients_per_round: int | None
    num_values: int | None  # masked params + unmasked values: every value of the model state
    control_bytes: np.ndarray | None = None  # None where an unversioned file lacks it; NOT_RECORDED per missing row
    # the partition (int64): samples per client, and per client and class; None where the file lacks the dataset
    # or holds one of the wrong shape (label_counts also where its rows do not match sizes)
    partition_sizes: np.ndarray | None = None  # num_clients
    label_counts: np.ndarray | None = None     # num_clients x num_classes
    attrs: dict[str, Any] = field(default_factory=dict)
    format_version: FormatVersion = UNVERSIONED  # results/schema.py

    @property
    def name(self) -> str:
        """run_name from the config, else the file stem."""
        return self.run_name or self.path.stem

    @property
    def algorithm_label(self) -> str:
        """`fedmrn/binary`, `fedmrn/signed/post`, `fedavg`, `topk/0.01+ef`, `qsgd/3`, ..."""
        a = self._algorithm_config()
        if self.algorithm == "fedmrn":
            label = f"fedmrn/{self.mask}" if self.mask else "fedmrn"
            return label + (f"/{a['training']}" if a.get("training", "psm") != "psm" else "")
        label = self.algorithm
        if self.algorithm == "qsgd" and "levels" in a:
            label += f"/{a['levels']}"
        if self.algorithm == "topk" and "fraction" in a:
            label += f"/{a['fraction']:g}"
        if self.algorithm == "fedbat" and "rho" in a and a["rho"] != 6:  # 6: the default, as released
            label += f"/rho{a['rho']:g}"
        return label + ("+ef" if a.get("error_feedback") else "")

    def _algorithm_config(self) -> dict:
        a = self.config.get("algorithm")
        return a if isinstance(a, dict) else {}

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """config_yaml parsed as recorded (the full resolved config of the version that wrote the file; keys
        newer than that version are absent, not filled with today's defaults); {} if it is missing or unreadable.
        Parsed once per Run: do not modify it."""
        return _config(self.config_yaml)

    @property
    def precision(self) -> str:
        """The arithmetic of training and evaluation: "fp32" or "bf16" (files from before the key: fp32)."""
        p = self.config.get("precision", "fp32")
        return p if isinstance(p, str) else "fp32"

    @property
    def seed(self) -> int | None:
        """The config's `seed`, or None where the file records none."""
        s = self.config.get("seed")
        return s if isinstance(s, int) and not isinstance(s, bool) else None

    @property
    def rounds_done(self) -> int:
        return int(self.rounds.size)

    @property
    def last_round(self) -> int | None:
        return int(self.rounds[-1]) if self.rounds.size else None

    def setting(self, key: str) -> str:
        """Root attribute `key` as text ("unknown" if the file lacks it; list items joined with "+")."""
        if key not in self.attrs:
            return UNKNOWN
        v = self.attrs[key]
        if isinstance(v, np.ndarray) and v.ndim > 0:
            return "+".join(attr_text(x) for x in v.ravel())
        return attr_text(v.item() if isinstance(v, (np.generic, np.ndarray)) else v)

    def _evaluated(self) -> np.ndarray:
        return np.flatnonzero(np.isfinite(self.test_accuracy))

    @property
    def final_eval(self) -> tuple[int, float, float] | None:
        """(round, accuracy, loss) of the last evaluated round, or None."""
        idx = self._evaluated()
        if idx.size == 0:
            return None
        i = int(idx[-1])
        return int(self.rounds[i]), float(self.test_accuracy[i]), float(self.test_loss[i])

    @property
    def best_eval(self) -> tuple[int, float] | None:
        """(round, accuracy) of the best evaluated round, or None."""
        idx = self._evaluated()
        if idx.size == 0:
            return None
        i = int(idx[np.argmax(self.test_accuracy[idx])])
        return int(self.rounds[i]), float(self.test_accuracy[i])

    @property
    def total_uplink_bytes(self) -> int:
        return int(self.uplink_bytes.sum())

    @property
    def total_downlink_bytes(self) -> int:
        return int(self.downlink_bytes.sum())

    @property
    def mean_client_uplink_bytes(self) -> float | None:
        """Mean size of one client's upload message (header included) over all rounds done."""
        if self.client_uplink_bytes is not None and self.client_uplink_bytes.size:
            return float(self.client_uplink_bytes.mean())
        if self.rounds_done and self.clients_per_round:
            return float(self.uplink_bytes.sum()) / (self.rounds_done * self.clients_per_round)
        return None

    @property
    def uplink_bits_per_param(self) -> float | None:
        """8 x mean upload message per client per round (whole message, header included) / model values."""
        mean = self.mean_client_uplink_bytes
        if mean is None or not self.num_values:
            return None
        return 8.0 * mean / self.num_values

    @property
    def seconds_per_round(self) -> float | None:
        """Mean wall seconds per round."""
        w = self.wall_seconds[np.isfinite(self.wall_seconds)]
        return float(w.mean()) if w.size else None

    @property
    def mean_phase_seconds(self) -> np.ndarray | None:
        """Mean seconds per round of each phase (columns as `phases`)."""
        return self.phase_seconds.mean(axis=0) if self.phase_seconds.shape[0] else None


def attr_text(v: Any) -> str:
    """An HDF5 attribute value as text (bytes decoded as UTF-8)."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _attr_int(attrs: h5py.AttributeManager, key: str) -> int | None:
    return int(attrs[key]) if key in attrs else None


def _has_hdf5_signature(path: Path) -> bool:
    """True if the HDF5 signature is at offset 0, 512, 1024, 2048, ... (after an optional user block).

    Read directly rather than with h5py.is_hdf5, which opens the file and so can be refused by a writer's lock."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= size:
            fh.seek(offset)
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else 2 * offset
    return False


def _open(path: Path) -> h5py.File:
    """Open for reading, also while a job writes it or after it was killed (`writer.open_for_reading`)."""
    try:
        return open_for_reading(path)
    except OSError as exc:
        raise ResultsFileError(f"{path}: cannot open the HDF5 file: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read(ds: h5py.Dataset) -> np.ndarray:
    ds.refresh()  # a live SWMR file grows between reads; no-op on a finished one
    return ds[()]


def _config(text: str) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(text) if text else {}
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError):  # damaged text: read as no config
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _int_dataset(g: h5py.Group, name: str, ndim: int) -> np.ndarray | None:
    """Dataset `name` of `g` as int64, or None if it is missing, not `ndim`-dimensional or not integer."""
    ds = g.get(name)
    if not isinstance(ds, h5py.Dataset) or ds.ndim != ndim or ds.dtype.kind not in "iu":
        return None
    return np.asarray(ds[()], dtype=np.int64)


def _partition(f: h5py.File) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(samples per client, clients x classes label counts), each None where the file lacks it."""
    g = f.get(PARTITION)
    if not isinstance(g, h5py.Group):
        return None, None
    sizes = _int_dataset(g, PARTITION_SIZES, 1)
    counts = _int_dataset(g, PARTITION_LABEL_COUNTS, 2)
    if sizes is not None and counts is not None and counts.shape[0] != sizes.shape[0]:
        counts = None
    return sizes, counts


def _format_version(p: Path, f: h5py.File) -> FormatVersion:
    """The file's format version (schema.py); a newer major version, or a versioned file without a dataset its
    version has, is a ResultsFileError."""
    value = f.attrs.get(FORMAT_VERSION_ATTR)
    problem = version_problem(value)
    if problem:
        raise ResultsFileError(f"{p}: {problem}")
    version = parse_format_version(value)
    assert version is not None  # version_problem said it parses
    if version >= FORMAT_1_0:
        missing = [name for name in FORMAT_1_0_DATASETS if name not in f]
        if missing:
            raise ResultsFileError(f"{p}: damaged results file (format {version_text(version)} without "
                                   f"{', '.join(missing)})")
    return version


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read one results file (finished or still being written). Raises ResultsFileError naming the file."""
    try:
        return _load_run(path)
    except ResultsFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged metadata or data: h5py raises OSError, RuntimeError, KeyError...
        raise ResultsFileError(f"{path}: damaged results file ({_one_line(exc)})") from exc


def _load_run(path: str | os.PathLike[str]) -> Run:
    p = Path(path)
    if not p.exists():
        raise ResultsFileError(f"{p}: no such file")
    if p.is_dir():
        raise ResultsFileError(f"{p}: is a directory, not a results file")
    try:
        is_h5 = _has_hdf5_signature(p)
    except OSError as exc:
        raise ResultsFileError(f"{p}: cannot read: {exc}") from exc
    if not is_h5:
        raise ResultsFileError(f"{p}: not an HDF5 file")
    mtime = p.stat().st_mtime
    with _open(p) as f:
        if f"{ROUNDS}/{ROUND}" not in f:
            raise ResultsFileError(f"{p}: not a fedmrn_mpi results file (no {ROUNDS}/{ROUND} dataset)")
        attrs = {k: f.attrs[k] for k in f.attrs}
        version = _format_version(p, f)
        n = completed_rows(f)  # the rows the writer completed; a live file's datasets only grow past them
        g = f[ROUNDS]
        series = {k: _read(g[k])[:n] for k in ROUND_FIELDS if k in g}
        if PHASE_SECONDS in g:
            ph = _read(g[PHASE_SECONDS])[:n]
            phases = [attr_text(x) for x in g[PHASE_SECONDS].attrs.get(PHASES_ATTR, PHASES)]
        else:
            ph, phases = None, list(PHASES)
        cub_path = f"{CLIENTS}/uplink_bytes"
        cub = _read(f[cub_path])[:n] if cub_path in f else None
        world = _attr_int(f.attrs, WORLD_SIZE)
        if world is None and f"{RANKS}/{PHASE_SECONDS}" in f:
            world = int(f[f"{RANKS}/{PHASE_SECONDS}"].shape[1])
        partition_sizes, label_counts = _partition(f)

    def col(key: str) -> np.ndarray:
        dtype = ROUND_FIELDS[key]
        v = series.get(key)
        if v is None:  # an unversioned file without it (_format_version): NaN for measurements, 0 for counts
            return np.full(n, np.nan) if np.dtype(dtype).kind == "f" else np.zeros(n, dtype=dtype)
        return np.asarray(v, dtype=dtype)

    cfg_text = attr_text(attrs.get(CONFIG_YAML, ""))
    cfg = _config(cfg_text)
    alg_cfg = cfg.get("algorithm") if isinstance(cfg.get("algorithm"), dict) else {}
    algorithm = attr_text(attrs[ALGORITHM]) if ALGORITHM in attrs else str(alg_cfg.get("name", "?"))
    planned = cfg.get("rounds")
    masked, unmasked = attrs.get(NUM_MASKED_PARAMS), attrs.get(NUM_UNMASKED_VALUES)
    cpr = cub.shape[1] if cub is not None and cub.ndim == 2 else cfg.get("clients_per_round")
    digest = attr_text(attrs[FINAL_MODEL_SHA256]) if FINAL_MODEL_SHA256 in attrs else None
    return Run(
        path=p, run_name=str(cfg["run_name"]) if cfg.get("run_name") else None, algorithm=algorithm,
        mask=str(alg_cfg["mask"]) if alg_cfg.get("mask") else None, world_size=world,
        planned_rounds=int(planned) if isinstance(planned, int) else None, config_yaml=cfg_text,
        finished=digest is not None, final_model_sha256=digest,
        total_seconds=float(attrs[TOTAL_SECONDS]) if TOTAL_SECONDS in attrs else None, mtime=mtime,
        rounds=col("round"), test_accuracy=col("test_accuracy"), test_loss=col("test_loss"),
        train_loss=col("train_loss"), uplink_bytes=col("uplink_bytes"), downlink_bytes=col("downlink_bytes"),
        wall_seconds=col("wall_seconds"),
        phase_seconds=np.zeros((n, len(phases))) if ph is None else np.asarray(ph, dtype=np.float64),
        phases=phases, client_uplink_bytes=None if cub is None else np.asarray(cub, dtype=np.int64),
        clients_per_round=int(cpr) if isinstance(cpr, (int, np.integer)) else None,
        num_values=int(masked) + int(unmasked) if masked is not None and unmasked is not None else None,
        control_bytes=col("control_bytes") if "control_bytes" in series else None,
        partition_sizes=partition_sizes, label_counts=label_counts, attrs=attrs, format_version=version,
    )


def load_runs(paths: Sequence[str | os.PathLike[str]]) -> list[Run]:
    """Load every file; the first unreadable one raises ResultsFileError."""
    return [load_run(p) for p in paths]
