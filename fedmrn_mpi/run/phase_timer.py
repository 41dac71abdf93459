"""Per-phase timing of a round on this rank: where its wall time went, and what the transport moved."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from ..comm.transport import CHANNELS, Traffic
from ..results import PHASES
from .events import RoundObserver


class PhaseTimer(RoundObserver):
    """Seconds per phase of the current round; the round's clock starts once every rank has arrived at its
    start (`synced`), so the wait for the slowest rank of the previous round is not counted twice."""

    def __init__(self, traffic: Traffic | None = None) -> None:
        self.traffic = traffic or Traffic()
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.synced()

    def synced(self) -> None:
        """Every rank arrived at the round's start: the round's wall time and traffic count from here."""
        self.t0, self.traffic0 = time.perf_counter(), self.traffic.snapshot()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def wall(self) -> float:
        """Seconds since the round's start."""
        return time.perf_counter() - self.t0

    def moved(self) -> tuple[np.ndarray, np.ndarray]:
        """(sent, received) bytes per channel since the round's start."""
        delta = self.traffic.snapshot() - self.traffic0
        return delta[: len(CHANNELS)], delta[len(CHANNELS):]

    def take(self, wall: float) -> np.ndarray:
        """This round's row, then reset. Idle is the wall time outside every named phase: mostly the waits
        for other ranks in front of each collective (see Transport.sync)."""
        row = np.array([self.seconds[p] for p in PHASES])
        row[PHASES.index("idle")] = max(0.0, wall - row.sum())
        self.seconds = dict.fromkeys(PHASES, 0.0)
        return row
