"""Rank 0's side of the round: announce each round, aggregate, complete the results rows and hand each completed
round to the hooks (results file, progress line, checkpoints)."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..comm.flat_state import state_arrays
from ..results import PHASES, format_duration
from ..results.schema import ROUNDS_COMPLETED, TOTAL_SECONDS
from .eval_sharing import Balancer
from .hooks import CheckpointHook, Completed, Hook
from .local_clients import decode_uploads
from .part import Part
from .plan import Plan
from .protocol import ControlBlock, RankReports
from .round_row import round_row
from .stop import StopNow

if TYPE_CHECKING:
    from ..results import ResultsWriter


class ServerPart(Part):
    """Rank 0 (see run/part.py). The last completed round's row waits in `self.last.pending` until its model is
    evaluated, which happens during the next round (or after the last one)."""

    def __init__(self, *args, writer: ResultsWriter | None, checkpoints: CheckpointHook, hooks: list[Hook],
                 first_round: int, pending, log: Callable[..., None]) -> None:
        super().__init__(*args)
        self.writer, self.log, self.first_round = writer, log, first_round
        self.checkpoints, self.hooks = checkpoints, [checkpoints, *hooks]
        self.balancer = Balancer(self.transport.size, self.shard.total, self.shard.block_size)
        done = first_round - 1 if writer is not None else self.cfg.rounds  # no writer: the run was complete
        self.last = Completed(done, self.state, pending, client_states=self.states)
        self.resync = True  # the first round (also after a resume) sends the full state
        self.ahead: Plan | None = None  # the plan of the round just announced
        self.messages: list = []
        self.skipped: dict[int, str] = {}  # this round's clients left out for a non-finite update
        self.reports: RankReports | None = None
        self.t_start = time.perf_counter()

    def _finished(self) -> bool:
        return self.last.round >= self.cfg.rounds or self.last.stop_requested

    def next_round(self) -> int:
        return self.last.round + (0 if self._finished() else 1)

    def _control_out(self) -> np.ndarray:
        """(next round, flags, evaluation split), or (last round, STOP or DONE, split): the last completed round's
        model is evaluated during the next round, or after the last one. A stop carries no evaluation: the
        unevaluated row travels in the checkpoint."""
        world, last = self.transport.size, self.last
        self.ahead = None
        if last.round >= self.cfg.rounds:
            ctrl, samples = ControlBlock(last.round, done=True), np.zeros(world)
        elif last.stop_requested:
            return ControlBlock(last.round, stop=True).pack(world)
        else:
            ctrl = ControlBlock(last.round + 1, full_state=not self.masks_down or self.resync)
            self.ahead = super().plan(ctrl)
            samples = self.ahead.samples
        if last.pending is not None and self._due(last.pending.round):
            ctrl = replace(ctrl, bounds=self.balancer.plan(samples, samples > 0))
        return ctrl.pack(world)

    def _due(self, r: int) -> bool:
        return bool(self.cfg.eval_every and r % self.cfg.eval_every == 0 or r == self.cfg.rounds)

    def plan(self, ctrl: ControlBlock) -> Plan:
        return replace(self.ahead, evaluation=ctrl.bounds)

    def evaluate(self, plan: Plan, after_training: bool) -> None:
        if not after_training and plan.evaluation is None and self.last.pending is not None:
            self._row_ready(math.nan, math.nan)  # the last round's row is not evaluated: write it now
        super().evaluate(plan, after_training)

    def aggregate(self, plan: Plan) -> None:
        with self.timer("decode_aggregate"):
            self.messages, self.new_state, self.skipped = decode_uploads(
                self.setup, self.gathered.buffers, plan, self.state, self.cfg,
                ranks=list(range(len(self.gathered.buffers))))
        by_client = {m.header.client_id: r for r, m in self.messages}
        for cid, why in self.skipped.items():
            self.log(f"round {plan.round}: skipped client {cid} (rank {by_client[cid]}): {why}", flush=True)
        if len(self.skipped) == len(self.messages):
            self.log(f"round {plan.round}: every client's update was skipped; the global model is unchanged",
                     flush=True)

    def _reports_in(self, table: np.ndarray) -> None:
        self.reports = RankReports.unpack(table)
        self.report_bytes = int(table[0].nbytes) * (self.transport.size - 1)
        if self.last.pending is not None and self.reports.scores.shape[1]:  # the evaluation planned is in
            self._row_ready(*self.shard.combine(self.reports.scores))

    def _row_ready(self, accuracy: float, loss: float) -> None:
        row, self.last.pending = self.last.pending.with_evaluation(accuracy, loss), None
        for h in self.hooks:
            h.row_ready(row)

    def complete(self, plan: Plan, wall: float) -> None:
        """The round is complete only now: state, row and round number change together (after the previous
        round's row, evaluated during this round)."""
        super().complete(plan, wall)
        reports = self.reports
        if plan.evaluation is not None:
            self.balancer.measured(plan.evaluation, reports.phases[:, PHASES.index("evaluate")], plan.samples,
                                   reports.phases[:, PHASES.index("local_train")])
        row = round_row(plan, self.messages, reports, self.report_bytes, wall,
                        resync=self.masks_down and plan.full_state and plan.round > 1,
                        mismatched=len(self.mismatched), skipped=self.skipped)
        if self.mismatched:
            self.log(f"round {plan.round}: model digest differs on rank(s) {self.mismatched}; full float32 resync "
                     f"next round", flush=True)
        self.resync = bool(self.mismatched)
        if self.states is not None:
            self.states.commit(self.skipped)
        stop = bool(reports.stop_requested.any()) and plan.round < self.cfg.rounds
        self.last = Completed(plan.round, self.state, row, stop, self.states)
        for h in self.hooks:
            h.round_completed(self.last)

    def final_evaluation(self, ctrl: ControlBlock) -> None:
        super().final_evaluation(ctrl)
        if ctrl.bounds is not None:
            self.balancer.measured(ctrl.bounds, self.reports.phases[:, PHASES.index("evaluate")],
                                   np.zeros(self.transport.size), self.reports.phases[:, PHASES.index("local_train")])

    # ---- endings ----
    def _end_now(self, exc: StopNow) -> None:
        self.failed(str(exc))
        self.log(f"fedmrn_mpi: {exc}; run again with --resume to continue", flush=True)

    def failed(self, why: str) -> None:
        """Checkpoint the last round completed by this job, keep every row written."""
        if self.writer is None:
            return
        if self.last.round >= self.first_round:
            self.checkpoints.save(self.last, why)
        self.writer.close()

    def finish(self) -> None:
        cfg, done = self.cfg, self.last.round
        if self.writer is None:
            return
        if done < cfg.rounds:
            self.writer.close()
            self.log(f"stopped after round {done} on request; results so far in {self.writer.path}; "
                     f"continue with --resume", flush=True)
            return
        if self.last.pending is not None:  # the final evaluation was not due
            self._row_ready(math.nan, math.nan)
        took = time.perf_counter() - self.t_start
        digest = self.writer.finalize(state_arrays(self.state), {ROUNDS_COMPLETED: cfg.rounds,
                                                                 TOTAL_SECONDS: took})
        self.log(f"done: {cfg.rounds} rounds in {format_duration(took)}; final_model_sha256 {digest}; "
                 f"results in {self.writer.path}", flush=True)

    # ---- what rank 0 sends and keeps ----
    def _model_out(self) -> np.ndarray:
        return self.flat.pack(self.state)

    def _model_in(self) -> dict:
        return self.state

    def _relay_out(self) -> np.ndarray:
        return self.gathered.data

    def _rebuild(self, plan: Plan, relay: np.ndarray) -> dict:
        return self.new_state
