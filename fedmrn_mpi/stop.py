"""Stop requests from the batch system (DESIGN §3.4).

Slurm sends SIGUSR1 before a time limit (with `--signal`) and SIGTERM on preemption. The first signal asks
the run to stop at the next round boundary with a checkpoint; a second one stops sooner: wait loops and the
local training loop raise `StopNow`, and rank 0 checkpoints the last completed round.
"""

from __future__ import annotations

import signal

EXIT_STOPPED = 75  # sysexits EX_TEMPFAIL: checkpointed, run again with --resume


class StopNow(Exception):
    """Raised at the next safe point after a second stop signal."""


class StopSignals:
    """Counts SIGUSR1/SIGTERM deliveries to this process."""

    def __init__(self) -> None:
        self.count = 0
        self.last: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.count += 1
        self.last = signum

    @property
    def requested(self) -> bool:
        return self.count >= 1

    @property
    def urgent(self) -> bool:
        return self.count >= 2

    def check(self) -> None:
        """Raise StopNow after a second signal (call at safe points)."""
        if self.count >= 2:
            raise StopNow(f"stopped by a second signal ({signal.Signals(self.last).name})")


SIGNALS = StopSignals()
