"""Writes the HDF5 results file (docs/design.md#results-file): rank 0 only, one row per round, flushed every round.

The file is in single-writer/multiple-reader mode while the run goes on, so `h5py.File(path, "r", swmr=True)`
can watch it. Final-model tensors and `final_model_sha256` are written when the run ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from .digest import state_sha256
from .schema import (CLIENT_FIELDS, CLIENT_ROW_PREFIX, CLIENTS, FINAL_MODEL_SHA256, MODEL, NOT_RECORDED,
                     PHASE_SECONDS, PHASES, PHASES_ATTR, RANK_FIELDS, RANK_PHASE_ROW, RANK_ROW_PREFIX, RANKS,
                     ROUND_FIELDS, ROUNDS, WORLD_SIZE, WORLD_SIZES)


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for k, v in attrs.items():
        if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
            v = np.array(v, dtype=h5py.string_dtype())
        obj.attrs[k] = v


def _round_dataset(g: h5py.Group, name: str, rows: int = 0) -> None:
    dt = ROUND_FIELDS[name]
    fill = np.nan if np.dtype(dt).kind == "f" else NOT_RECORDED
    g.create_dataset(name, shape=(rows,), maxshape=(None,), dtype=dt, chunks=(256,), fillvalue=fill)


def _rank_dataset(g: h5py.Group, name: str, rows: int, world_size: int) -> None:
    g.create_dataset(name, shape=(rows, world_size), maxshape=(None, None), dtype=RANK_FIELDS[name],
                     fillvalue=NOT_RECORDED, chunks=(64, world_size))


class ResultsWriter:
    """Creates the file, appends round rows, and finalises it with the model."""

    def __init__(self, path: str, attrs: Mapping[str, Any], clients_per_round: int, world_size: int,
                 static: Mapping[str, np.ndarray] | None = None) -> None:
        self.path = path
        self.f = h5py.File(path, "w", libver="latest")
        _set_attrs(self.f, attrs)
        for name, arr in (static or {}).items():  # fixed for the run (e.g. the partition)
            self.f.create_dataset(name, data=arr)
        g = self.f.create_group(ROUNDS)
        for name in ROUND_FIELDS:
            _round_dataset(g, name)
        ph = g.create_dataset(PHASE_SECONDS, shape=(0, len(PHASES)), maxshape=(None, len(PHASES)),
                              dtype=np.float64, chunks=(64, len(PHASES)))
        _set_attrs(ph, {PHASES_ATTR: list(PHASES)})
        c = self.f.create_group(CLIENTS)
        for name, dt in CLIENT_FIELDS.items():
            c.create_dataset(name, shape=(0, clients_per_round), maxshape=(None, clients_per_round),
                             dtype=dt, chunks=(64, clients_per_round))
        r = self.f.create_group(RANKS)
        rp = r.create_dataset(PHASE_SECONDS, shape=(0, world_size, len(PHASES)),
                              maxshape=(None, None, len(PHASES)), dtype=np.float64, fillvalue=np.nan,
                              chunks=(16, world_size, len(PHASES)))
        _set_attrs(rp, {PHASES_ATTR: list(PHASES)})
        for name in RANK_FIELDS:
            _rank_dataset(r, name, 0, world_size)
        self.f.swmr_mode = True
        self.rows = 0

    @classmethod
    def reopen(cls, path: str, rows: int, attrs: Mapping[str, Any], world_size: int) -> "ResultsWriter":
        """Continue an interrupted run's file: keep its first `rows` rounds, drop anything after them."""
        self = cls.__new__(cls)
        self.path = path
        self.f = h5py.File(path, "a", libver="latest")
        if FINAL_MODEL_SHA256 in self.f.attrs:  # extending a finished run with more rounds
            del self.f.attrs[FINAL_MODEL_SHA256]
        if MODEL in self.f:
            del self.f[MODEL]
        history = list(self.f.attrs.get(WORLD_SIZES, [int(self.f.attrs[WORLD_SIZE])]))
        _set_attrs(self.f, {**attrs, WORLD_SIZES: np.array(history + [world_size], dtype=np.int64)})
        for group in (ROUNDS, CLIENTS, RANKS):
            for ds in self.f[group].values():
                if ds.maxshape[0] is None:
                    ds.resize(rows, axis=0)
        for name in ROUND_FIELDS:  # a file from an older version: its rounds read as not recorded
            if name not in self.f[ROUNDS]:
                _round_dataset(self.f[ROUNDS], name, rows)
        for name in RANK_FIELDS:
            if name not in self.f[RANKS]:
                _rank_dataset(self.f[RANKS], name, rows, world_size)
        for ds in self.f[RANKS].values():
            if ds.shape[1] < world_size:
                ds.resize(world_size, axis=1)
        self.f.swmr_mode = True
        self.rows = rows
        return self

    def _append(self, ds: h5py.Dataset, value: Any) -> None:
        ds.resize(self.rows + 1, axis=0)
        ds[self.rows] = value

    def append_round(self, row: Mapping[str, Any]) -> None:
        """Append one round; `row` has every ROUND_FIELDS key, `phase_seconds`, `clients_<field>` for every
        CLIENT_FIELDS field, `rank_phase_seconds` (world_size x phases) and `rank_<field>` (world_size) for the
        RANK_FIELDS it has (the others stay NOT_RECORDED)."""
        for name in ROUND_FIELDS:
            self._append(self.f[ROUNDS][name], row[name])
        self._append(self.f[ROUNDS][PHASE_SECONDS], row[PHASE_SECONDS])
        for name in CLIENT_FIELDS:
            self._append(self.f[CLIENTS][name], row[CLIENT_ROW_PREFIX + name])
        per_rank = {PHASE_SECONDS: row[RANK_PHASE_ROW]}
        per_rank.update({name: row[RANK_ROW_PREFIX + name] for name in RANK_FIELDS if RANK_ROW_PREFIX + name in row})
        for name, value in per_rank.items():
            ds, table = self.f[RANKS][name], np.asarray(value)
            if table.shape[0] > ds.shape[1]:
                ds.resize(table.shape[0], axis=1)
            ds.resize(self.rows + 1, axis=0)
            ds[self.rows, : table.shape[0]] = table
        self.rows += 1
        self.f.flush()

    def finalize(self, state: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> str:
        """Close the SWMR session, then add the final model (float32 CPU arrays) and its digest. Returns the
        digest."""
        self.f.close()
        digest = state_sha256(state)
        with h5py.File(self.path, "a") as f:
            g = f.require_group(MODEL)
            for name in sorted(state):
                g.create_dataset(name, data=np.asarray(state[name], dtype="<f4"))
            _set_attrs(f, attrs)
            f.attrs[FINAL_MODEL_SHA256] = digest
        return digest

    def close(self) -> None:
        """Flush and close without finalising (a stopped or failed run)."""
        if self.f.id.valid:
            self.f.flush()
            self.f.close()
