"""Writes the HDF5 results file (docs/design.md#results-file): rank 0 only, one row per round, flushed every round.

The file is in single-writer/multiple-reader mode while the run goes on, so `h5py.File(path, "r", swmr=True)`
can watch it. Final-model tensors and `final_model_sha256` are written when the run ends.

A killed writer or a failed write (full disk) leaves a file that still reads back with every complete round:
- Under its own name the file only ever exists closed, or open in SWMR-write mode. HDF5 keeps a SWMR file
  consistent for SWMR readers at every flush, also when the writer is SIGKILLed; such a file then refuses a
  plain or an append open ("file is already open for write", which only h5clear clears), but opens for SWMR
  reading. So every step that changes the file's structure runs on a temp copy that is renamed over it:
  creating it, reopening it for --resume, adding the final model; the file is opened directly in SWMR-write mode.
- Complete rounds: a row goes into the per-round datasets one after another, and HDF5 may write any part of
  an unflushed row to disk (cache evictions, a flush that fails half-way), so after a kill or a failed write the
  datasets may differ in length, or one may be longer than its data. The root attribute `rounds_written`
  (ROWS_WRITTEN) counts complete rows: it is set only after the row's flush returned, then flushed itself.
  `completed_rows` = min(`rounds_written`, the length of every rounds/ and clients/ dataset); an unversioned
  file may lack the attribute and counts the shortest of those datasets (ranks/ ones are left out: a row may
  lack the optional RANK_FIELDS, whose datasets then stay shorter). The reader, `status`, `report` and --resume
  all use it.
- `reopen` (--resume) rebuilds the file from the first `rows` rows as a SWMR reader sees them, so the file of a
  killed writer continues too, and whatever a killed or failed write left after those rows is dropped.
- A write that fails raises `WriteError` naming the file (one line); the temp file of a failed step is removed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import h5py
import numpy as np

from .digest import state_sha256
from .errors import WriteError, describe_write_failure, fsync_path
from .schema import (CLIENT_FIELDS, CLIENTS, FINAL_MODEL_SHA256, FORMAT_VERSION, FORMAT_VERSION_ATTR, MODEL,
                     NOT_RECORDED, PER_ROUND_GROUPS, PHASE_SECONDS, PHASES, PHASES_ATTR, RANK_FIELDS, RANKS,
                     ROUND_FIELDS, ROUNDS, ROWS_WRITTEN, WORLD_SIZE, WORLD_SIZES, RoundRow, version_text)
from .text import safe_text


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """Write attributes; every string, alone or in a list, is cleaned by `safe_text` first (results/text.py)."""
    for k, v in attrs.items():
        if isinstance(v, (str, bytes)):
            v = safe_text(v)
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, bytes)) for x in v):
            v = np.array([safe_text(x) for x in v], dtype=h5py.string_dtype())
        obj.attrs[k] = v


def _round_dataset(g: h5py.Group, name: str, rows: int = 0) -> None:
    dt = ROUND_FIELDS[name]
    fill = np.nan if np.dtype(dt).kind == "f" else NOT_RECORDED
    g.create_dataset(name, shape=(rows,), maxshape=(None,), dtype=dt, chunks=(256,), fillvalue=fill)


def _rank_dataset(g: h5py.Group, name: str, rows: int, world_size: int) -> None:
    g.create_dataset(name, shape=(rows, world_size), maxshape=(None, None), dtype=RANK_FIELDS[name],
                     fillvalue=NOT_RECORDED, chunks=(64, world_size))


def _client_dataset(g: h5py.Group, name: str, rows: int, clients_per_round: int) -> None:
    dt = CLIENT_FIELDS[name]
    fill = np.nan if np.dtype(dt).kind == "f" else NOT_RECORDED
    g.create_dataset(name, shape=(rows, clients_per_round), maxshape=(None, clients_per_round), dtype=dt,
                     chunks=(64, clients_per_round), fillvalue=fill)


def completed_rows(f: h5py.File) -> int:
    """Rounds complete in an open results file: the shortest per-round dataset, capped by `rounds_written` where
    the file has it (module docstring)."""
    lengths = [ds.shape[0] for group in (ROUNDS, CLIENTS) if isinstance(f.get(group), h5py.Group)
               for ds in f[group].values() if _per_round(ds)]
    n = min(lengths, default=0)
    return min(n, int(f.attrs[ROWS_WRITTEN])) if ROWS_WRITTEN in f.attrs else n


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_OPEN_RETRIES, _OPEN_RETRY_SLEEP = 10, 0.2


def flagged_open_for_writing(path: str | os.PathLike[str]) -> bool:
    """Whether the superblock (version 2 or 3, at offset 0) says a writer has the file open, or had it when it
    was killed: its file consistency flags (byte 11) have the write or SWMR-write bit."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    return len(head) == 12 and head[:8] == HDF5_SIGNATURE and head[8] >= 2 and bool(head[11] & 0b101)


def open_for_reading(path: str | os.PathLike[str]) -> h5py.File:
    """Read-only, also while a job writes it, or after it was killed (OSError if it cannot be opened).

    A file no job holds opens normally: HDF5 then checks it (a truncated file is refused at once), whereas a SWMR
    reader retries every damaged metadata read with growing sleeps, for minutes. A file open for SWMR writing
    (a running job, or one that was killed) refuses normal readers and is read with SWMR. When the writer
    finalises a step on a temp copy and renames it, HDF5's file lock may refuse readers for a moment, so retry
    briefly before giving up."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        last: OSError = exc
        text = str(exc).lower()
        # a writer killed in the middle of a write may leave the file shorter than its superblock says
        held = re.search(r"already open for write|unable to lock|lock file", text) or (
            "truncated file" in text and flagged_open_for_writing(path))
        if not held:
            raise
    for _ in range(_OPEN_RETRIES):
        try:
            return h5py.File(path, "r", swmr=True)
        except OSError as exc:
            last = exc
            if "lock" not in str(exc).lower():
                break
            time.sleep(_OPEN_RETRY_SLEEP)
    raise last


def _per_round(obj: Any) -> bool:
    return isinstance(obj, h5py.Dataset) and bool(obj.maxshape) and obj.maxshape[0] is None


def _open_swmr_write(path: str) -> h5py.File:
    """Open an existing file for appending directly in SWMR-write mode: on disk it is never flagged as open for a
    plain write (which no reader could open after a kill)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE, fapl=fapl))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _build(path: str, what: str, fill: Callable[[h5py.File], None], copy: bool = False) -> None:
    """Write `path` through a temp file beside it: a new file (or, `copy`, a copy of `path`) is `fill`ed, closed,
    fsynced and renamed over `path`. A failure removes the temp file and raises WriteError; `path` is untouched."""
    for stale in glob.glob(glob.escape(path) + ".tmp*"):  # left by a writer killed while building
        _remove(stale)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        if copy:
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a", libver=None) if copy else h5py.File(tmp, "w", libver="latest") as f:
            fill(f)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(os.path.dirname(os.path.abspath(path)))
    except (OSError, RuntimeError) as exc:
        _remove(tmp)
        raise WriteError(f"cannot write the results file {path} ({what}): {describe_write_failure(exc)}") from exc
    except BaseException:
        _remove(tmp)
        raise


def _copy_attrs(src: h5py.HLObject, dst: h5py.HLObject, skip: tuple[str, ...] = ()) -> None:
    for key in src.attrs:
        if key not in skip:
            dst.attrs.create(key, src.attrs[key], dtype=src.attrs.get_id(key).dtype)


def _copy_rows(src: h5py.Dataset, dst: h5py.Group, name: str, rows: int) -> None:
    """`src` as `dst/name`, same layout and attributes; a per-round dataset gets exactly `rows` rows: its first
    ones, then the fill value (NOT_RECORDED) where it had fewer (a row without an optional field)."""
    per_round = _per_round(src)
    data = src[:rows] if per_round else src[()]
    shape = (rows, *data.shape[1:]) if per_round else data.shape
    out = dst.create_dataset(name, shape=shape, maxshape=src.maxshape, dtype=src.dtype, chunks=src.chunks,
                             fillvalue=src.fillvalue, compression=src.compression,
                             compression_opts=src.compression_opts)
    if per_round and len(data):
        out[: len(data)] = data
    elif not per_round and data.size:
        out[...] = data
    _copy_attrs(src, out)


class ResultsWriter:
    """Creates the file, appends round rows, and finalises it with the model.

    `fault` (tests only, set by the run layer): called as fault(point, round) with point "row" before a row's
    first write and "mid-row" after the rounds/ datasets got it, before clients/, ranks/ and the flush."""

    def __init__(self, path: str, attrs: Mapping[str, Any], clients_per_round: int, world_size: int,
                 static: Mapping[str, np.ndarray] | None = None) -> None:
        self.path, self.rows = path, 0
        self.fault: Callable[[str, int], None] | None = None

        def fill(f: h5py.File) -> None:
            _set_attrs(f, {**attrs, FORMAT_VERSION_ATTR: version_text(FORMAT_VERSION)})
            f.attrs[ROWS_WRITTEN] = np.int64(0)
            for name, arr in (static or {}).items():  # fixed for the run (e.g. the partition)
                f.create_dataset(name, data=arr)
            g = f.create_group(ROUNDS)
            for name in ROUND_FIELDS:
                _round_dataset(g, name)
            ph = g.create_dataset(PHASE_SECONDS, shape=(0, len(PHASES)), maxshape=(None, len(PHASES)),
                                  dtype=np.float64, chunks=(64, len(PHASES)))
            _set_attrs(ph, {PHASES_ATTR: list(PHASES)})
            c = f.create_group(CLIENTS)
            for name in CLIENT_FIELDS:
                _client_dataset(c, name, 0, clients_per_round)
            r = f.create_group(RANKS)
            rp = r.create_dataset(PHASE_SECONDS, shape=(0, world_size, len(PHASES)),
                                  maxshape=(None, None, len(PHASES)), dtype=np.float64, fillvalue=np.nan,
                                  chunks=(16, world_size, len(PHASES)))
            _set_attrs(rp, {PHASES_ATTR: list(PHASES)})
            for name in RANK_FIELDS:
                _rank_dataset(r, name, 0, world_size)

        _build(path, "creating it", fill)
        self.f = _open_swmr_write(path)
        self._open: dict[str, h5py.Dataset] = {}

    @classmethod
    def reopen(cls, path: str, rows: int, attrs: Mapping[str, Any], world_size: int) -> "ResultsWriter":
        """Continue an interrupted run's file: keep its first `rows` rounds, drop anything after them (and a
        finished run's model). The file is rebuilt from what a SWMR reader sees, so that the file of a killed
        writer (which HDF5 refuses to open for appending) continues too. It keeps its format_version (none for
        an unversioned file, which may still lack the partition): the version says what every row holds.
        Raises ValueError if the file holds fewer than `rows` complete rounds."""
        with open_for_reading(path) as src:
            have = completed_rows(src)
            if have < rows:
                raise ValueError(f"{path}: holds {have} complete rounds, {rows} needed to continue")

            def fill(f: h5py.File) -> None:
                _copy_attrs(src, f, skip=(FINAL_MODEL_SHA256,))  # a finished run extended with more rounds
                history = list(src.attrs.get(WORLD_SIZES, [int(src.attrs[WORLD_SIZE])]))
                _set_attrs(f, {**attrs, WORLD_SIZES: np.array(history + [world_size], dtype=np.int64)})
                f.attrs[ROWS_WRITTEN] = np.int64(rows)
                for name, obj in src.items():
                    if name == MODEL:
                        continue
                    if name in PER_ROUND_GROUPS and isinstance(obj, h5py.Group):
                        g = f.create_group(name)
                        _copy_attrs(obj, g)
                        for key, ds in obj.items():
                            _copy_rows(ds, g, key, rows)
                    else:
                        src.copy(obj, f, name)
                for name in ROUND_FIELDS:  # an unversioned file: its rounds read as not recorded
                    if name not in f[ROUNDS]:
                        _round_dataset(f[ROUNDS], name, rows)
                per_round = f[CLIENTS]["sampled"].shape[1]
                for name in CLIENT_FIELDS:
                    if name not in f[CLIENTS]:
                        _client_dataset(f[CLIENTS], name, rows, per_round)
                for name in RANK_FIELDS:
                    if name not in f[RANKS]:
                        _rank_dataset(f[RANKS], name, rows, world_size)
                for ds in f[RANKS].values():
                    if ds.shape[1] < world_size:
                        ds.resize(world_size, axis=1)

            _build(path, f"keeping its first {rows} rounds", fill)
        self = cls.__new__(cls)
        self.path, self.rows, self.fault = path, rows, None
        self.f = _open_swmr_write(path)
        self._open = {}
        return self

    def _dataset(self, group: str, name: str) -> h5py.Dataset:
        """The dataset, kept open while the file is: HDF5 writes a dataset's cached chunks when it is flushed or
        closed, and a write failing in h5py's close of a dropped Dataset object could not be caught here."""
        key = f"{group}/{name}"
        if key not in self._open:
            self._open[key] = self.f[key]
        return self._open[key]

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """HDF5 failures (h5py raises OSError or RuntimeError) as one-line WriteErrors naming the file."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            raise WriteError(f"cannot write {what} to the results file {self.path}: "
                             f"{describe_write_failure(exc)}") from exc

    def _append(self, ds: h5py.Dataset, value: Any) -> None:
        ds.resize(self.rows + 1, axis=0)
        ds[self.rows] = value

    def append_round(self, row: RoundRow) -> None:
        """Append one round (RANK_FIELDS the row lacks stay NOT_RECORDED). The row counts as written
        (`rounds_written`) once it is flushed; a failure raises WriteError."""
        what = f"round {row.round}"
        if self.fault is not None:
            self.fault("row", row.round)
        with self._writing(what):
            for name in ROUND_FIELDS:
                self._append(self._dataset(ROUNDS, name), getattr(row, name))
            self._append(self._dataset(ROUNDS, PHASE_SECONDS), row.phase_seconds)
        if self.fault is not None:
            self.fault("mid-row", row.round)
        with self._writing(what):
            for name in CLIENT_FIELDS:
                self._append(self._dataset(CLIENTS, name), getattr(row.clients, name))
            for name in (PHASE_SECONDS, *RANK_FIELDS):
                value = getattr(row.ranks, name)
                if value is None:  # not recorded
                    continue
                ds, table = self._dataset(RANKS, name), np.asarray(value)
                if table.shape[0] > ds.shape[1]:
                    ds.resize(table.shape[0], axis=1)
                ds.resize(self.rows + 1, axis=0)
                ds[self.rows, : table.shape[0]] = table
            self.f.flush()  # the whole row is on disk ...
            self.f.attrs.modify(ROWS_WRITTEN, np.int64(self.rows + 1))
            self.f.flush()  # ... before it counts
        self.rows += 1

    def finalize(self, state: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> str:
        """Close the SWMR session, then add the final model (float32 CPU arrays) and its digest, on a copy renamed
        over the file (a failure leaves it as it was: every round, not finished). Returns the digest."""
        with self._writing("the last rows"):
            self.f.flush()
            self._open.clear()
            self.f.close()
        digest = state_sha256(state)

        def fill(f: h5py.File) -> None:
            g = f.require_group(MODEL)
            for name in sorted(state):
                g.create_dataset(name, data=np.asarray(state[name], dtype="<f4"))
            _set_attrs(f, attrs)
            f.attrs[FINAL_MODEL_SHA256] = digest

        _build(self.path, "the final model", fill, copy=True)
        return digest

    def close(self) -> None:
        """Flush and close without finalising (a stopped or failed run)."""
        if self.f.id.valid:
            with self._writing("the last rows"):
                self.f.flush()
                self._open.clear()
                self.f.close()
