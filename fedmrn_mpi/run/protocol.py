"""The two fixed-layout records of a round, each with its pack and unpack side by side (docs/design.md,
"Round protocol").

`ControlBlock`: rank 0 -> every rank at the start of a round, one broadcast of int64 values:

    [0] round    [1] flags (STOP 1, FULL_STATE 2, DONE 4)    [2 : 2 + P + 1] evaluation block boundaries

  (P = world size; rank r evaluates test blocks [bounds[r], bounds[r + 1]); all zero when nothing is evaluated).

`RankReport`: every rank -> rank 0 at the end of a round, one gathered row of float64 values:

    [0 : F] phase seconds (results.PHASES, F = 7)    [F : F + C] bytes sent per channel    [F + C : F + 2C] bytes
    received per channel (comm CHANNELS, C = 4)    [F + 2C] stop requested (0/1)    [F + 2C + 1 :] evaluation
    scores (this rank's block sums, Shard.row_size() values; empty when nothing is evaluated)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..comm.transport import CHANNELS
from ..results import PHASES

STOP, FULL_STATE, DONE = 1, 2, 4
_HEAD = 2  # round, flags


@dataclass(frozen=True)
class ControlBlock:
    """What rank 0 tells every rank before a round (or instead of one: `finished`)."""

    round: int
    stop: bool = False          # a stop was requested: checkpoint and end instead of this round
    full_state: bool = False    # the float32 global state is broadcast this round
    done: bool = False          # every round is complete: only the final evaluation remains
    bounds: np.ndarray | None = None  # evaluation blocks per rank (world + 1 boundaries); None: no evaluation

    @staticmethod
    def size(world: int) -> int:
        """Values in the packed block for `world` ranks."""
        return _HEAD + world + 1

    @property
    def finished(self) -> bool:
        """No round follows: the run is complete or stops now."""
        return self.stop or self.done

    def pack(self, world: int) -> np.ndarray:
        out = np.zeros(self.size(world), dtype=np.int64)
        out[0] = self.round
        out[1] = STOP * self.stop | FULL_STATE * self.full_state | DONE * self.done
        if self.bounds is not None:
            out[_HEAD:] = self.bounds
        return out

    @classmethod
    def unpack(cls, buf: np.ndarray) -> ControlBlock:
        flags, bounds = int(buf[1]), buf[_HEAD:].copy()
        return cls(int(buf[0]), bool(flags & STOP), bool(flags & FULL_STATE), bool(flags & DONE),
                   bounds if bounds[-1] > 0 else None)


_SENT = len(PHASES)
_RECV = _SENT + len(CHANNELS)
_STOP = _RECV + len(CHANNELS)
_SCORES = _STOP + 1


@dataclass(frozen=True)
class RankReport:
    """What one rank tells rank 0 after a round: where its time went, what it moved, whether it was asked to
    stop, and its share of the evaluation."""

    phases: np.ndarray                       # seconds per phase (PHASES order)
    sent: np.ndarray = field(default_factory=lambda: np.zeros(len(CHANNELS), dtype=np.int64))
    received: np.ndarray = field(default_factory=lambda: np.zeros(len(CHANNELS), dtype=np.int64))
    stop_requested: bool = False
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))

    def pack(self) -> np.ndarray:
        return np.concatenate([self.phases, self.sent, self.received, [float(self.stop_requested)], self.scores])

    @classmethod
    def unpack(cls, row: np.ndarray) -> RankReport:
        return cls(row[:_SENT].copy(), row[_SENT:_RECV].astype(np.int64), row[_RECV:_STOP].astype(np.int64),
                   bool(row[_STOP]), row[_SCORES:].copy())


@dataclass(frozen=True)
class RankReports:
    """Every rank's report of one round, as columns (rank 0 only)."""

    phases: np.ndarray      # ranks x phases
    sent: np.ndarray        # ranks x channels
    received: np.ndarray    # ranks x channels
    stop_requested: np.ndarray  # ranks (bool)
    scores: np.ndarray      # ranks x scores

    @classmethod
    def unpack(cls, table: np.ndarray) -> RankReports:
        rows = [RankReport.unpack(r) for r in table]
        return cls(*(np.stack([getattr(r, f) for r in rows]) for f in
                     ("phases", "sent", "received", "stop_requested", "scores")))

    def channel(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(sent, received) per rank on one channel."""
        i = CHANNELS.index(name)
        return self.sent[:, i], self.received[:, i]
