"""Fault injection for tests: FEDMRN_MPI_INJECT_FAULT="RANK:ROUND[:KIND][,RANK:ROUND[:KIND]...]" (RANK may be *
for every rank).

raise (default): that rank raises at the start of that round; kill: it SIGKILLs itself; corrupt: it perturbs
its copy of the global model after the masks downlink (so the digest check must catch it); hold: it stops at
the start of the round's training and waits for a stop (writing FEDMRN_MPI_FAULT_MARKER + ".holding", then
+ ".requested" once a first stop signal arrived), so tests can signal a run that is surely inside a round;
pause: the same, but the rank goes on with the round once the first stop signal arrived;
signal-at-exit (ROUND ignored): after the run, the rank sends itself SIGUSR1 and SIGTERM, once at once and
once while the interpreter tears down, when Python has already reset the handlers it installed.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

FAULT_ENV = "FEDMRN_MPI_INJECT_FAULT"
MARKER_ENV = "FEDMRN_MPI_FAULT_MARKER"
HOLD_LIMIT_SECONDS = 120.0


def _fault(rank: int, round_: int | None, kinds: tuple[str, ...] | None = None) -> str | None:
    """The kind of the first fault set for this rank at this round (any round if None) among `kinds`."""
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        parts = spec.split(":")
        kind = parts[2] if len(parts) > 2 else "raise"
        if parts[0] in ("*", str(rank)) and (round_ is None or int(parts[1]) == round_) \
                and (kinds is None or kind in kinds):
            return kind
    return None


def _mark(suffix: str) -> None:
    prefix = os.environ.get(MARKER_ENV)
    if prefix:
        with open(prefix + suffix, "w") as fh:
            fh.write(f"{os.getpid()}\n")


def maybe_inject_fault(rank: int, round_: int, poll: Callable[[], None] | None = None,
                       requested: Callable[[], bool] = lambda: False) -> None:
    """Fail or hold this rank now if the environment asks for it at this round."""
    kind = _fault(rank, round_, ("kill", "raise", "hold", "pause"))
    if kind == "kill":
        os.kill(os.getpid(), 9)
    if kind == "raise":
        raise RuntimeError(f"fault injected by {FAULT_ENV}={os.environ[FAULT_ENV]}")
    if kind in ("hold", "pause"):
        _mark(".holding")
        marked, deadline = False, time.monotonic() + HOLD_LIMIT_SECONDS
        while time.monotonic() < deadline:
            if poll is not None:
                poll()  # raises StopNow on a second stop signal
            if requested() and not marked:
                _mark(".requested")
                marked = True
                if kind == "pause":
                    return
            time.sleep(0.01)
        raise RuntimeError(f"{FAULT_ENV}={kind}: no stop arrived within {HOLD_LIMIT_SECONDS:.0f} s")


def maybe_corrupt_state(rank: int, round_: int, state: dict) -> dict:
    """The state, with its first tensor shifted if a corrupt fault is set for this rank and round."""
    if _fault(rank, round_, ("corrupt",)) is None:
        return state
    first = next(iter(state))
    return {**state, first: state[first] + 1e-3}


class _SignalAtTeardown:
    def __del__(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            os.kill(os.getpid(), sig)


def maybe_signal_at_exit(rank: int) -> None:
    """signal-at-exit: late stop signals now and during interpreter teardown (the exit status must not
    change)."""
    if _fault(rank, None, ("signal-at-exit",)) is None:
        return
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        os.kill(os.getpid(), sig)
    globals()["_teardown_signal"] = _SignalAtTeardown()  # collected when the interpreter clears this module
