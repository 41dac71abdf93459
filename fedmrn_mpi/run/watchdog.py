"""round_timeout: a rank that stops making progress (SIGSTOP, a deadlocked kernel, a dead node MPI does not
report) must not hold the allocation until the wall-clock limit (docs/reliability.md).

Every client rank tells rank 0 where it is in the round with tiny point-to-point notes (round, stage) at three
points: model received, uploads ready, round report ready. Rank 0's wait loops check the round's age; past the
limit it names the ranks that are behind the others, checkpoints the last completed round, closes the results
file and ends the job with EXIT_ROUND_TIMEOUT. Set-up (before round 1) has the start-up limit, 1800 s, unless
timeouts are off. A client rank applies twice the limit plus a minute, so rank 0,
when it is alive, always speaks first; if rank 0 itself is stuck, the client ends the job after that.
"""

from __future__ import annotations

import time

import numpy as np

from .events import RoundObserver

EXIT_ROUND_TIMEOUT = 124  # like timeout(1): the job was ended because a round took too long
AUTO_FIRST_ROUNDS = 3      # auto: rounds run under the start-up limit (compilation, caches, first evaluation)
AUTO_START_SECONDS = 1800.0
AUTO_MIN_SECONDS = 300.0
AUTO_FACTOR = 10.0
CLIENT_FACTOR, CLIENT_MARGIN_SECONDS = 2.0, 60.0

MODEL, UPLOADS, REPORT = 1, 2, 3  # stages of a round a client rank reports
_STAGE_TEXT = {0: "had not received the round's model", MODEL: "was training (or evaluating) its share",
               UPLOADS: "had sent its uploads", REPORT: "had sent its round report"}


class RoundTimeout(Exception):
    """A round exceeded its limit; the text names the ranks that are behind."""


def round_limit(setting: float | None, round_seconds: list[float]) -> float | None:
    """The limit of the next round: `setting` seconds; None (auto) 1800 s for the first rounds, then 10x the
    slowest completed round, at least 300 s; 0 = no limit (None)."""
    if setting is not None:
        return float(setting) if setting > 0 else None
    if len(round_seconds) < AUTO_FIRST_ROUNDS:
        return AUTO_START_SECONDS
    return max(AUTO_MIN_SECONDS, AUTO_FACTOR * max(round_seconds))


def laggards(progress: dict[int, tuple[int, int]], round_: int, ranks: list[int]) -> dict[int, str]:
    """The ranks behind the most advanced client rank in `round_`, with what each last reported."""
    where = {r: progress.get(r, (0, 0)) for r in ranks}
    stage = {r: s if rnd == round_ else 0 for r, (rnd, s) in where.items()}
    top = max(stage.values(), default=0)
    behind = {r: _STAGE_TEXT[s] for r, s in stage.items() if s < top}
    return behind or {r: _STAGE_TEXT[s] for r, s in stage.items()}


class ProgressNotes(RoundObserver):
    """Where each client rank is in the round: a client rank sends rank 0 a note (round, stage) at three
    points; rank 0 collects them while it waits."""

    def __init__(self, transport) -> None:
        self.transport, self.round = transport, 0
        self.progress: dict[int, tuple[int, int]] = {}

    def opening(self, round_: int) -> None:
        self.round = round_

    def started(self, round_: int) -> None:
        self.round = round_

    def model_received(self, round_: int) -> None:
        self._note(MODEL)

    def uploads_ready(self, round_: int) -> None:
        self._note(UPLOADS)

    def report_ready(self, round_: int) -> None:
        self._note(REPORT)

    def _note(self, stage: int) -> None:
        if not self.transport.is_server:
            self.transport.note_progress(np.array([self.round, stage], dtype=np.int64))

    def poll(self) -> None:
        if self.transport.is_server:
            for rank, (rnd, stage) in self.transport.progress_notes():
                self.progress[rank] = (int(rnd), int(stage))


class Watchdog(RoundObserver):
    """One rank's view of the current round's age (see module docstring)."""

    def __init__(self, setting: float | None, transport, notes: ProgressNotes) -> None:
        self.setting, self.transport, self.notes = setting, transport, notes
        self.rounds: list[float] = []
        # set-up (imports, data, the first collectives) counts as round 0, with the start-up limit whatever
        # the setting, unless timeouts are off
        self.start(0, None if setting == 0 else AUTO_START_SECONDS)

    def start(self, round_: int, limit: float | None = -1.0) -> None:
        """A round (or the final evaluation) begins now (`limit`: instead of the configured one)."""
        limit = round_limit(self.setting, self.rounds) if limit == -1.0 else limit
        if limit is not None and not self.transport.is_server:
            limit = CLIENT_FACTOR * limit + CLIENT_MARGIN_SECONDS
        self.round, self.t0, self.limit = round_, time.monotonic(), limit

    # round events
    def opening(self, round_: int) -> None:
        self.start(round_)

    def started(self, round_: int) -> None:
        self.round = round_

    def round_done(self, round_: int, seconds: float) -> None:
        self.rounds.append(seconds)

    def finishing(self, round_: int) -> None:
        self.start(round_)  # the closing barrier must not wait forever for a stuck rank either

    def poll(self) -> None:
        self.check()

    def check(self) -> None:
        """Raises RoundTimeout once the round is older than its limit."""
        if self.limit is None or time.monotonic() - self.t0 <= self.limit:
            return
        age = time.monotonic() - self.t0
        what = f"round {self.round}" if self.round else "set-up"
        if not self.transport.is_server:
            raise RoundTimeout(f"{what} made no progress for {age:.0f} s (limit {self.limit:.0f} s): "
                               f"rank 0 or another rank is not responding")
        if not self.round:
            raise RoundTimeout(f"set-up took more than {self.limit:.0f} s ({age:.0f} s so far): a rank is not "
                               f"responding (set round_timeout=0 to wait without limit)")
        behind = laggards(self.notes.progress, self.round, [r for r in range(1, self.transport.size)])
        names = "; ".join(f"rank {r} {what}" for r, what in sorted(behind.items()))
        raise RoundTimeout(f"round {self.round} exceeded round_timeout ({self.limit:.0f} s, {age:.0f} s so far): "
                           f"rank(s) {sorted(behind)} have not reported ({names})")
