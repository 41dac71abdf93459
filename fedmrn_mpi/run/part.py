"""One rank's side of each step of a round (docs/design.md, "Round protocol").

`Part` is the one interface: one method per step, the same on every rank. `ServerPart` (run/server.py) is rank
0's side, `ClientPart` every other rank's. With one process, rank 0 plays both: its ServerPart also holds the
rank's `LocalClients`. Collectives are called once per step on every rank; what differs between the roles is
only what each sends and keeps (the `_`-methods a role overrides).
"""

from __future__ import annotations

import time
import numpy as np

from ..comm import FlatState, Gathered, Transport
from ..comm.flat_state import state_arrays
from ..config import Config
from ..results import state_sha256
from .client_states import ClientStates
from .eval_sharing import Shard
from .events import Events
from .local_clients import EMPTY, LocalClients
from .phase_timer import PhaseTimer
from .plan import Plan, plan_round
from .protocol import ControlBlock, RankReport
from .setup import Setup
from .stop import EXIT_STOPPED, SIGNALS, StopNow

NO_SCORES = np.empty(0)


class Part:
    """This rank's side of every step of a round (see the module docstring)."""

    def __init__(self, cfg: Config, setup: Setup, transport: Transport, events: Events, timer: PhaseTimer,
                 shard: Shard, states: ClientStates | None) -> None:
        self.cfg, self.setup, self.transport, self.events, self.timer = cfg, setup, transport, events, timer
        self.shard, self.states = shard, states
        self.clients = LocalClients(cfg, setup, transport.rank, timer) if transport.runs_clients else None
        self.flat = FlatState(setup.spec.shapes)
        self.masks_down = cfg.algorithm.downlink == "masks" and transport.size > 1
        self.state = self.new_state = setup.state
        self.scores, self.uploads, self.new_held = NO_SCORES, EMPTY, {}
        self.gathered: Gathered | None = None
        self.report: RankReport | None = None
        self.mismatched: list[int] = []

    # ---- the steps, in protocol order ----
    def next_round(self) -> int:
        """The round the next control block will most likely announce (for the watchdog)."""
        raise NotImplementedError

    def control(self) -> ControlBlock:
        """Rank 0 announces the round (or the end); every rank gets the same block."""
        buf = self._control_out()
        with self.timer("broadcast"):
            self.transport.bcast(buf, "downlink")
        return ControlBlock.unpack(buf)

    def plan(self, ctrl: ControlBlock) -> Plan:
        """The round's plan, derived from the block alone."""
        return plan_round(self.cfg, self.setup, self.transport.client_ranks, self.transport.size, ctrl)

    def receive_model(self, plan: Plan) -> None:
        """The float32 global state, when the round sends it (every round, or with `downlink: masks` the
        first one and after a digest mismatch)."""
        if plan.full_state:
            self._share_model()

    def evaluate(self, plan: Plan, after_training: bool) -> None:
        """This rank's blocks of the evaluation of the last completed round's model: a rank that trains no
        client evaluates as soon as the model is there, the others after their training."""
        if plan.evaluation is not None and plan.trains(self.transport.rank) == after_training:
            self.scores = self._evaluate_share(plan.evaluation, plan.round - 1)

    def train(self, plan: Plan) -> None:
        """Per-client state goes to the rank that trains the client; this rank trains and encodes its
        clients."""
        held = None
        if self.states is not None:
            with self.timer("broadcast"):
                held = self.states.send(self.transport, plan.assignment)
        if self.clients is not None:
            self.uploads, self.new_held = self.clients.train(plan, self.state, held)

    def uplink(self, plan: Plan) -> None:
        """Every rank's uploads (and per-client states) to rank 0."""
        self.transport.sync()
        with self.timer("gather"):
            self.gathered = self.transport.gather(self.uploads, "uplink", limit=plan.upload_limits)
            if self.states is not None:
                self.states.collect(self.transport, self.new_held)
        self.uploads, self.new_held = EMPTY, {}

    def aggregate(self, plan: Plan) -> None:
        """Rank 0 decodes the uploads and builds the new global model."""
        self.new_state = self.state

    def relay(self, plan: Plan) -> bool:
        """`downlink: masks`: rank 0 relays every upload and every rank rebuilds the same new global model.
        Returns whether it did."""
        if not self.masks_down:
            return False
        with self.timer("broadcast"):
            relay = self.transport.bcast_bytes(self._relay_out(), "downlink", limit=int(plan.upload_limits.sum()))
        self.new_state = self._rebuild(plan, relay)
        return True

    def check_digests(self, plan: Plan) -> None:
        """Every `sync_every` rounds and in the last one: the ranks whose model differs from rank 0's."""
        self.mismatched = []
        if self.masks_down and (plan.round % self.cfg.sync_every == 0 or plan.round == self.cfg.rounds):
            with self.timer("broadcast"):
                digest = np.frombuffer(bytes.fromhex(state_sha256(state_arrays(self.new_state))), dtype=np.uint8)
                table = self.transport.allgather_rows(digest, "downlink")
            self.mismatched = [r for r in range(self.transport.size) if not np.array_equal(table[r], table[0])]

    def build_report(self, plan: Plan) -> float:
        """This rank's round report; returns the round's wall time on this rank."""
        wall = self.timer.wall()
        sent, received = self.timer.moved()
        self.report = RankReport(self.timer.take(wall), sent, received, SIGNALS.requested, self.scores)
        self.scores = NO_SCORES
        return wall

    def gather_reports(self, plan: Plan) -> None:
        """Every rank's report to rank 0."""
        self._reports_in(self.transport.gather_rows(self.report.pack()))

    def complete(self, plan: Plan, wall: float) -> None:
        """The round is complete: the new model replaces the old."""
        self.state = self.new_state

    def final_evaluation(self, ctrl: ControlBlock) -> None:
        """After the last round, when due: every rank gets the final model and evaluates its blocks."""
        if ctrl.bounds is None:
            return
        self._share_model()
        scores = self._evaluate_share(ctrl.bounds, ctrl.round)
        self._reports_in(self.transport.gather_rows(RankReport(self.timer.take(0.0), scores=scores).pack()))

    # ---- endings ----
    def stop_now(self, exc: StopNow) -> None:
        """A second stop signal: end the job at once (rank 0 checkpoints the last completed round)."""
        SIGNALS.ignore()
        self._end_now(exc)
        self.transport.abort(EXIT_STOPPED)

    def failed(self, why: str) -> None:
        """The round failed (timeout, bad update): keep what exists before the job ends."""

    def finish(self) -> None:
        """After the loop: rank 0 writes the last row and the final model, or closes a stopped run's file."""

    # ---- what differs between the roles ----
    def _end_now(self, exc: StopNow) -> None:
        raise NotImplementedError

    def _control_out(self) -> np.ndarray:
        raise NotImplementedError

    def _model_out(self) -> np.ndarray:
        raise NotImplementedError

    def _model_in(self) -> dict:
        raise NotImplementedError

    def _relay_out(self) -> np.ndarray | None:
        raise NotImplementedError

    def _rebuild(self, plan: Plan, relay: np.ndarray) -> dict:
        raise NotImplementedError

    def _reports_in(self, table: np.ndarray | None) -> None:
        """Rank 0 reads the gathered reports; the others have nothing to read."""

    # ---- shared pieces ----
    def _share_model(self) -> None:
        with self.timer("broadcast"):
            self.transport.bcast(self._model_out(), "downlink")
            self.state = self.new_state = self._model_in()

    def _evaluate_share(self, bounds: np.ndarray, round_: int) -> np.ndarray:
        rank = self.transport.rank
        with self.timer("evaluate"):
            return self.shard.evaluate(self.state, round_, int(bounds[rank]), int(bounds[rank + 1]))


class ClientPart(Part):
    """A rank other than 0: trains the clients assigned to it; with `downlink: masks`, rebuilds the global
    model from the relayed uploads."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.round = 0

    def next_round(self) -> int:
        return self.round + 1

    def plan(self, ctrl: ControlBlock) -> Plan:
        plan = super().plan(ctrl)
        self.round = plan.round
        return plan

    def _end_now(self, exc: StopNow) -> None:
        self.transport.notify_server()  # rank 0 checkpoints and aborts the job; waiting is the last resort
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)

    def _control_out(self) -> np.ndarray:
        return np.zeros(ControlBlock.size(self.transport.size), dtype=np.int64)

    def _model_out(self) -> np.ndarray:
        return self.flat.buf

    def _model_in(self) -> dict:
        return self.flat.unpack(self.setup.device)

    def _relay_out(self) -> None:
        return None

    def _rebuild(self, plan: Plan, relay: np.ndarray) -> dict:
        return self.clients.rebuild(plan, relay, self.state)
