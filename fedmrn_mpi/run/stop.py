"""Stop requests from the batch system (docs/design.md#checkpoints-and-stop-signals).

Slurm sends SIGUSR1 before a time limit (with `--signal`) and SIGTERM on preemption. The first signal asks
the run to stop at the next round boundary with a checkpoint; a second one stops sooner: wait loops and the
local training loop raise `StopNow`, and rank 0 checkpoints the last completed round. Once a run has
accepted a stop or finished, `ignore()` makes later signals harmless through finalisation and exit (Python
restores the default action, which kills the process, only for handlers it installed, not for SIG_IGN).
"""

from __future__ import annotations

import os
import signal
import time

from .events import RoundObserver

EXIT_STOPPED = 75  # sysexits EX_TEMPFAIL: checkpointed, run again with --resume
# Slurm delivers one stop through several paths at once (batch shell forwarding, the launcher, the step):
# signals this close to the first one are the same request, not a second one.
DEBOUNCE_SECONDS = float(os.environ.get("FEDMRN_MPI_SIGNAL_DEBOUNCE", "3"))


STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopNow(Exception):
    """Raised at the next safe point after a second stop signal."""


class StopSignals:
    """Counts SIGUSR1/SIGTERM deliveries to this process."""

    def __init__(self) -> None:
        self.count = 0
        self.last: int | None = None
        self.first_at = 0.0

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handler)

    def ignore(self) -> None:
        """From now on stop signals change nothing (the stop is accepted, or the run is over)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def _handler(self, signum, frame) -> None:
        now = time.monotonic()
        if self.count and now - self.first_at < DEBOUNCE_SECONDS:
            return
        if not self.count:
            self.first_at = now
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


class StopChecks(RoundObserver):
    """While waiting: a second stop signal, here or on a client rank (which tells rank 0 point-to-point), ends
    the round at once. Once the loop is over, stop signals change nothing."""

    def __init__(self, transport) -> None:
        self.transport, self.active = transport, True

    def poll(self) -> None:
        if not self.active:
            return
        SIGNALS.check()
        if self.transport.is_server and (r := self.transport.server_notified()) is not None:
            raise StopNow(f"a second stop signal reached rank {r}")

    def finishing(self, round_: int) -> None:
        SIGNALS.ignore()  # the stop is accepted or the run is over: later signals must not change the exit status
        self.active = False
