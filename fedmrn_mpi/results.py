"""The HDF5 results file (DESIGN §3.4, §5): written by rank 0 only, one row per round, flushed every round.

The file is in single-writer/multiple-reader mode while the run goes on, so `h5py.File(path, "r", swmr=True)`
can watch it. Final-model tensors and `final_model_sha256` are written when the run ends.
"""

from __future__ import annotations

import hashlib
from typing import Any

import h5py
import numpy as np
import torch

PHASES = ("local_train", "encode", "gather", "decode_aggregate", "broadcast", "evaluate", "idle")

# name -> (dtype, trailing shape builder)
_ROUND_FIELDS = {
    "round": np.int64, "test_accuracy": np.float64, "test_loss": np.float64, "train_loss": np.float64,
    "uplink_bytes": np.int64, "downlink_bytes": np.int64, "wall_seconds": np.float64,
    "resync": np.int64, "digest_mismatches": np.int64,
}


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the state: tensors in name order, float32 little-endian bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes())
    return h.hexdigest()


def _set_attrs(obj: h5py.HLObject, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
            v = np.array(v, dtype=h5py.string_dtype())
        obj.attrs[k] = v


class ResultsWriter:
    """Creates the file, appends round rows, and finalises it with the model."""

    def __init__(self, path: str, attrs: dict[str, Any], clients_per_round: int, world_size: int,
                 static: dict[str, np.ndarray] | None = None) -> None:
        self.path = path
        self.f = h5py.File(path, "w", libver="latest")
        _set_attrs(self.f, attrs)
        for name, arr in (static or {}).items():  # fixed for the run (e.g. the partition)
            self.f.create_dataset(name, data=arr)
        g = self.f.create_group("rounds")
        for name, dt in _ROUND_FIELDS.items():
            g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(256,))
        ph = g.create_dataset("phase_seconds", shape=(0, len(PHASES)), maxshape=(None, len(PHASES)),
                              dtype=np.float64, chunks=(64, len(PHASES)))
        _set_attrs(ph, {"phases": list(PHASES)})
        c = self.f.create_group("clients")
        for name in ("sampled", "rank", "uplink_bytes"):
            c.create_dataset(name, shape=(0, clients_per_round), maxshape=(None, clients_per_round),
                             dtype=np.int64, chunks=(64, clients_per_round))
        c.create_dataset("train_loss", shape=(0, clients_per_round), maxshape=(None, clients_per_round),
                         dtype=np.float64, chunks=(64, clients_per_round))
        r = self.f.create_group("ranks")
        rp = r.create_dataset("phase_seconds", shape=(0, world_size, len(PHASES)),
                              maxshape=(None, None, len(PHASES)), dtype=np.float64, fillvalue=np.nan,
                              chunks=(16, world_size, len(PHASES)))
        _set_attrs(rp, {"phases": list(PHASES)})
        self.f.swmr_mode = True
        self.rows = 0

    @classmethod
    def reopen(cls, path: str, rows: int, attrs: dict[str, Any], world_size: int) -> "ResultsWriter":
        """Continue an interrupted run's file: keep its first `rows` rounds, drop anything after them."""
        self = cls.__new__(cls)
        self.path = path
        self.f = h5py.File(path, "a", libver="latest")
        if "final_model_sha256" in self.f.attrs:  # extending a finished run with more rounds
            del self.f.attrs["final_model_sha256"]
        if "model" in self.f:
            del self.f["model"]
        history = list(self.f.attrs.get("world_sizes", [int(self.f.attrs["world_size"])]))
        _set_attrs(self.f, {**attrs, "world_sizes": np.array(history + [world_size], dtype=np.int64)})
        for group in ("rounds", "clients", "ranks"):
            for ds in self.f[group].values():
                if ds.maxshape[0] is None:
                    ds.resize(rows, axis=0)
        rp = self.f["ranks/phase_seconds"]
        if rp.shape[1] < world_size:
            rp.resize(world_size, axis=1)
        self.f.swmr_mode = True
        self.rows = rows
        return self

    def written_rounds(self) -> int:
        return self.rows

    def _append(self, ds: h5py.Dataset, value: Any) -> None:
        ds.resize(self.rows + 1, axis=0)
        ds[self.rows] = value

    def append_round(self, row: dict[str, Any]) -> None:
        """Append one round; `row` has every field of rounds/, clients/ and ranks/phase_seconds."""
        for name in _ROUND_FIELDS:
            self._append(self.f["rounds"][name], row[name])
        self._append(self.f["rounds/phase_seconds"], row["phase_seconds"])
        for name in ("sampled", "rank", "uplink_bytes", "train_loss"):
            self._append(self.f["clients"][name], row["clients_" + name])
        rp = self.f["ranks/phase_seconds"]
        table = np.asarray(row["rank_phase_seconds"])
        if table.shape[0] > rp.shape[1]:
            rp.resize(table.shape[0], axis=1)
        rp.resize(self.rows + 1, axis=0)
        rp[self.rows, : table.shape[0]] = table
        self.rows += 1
        self.f.flush()

    def finalize(self, state: dict[str, torch.Tensor], attrs: dict[str, Any]) -> str:
        """Close the SWMR session, then add the final model and its digest. Returns the digest."""
        self.f.close()
        digest = state_sha256(state)
        with h5py.File(self.path, "a") as f:
            g = f.require_group("model")
            for name in sorted(state):
                g.create_dataset(name, data=state[name].detach().cpu().numpy().astype("<f4"))
            _set_attrs(f, attrs)
            f.attrs["final_model_sha256"] = digest
        return digest

    def close(self) -> None:
        if self.f.id.valid:
            self.f.flush()
            self.f.close()
