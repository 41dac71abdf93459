"""After-round hooks of the server: the results row, the progress line, checkpoints.

A round is complete when its new global state exists (`round_completed`); its results row is complete once
the state has been evaluated, which happens while the next round trains (`row_ready`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .. import __version__
from ..config import Config, config_hash
from ..results.schema import RoundRow
from .checkpoint import checkpoint_dir, save_checkpoint
from .client_states import ClientStates
from .faults import FAULT_ENV, maybe_write_fault
from .progress import progress_line
from .resume import resume_identity

if TYPE_CHECKING:
    from ..results import ResultsWriter


@dataclass
class Completed:
    """The last completed round as the server holds it."""

    round: int
    state: dict                 # the global state after the round
    pending: RoundRow | None    # its results row, not yet evaluated and written
    stop_requested: bool = False
    client_states: "ClientStates | None" = None  # per-client algorithm state as of this round


class Hook:
    """Base: every method is optional."""

    def round_completed(self, done: Completed) -> None:
        """The round's new global state exists."""

    def row_ready(self, row: RoundRow) -> None:
        """The round's results row is complete (evaluated where due)."""


class ResultsHook(Hook):
    def __init__(self, writer: ResultsWriter) -> None:
        self.writer = writer
        if os.environ.get(FAULT_ENV):  # tests: write faults inside the real write (rank 0 writes the file)
            writer.fault = lambda point, round_: maybe_write_fault(0, round_, point, flush=lambda: writer.f.flush())

    def row_ready(self, row: RoundRow) -> None:
        self.writer.append_round(row)


class ProgressHook(Hook):
    """One progress line every `log_every` rounds and after the last."""

    def __init__(self, cfg: Config, first_round: int, log: Callable[..., None]) -> None:
        self.cfg, self.first, self.log = cfg, first_round, log
        self.t0 = time.perf_counter()

    def row_ready(self, row: RoundRow) -> None:
        r = row.round
        if r % self.cfg.log_every == 0 or r == self.cfg.rounds:
            self.log(progress_line(row, self.cfg.rounds, time.perf_counter() - self.t0, r - self.first + 1),
                     flush=True)


class CheckpointHook(Hook):
    """Every `checkpoint_every` rounds and when a stop was requested (not after the last round)."""

    def __init__(self, cfg: Config, out_path: str, log: Callable[..., None]) -> None:
        self.cfg, self.dir, self.log = cfg, checkpoint_dir(out_path), log

    def round_completed(self, done: Completed) -> None:
        periodic = self.cfg.checkpoint_every and done.round % self.cfg.checkpoint_every == 0
        if done.round < self.cfg.rounds and (done.stop_requested or periodic):
            self.save(done, "stop requested" if done.stop_requested else "periodic")

    def save(self, done: Completed, why: str) -> None:
        path = save_checkpoint(self.dir, done.round, {
            "state": done.state, "pending": None if done.pending is None else done.pending.to_dict(),
            "identity": resume_identity(self.cfg),
            "config_sha256": config_hash(self.cfg), "version": __version__, "seed": self.cfg.seed,
            "client_states": done.client_states.as_tensors() if done.client_states is not None else {}},
            fault=(lambda: maybe_write_fault(0, done.round, "mid-checkpoint")) if os.environ.get(FAULT_ENV) else None)
        self.log(f"checkpoint after round {done.round} ({why}): {path}", flush=True)

