"""Fault injection for tests: FEDMRN_MPI_INJECT_FAULT="RANK:ROUND[:KIND][,RANK:ROUND[:KIND]...]" (RANK may be *
for every rank).

raise (default): that rank raises at the start of that round; kill: it SIGKILLs itself; corrupt: it perturbs
its copy of the global model after the masks downlink (so the digest check must catch it); hold: it stops at
the start of the round's training and waits for a stop (writing FEDMRN_MPI_FAULT_MARKER + ".holding", then
+ ".requested" once a first stop signal arrived), so tests can signal a run that is surely inside a round;
pause: the same, but the rank goes on with the round once the first stop signal arrived;
signal-at-exit (ROUND ignored): after the run, the rank sends itself SIGUSR1 and SIGTERM, once at once and
once while the interpreter tears down, when Python has already reset the handlers it installed.
Write faults (rank 0, which writes the results file and the checkpoints; ROUND = the round whose results row or
checkpoint is being written; `maybe_write_fault`): kill-in-results: SIGKILL in the middle of appending the row,
after part of it was flushed to the file; kill-in-checkpoint: SIGKILL once part of the checkpoint's temp file is
written, before the rename; wait-before-results: before the row's first write, write MARKER + ".waiting" (the
pid) and wait until MARKER + ".go" exists, so a test can limit the file size (prlimit) before the row is written.
Bad updates, "RANK:ROUND:KIND[:CLIENT]" (every client that rank trains in that round when CLIENT is absent;
RANK * poisons CLIENT wherever it is trained, so a test can compare rank counts): nan: the client starts from
a global model of NaNs, so its training diverges as a real one would (NaN loss and update); inf-loss:
the client trains normally but reports an infinite training loss.
stop (client ranks): the rank sends itself SIGSTOP at the start of the round, a stuck rank for round_timeout.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

import torch

from .events import RoundObserver
from .stop import SIGNALS

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
    kind = _fault(rank, round_, ("kill", "raise", "hold", "pause", "stop"))
    if kind == "kill":
        os.kill(os.getpid(), 9)
    if kind == "stop":
        _mark(".stopped")
        os.kill(os.getpid(), signal.SIGSTOP)
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


def bad_update_fault(rank: int, round_: int, client: int) -> str | None:
    """"nan" or "inf-loss" when the environment poisons this client's update in this round."""
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        parts = spec.split(":")
        if len(parts) >= 3 and parts[2] in ("nan", "inf-loss") and parts[0] in ("*", str(rank)) \
                and int(parts[1]) == round_ and (len(parts) < 4 or int(parts[3]) == client):
            return parts[2]
    return None


def poison_state(state: dict) -> dict:
    """The global state with every floating-point tensor NaN (a diverged start, whatever the algorithm reads)."""
    return {n: torch.full_like(t, float("nan")) if t.is_floating_point() else t for n, t in state.items()}


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


# write fault kind -> where it acts (the points at which the results writer and save_checkpoint call back)
WRITE_FAULTS = {"kill-in-results": "mid-row", "kill-in-checkpoint": "mid-checkpoint", "wait-before-results": "row"}


def maybe_write_fault(rank: int, round_: int, point: str, flush: Callable[[], None] | None = None) -> None:
    """A write fault set for this rank and round at `point`: "row" (before a results row's first write),
    "mid-row" (the rounds/ datasets have the row, clients/ and ranks/ not yet, nothing flushed) or
    "mid-checkpoint" (part of the temp file written). `flush` writes what the writer holds to the file: a kill
    then leaves part of the row on disk, as an eviction from HDF5's caches could."""
    kind = _fault(rank, round_, tuple(k for k, where in WRITE_FAULTS.items() if where == point))
    if kind in ("kill-in-results", "kill-in-checkpoint"):
        if flush is not None:
            flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "wait-before-results":
        prefix = os.environ.get(MARKER_ENV)
        if not prefix:
            raise RuntimeError(f"{FAULT_ENV}={kind} needs {MARKER_ENV}")
        _mark(".waiting")
        deadline = time.monotonic() + HOLD_LIMIT_SECONDS
        while not os.path.exists(prefix + ".go"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{FAULT_ENV}={kind}: {prefix}.go did not appear within "
                                   f"{HOLD_LIMIT_SECONDS:.0f} s")
            time.sleep(0.01)


class FaultInjection(RoundObserver):
    """Tests' faults (the module docstring) at their points of the round."""

    def __init__(self, rank: int, poll: Callable[[], None]) -> None:
        self.rank, self._poll = rank, poll

    def training(self, round_: int) -> None:
        maybe_inject_fault(self.rank, round_, self._poll, lambda: SIGNALS.requested)

    def model_rebuilt(self, round_: int, state: dict) -> None:
        if _fault(self.rank, round_, ("corrupt",)) is not None:
            first = next(iter(state))
            state[first] = state[first] + 1e-3

    def finishing(self, round_: int) -> None:
        maybe_signal_at_exit(self.rank)
