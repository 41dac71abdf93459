"""The two parts of a round: what a client rank does and what the server (rank 0) does.

With one process, rank 0 plays both parts. Everything random is planned from the root seed (`plan_round`), so
every rank knows, without asking, which clients train this round and where.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..algorithms import aggregate_round
from ..comm import HEADER_SIZE, Gathered, Transport, WireError, decode_messages, encode_message
from ..comm.flat_state import state_arrays
from ..comm.transport import CHANNELS
from ..config import Config
from ..results import PHASES, format_duration
from ..training import assign_clients, sample_clients, train_client, train_clients_batched
from .client_states import ClientStates
from .evaluation import Balancer, Shard
from .faults import bad_update_fault, poison_state
from .hooks import CheckpointHook, Completed, Hook
from .progress import PhaseTimer, round_phases
from .setup import Setup

if TYPE_CHECKING:
    from ..results import ResultsWriter

FLAG_STOP, FLAG_FULL_STATE, FLAG_DONE = 1, 2, 4
# the control block: round, flags, then the evaluation blocks of each rank (boundaries, world size + 1 values;
# all zero when nothing is evaluated this round)
_BOUNDS = 2


def control_size(world: int) -> int:
    return _BOUNDS + world + 1


def eval_bounds(ctrl: np.ndarray) -> np.ndarray | None:
    """The block boundaries of this round's evaluation, or None when there is none."""
    bounds = ctrl[_BOUNDS:]
    return bounds if bounds[-1] > 0 else None
# per-rank report gathered at the end of every round: phase seconds, traffic (sent then received, per
# channel), stop requested
_SENT = len(PHASES)
_RECV = _SENT + len(CHANNELS)
_STOP = _RECV + len(CHANNELS)


@dataclass(frozen=True)
class Plan:
    """What every rank knows about round `round` once the control block arrived."""

    round: int
    full_state: bool                    # the float32 state is broadcast this round
    sampled: np.ndarray                 # sorted client ids
    assignment: dict[int, list[int]]    # rank -> its client ids


def plan_round(cfg: Config, su: Setup, transport: Transport, ctrl: np.ndarray) -> Plan:
    rnd = int(ctrl[0])
    sampled = sample_clients(cfg.seed, rnd, cfg.num_clients, cfg.clients_per_round)
    return Plan(rnd, bool(ctrl[1] & FLAG_FULL_STATE), sampled,
                assign_clients(sampled, su.sizes, transport.client_ranks))


def trained_samples(cfg: Config, su: Setup, world: int, assignment: dict[int, list[int]]) -> np.ndarray:
    """Training samples (all local epochs) each rank works through in a round with this assignment."""
    out = np.zeros(world)
    for r, clients in assignment.items():
        out[r] = cfg.local_epochs * sum(int(su.sizes[c]) for c in clients)
    return out


def upload_limits(su: Setup, plan: Plan, world: int) -> np.ndarray:
    """The most upload bytes each rank may send this round (its clients' messages at the payload bound): the
    server refuses a larger announced size before allocating for it."""
    per_message = HEADER_SIZE + su.algo.payload_nbytes()
    return np.array([len(plan.assignment.get(r, [])) * per_message for r in range(world)], dtype=np.int64)


def decode_uploads(su: Setup, buffers: list, plan: Plan, state: dict, cfg: Config,
                   ranks: list[int] | None = None) -> tuple[list, dict, dict[int, str]]:
    """Validate every rank's concatenated uploads and aggregate them; `ranks` names each buffer's sender
    (None: one relayed buffer holding every sampled client's upload). Returns the messages, the new state and
    the clients skipped for a non-finite update (on_bad_update=skip)."""
    messages = []
    for i, view in enumerate(buffers):
        rank = ranks[i] if ranks is not None else 0
        expected = plan.assignment.get(rank, []) if ranks is not None else plan.sampled.tolist()
        messages += [(rank, m) for m in decode_messages(view, rank=rank, round_=plan.round,
                                                        algo_id=su.algo.algo_id, expected_clients=set(expected))]
    seen = sorted(m.header.client_id for _, m in messages)
    if seen != plan.sampled.tolist():
        trainer = {c: r for r, cs in plan.assignment.items() for c in cs}
        missing = sorted(set(plan.sampled.tolist()) - set(seen))
        if missing:
            raise WireError(f"round {plan.round}: uploads missing for clients {missing} (trained on rank(s) "
                            f"{sorted({trainer[c] for c in missing})})")
        twice = sorted({c for c in seen if seen.count(c) > 1})
        senders = sorted({r for r, m in messages if m.header.client_id in twice})
        raise WireError(f"round {plan.round}: duplicate uploads for clients {twice} (sent by rank(s) {senders})")
    new_state, skipped = aggregate_round(su.algo, messages, state, cfg.server_lr, plan.round, su.device,
                                         cfg.on_bad_update)
    return messages, new_state, skipped


class ClientPart:
    """A client rank: train the clients assigned to it; with `downlink: masks`, rebuild the global model."""

    def __init__(self, cfg: Config, su: Setup, transport: Transport, timer: PhaseTimer) -> None:
        self.cfg, self.su, self.rank, self.timer = cfg, su, transport.rank, timer

    def train(self, plan: Plan, state: dict, client_states: dict[int, dict] | None = None) -> tuple[np.ndarray, dict]:
        """This rank's uploads for the round, back to back (empty if it has no client), and its clients' new
        per-client states (when the algorithm keeps any; `client_states` holds the old ones)."""
        su, uploads, new_states = self.su, [], {}
        clients = plan.assignment.get(self.rank, [])
        ctxs = [su.local.context(plan.round, cid, int(su.sizes[cid]), su.device) for cid in clients]
        for cid, ctx in zip(clients, ctxs):
            if client_states is not None:
                ctx.state = {n: t.to(su.device) for n, t in client_states.get(cid, {}).items()}
        poison = {cid: bad_update_fault(self.rank, plan.round, cid) for cid in clients}
        if self.cfg.batched_clients and len(clients) > 1 and not any(poison.values()):
            # one vectorised computation for all of them
            results = train_clients_batched(su.model, su.algo, state, [su.client_data(c) for c in clients], ctxs,
                                            su.local, timer=self.timer)
        else:  # the reference: one after another
            results = [train_client(su.model, su.algo, poison_state(state) if poison[cid] == "nan" else state,
                                    *su.client_data(cid), ctx, su.local, timer=self.timer)
                       for cid, ctx in zip(clients, ctxs)]
        for cid, ctx, res in zip(clients, ctxs, results):
            if poison[cid] == "inf-loss":
                res.train_loss = math.inf
            with self.timer("encode"):
                uploads.append(encode_message(su.algo.algo_id, plan.round, cid, res.seed, res.weight,
                                              res.train_loss, res.payload))
            if client_states is not None:
                new_states[cid] = ctx.state
        return np.concatenate(uploads) if uploads else np.empty(0, dtype=np.uint8), new_states

    def rebuild(self, plan: Plan, relay: np.ndarray, state: dict) -> dict:
        """The new global state from the relayed uploads of every sampled client (same sums as rank 0)."""
        with self.timer("decode_aggregate"):
            return decode_uploads(self.su, [memoryview(relay)], plan, state, self.cfg)[1]


class ServerPart:
    """Rank 0: drive the rounds, aggregate, evaluate, and hand each completed round to the hooks."""

    def __init__(self, cfg: Config, su: Setup, transport: Transport, timer: PhaseTimer,
                 writer: ResultsWriter | None, checkpoints: CheckpointHook, hooks: list[Hook], first_round: int,
                 pending: dict | None, log: Callable[..., None], client_states: ClientStates | None,
                 shard: Shard) -> None:
        self.cfg, self.su, self.timer, self.writer, self.log = cfg, su, timer, writer, log
        self.transport, self.shard = transport, shard
        self.balancer = Balancer(transport.size, shard.total, shard.block_size)
        self.bounds: np.ndarray | None = None  # the evaluation planned for the round under way
        self.client_states = client_states
        self.checkpoints, self.hooks, self.first_round = checkpoints, [checkpoints, *hooks], first_round
        self.masks_down = cfg.algorithm.downlink == "masks" and transport.size > 1
        # writer None: the run was already complete, nothing to do
        done = first_round - 1 if writer is not None else cfg.rounds
        self.last = Completed(done, su.state, pending, client_states=client_states)
        self.resync = True  # the first round (also after a resume) sends the full state
        self.skipped: dict[int, str] = {}  # this round's clients left out for a non-finite update
        self.t_start = time.perf_counter()

    def control(self) -> np.ndarray:
        """The control block: (next round, flags, evaluation split), or (last round, STOP|DONE, split): the
        last completed round's model is evaluated during the next round, or after the last one."""
        ctrl = np.zeros(control_size(self.transport.size), dtype=np.int64)
        world = self.transport.size
        if self.last.round >= self.cfg.rounds:
            ctrl[:2] = self.last.round, FLAG_DONE
            samples = np.zeros(world)
        elif self.last.stop_requested:
            ctrl[:2] = self.last.round, FLAG_STOP
            return ctrl  # the unevaluated row travels in the checkpoint
        else:
            ctrl[:2] = self.last.round + 1, FLAG_FULL_STATE if (not self.masks_down or self.resync) else 0
            samples = trained_samples(self.cfg, self.su, world, plan_round(self.cfg, self.su, self.transport,
                                                                           ctrl).assignment)
        self.bounds = None
        if self.last.pending is not None and self._due(self.last.pending["round"]):
            self.bounds = self.balancer.plan(samples, samples > 0)
            ctrl[_BOUNDS:] = self.bounds
        return ctrl

    def _due(self, r: int) -> bool:
        return bool(self.cfg.eval_every and r % self.cfg.eval_every == 0 or r == self.cfg.rounds)

    def aggregate(self, plan: Plan, got: Gathered, state: dict) -> tuple[list, dict]:
        with self.timer("decode_aggregate"):
            messages, new_state, self.skipped = decode_uploads(self.su, got.buffers, plan, state, self.cfg,
                                                               ranks=list(range(len(got.buffers))))
        by_client = {m.header.client_id: r for r, m in messages}
        for cid, why in self.skipped.items():
            self.log(f"round {plan.round}: skipped client {cid} (rank {by_client[cid]}): {why}", flush=True)
        if len(self.skipped) == len(messages):
            self.log(f"round {plan.round}: every client's update was skipped; the global model is unchanged",
                     flush=True)
        return messages, new_state

    def flush_pending(self) -> None:
        """Hand the last completed round's row to the hooks now when it is not to be evaluated (else that
        happens once this round's rank reports hold the evaluation: `evaluated`)."""
        row = self.last.pending
        if row is None or self.bounds is not None:
            return
        row["test_accuracy"] = row["test_loss"] = math.nan
        self._row_ready()

    def _row_ready(self) -> None:
        row, self.last.pending = self.last.pending, None
        for h in self.hooks:
            h.row_ready(row)

    def evaluated(self, table: np.ndarray, samples: np.ndarray | None = None) -> None:
        """The planned evaluation is in the rank reports `table` (its last columns): complete the pending row.
        `samples`: what each rank trained this round, to update the balancer's speed estimates."""
        if self.bounds is None:
            return
        cols = table[:, table.shape[1] - self.shard.row_size():]
        self.last.pending["test_accuracy"], self.last.pending["test_loss"] = self.shard.combine(cols)
        self.balancer.measured(self.bounds, table[:, PHASES.index("evaluate")],
                               np.zeros(len(table)) if samples is None else samples,
                               table[:, PHASES.index("local_train")])
        self.bounds = None
        self._row_ready()

    def complete(self, plan: Plan, messages: list, table: np.ndarray, report_bytes: int, wall: float,
                 mismatched: list[int], state: dict) -> None:
        """The round is complete only now: state, row and round number change together (after the previous
        round's row, evaluated during this round)."""
        self.evaluated(table, trained_samples(self.cfg, self.su, self.transport.size, plan.assignment))
        table = table[:, :_STOP + 1]
        stop = bool(table[:, _STOP].any())
        row = _round_row(plan, messages, table, report_bytes, wall, resync=self.masks_down and plan.full_state
                         and plan.round > 1, mismatched=len(mismatched), skipped=self.skipped)
        if mismatched:
            self.log(f"round {plan.round}: model digest differs on rank(s) {mismatched}; full float32 resync "
                     f"next round", flush=True)
        self.resync = bool(mismatched)
        if self.client_states is not None:
            self.client_states.commit(self.skipped)
        self.last = Completed(plan.round, state, row, stop and plan.round < self.cfg.rounds, self.client_states)
        for h in self.hooks:
            h.round_completed(self.last)

    def stop_now(self, why: str) -> None:
        """Second stop signal: checkpoint the last round completed by this job, keep every row written."""
        if self.writer is None:
            return
        if self.last.round >= self.first_round:
            self.checkpoints.save(self.last, why)
        self.writer.close()

    def finish(self, state: dict) -> None:
        """Write the last row and the final model, or close the file of a stopped run."""
        cfg, done = self.cfg, self.last.round
        if self.writer is None:
            return
        if done >= cfg.rounds:
            if self.last.pending is not None:  # the final evaluation was not needed by the loop (not due)
                self.flush_pending()
            took = time.perf_counter() - self.t_start
            digest = self.writer.finalize(state_arrays(state), {"rounds_completed": cfg.rounds,
                                                                "total_seconds": took})
            self.log(f"done: {cfg.rounds} rounds in {format_duration(took)}; final_model_sha256 {digest}; "
                     f"results in {self.writer.path}", flush=True)
        else:
            self.writer.close()
            self.log(f"stopped after round {done} on request; results so far in {self.writer.path}; "
                     f"continue with --resume", flush=True)


def _round_row(plan: Plan, messages: list, table: np.ndarray, report_bytes: int, wall: float, resync: bool,
               mismatched: int, skipped: dict[int, str]) -> dict:
    """One results row (without the evaluation, which happens while the next round trains). The train loss is
    the weighted mean over the clients that were not skipped (NaN when all were)."""
    by_client = {m.header.client_id: (r_, m) for r_, m in messages}
    order = plan.sampled.tolist()
    kept = np.array([c not in skipped for c in order])
    weights = np.array([by_client[c][1].header.weight for c in order]) * kept
    losses = np.array([by_client[c][1].header.train_loss for c in order])
    ch = {c: i for i, c in enumerate(CHANNELS)}
    sent, recv = table[:, _SENT:_RECV].astype(np.int64), table[:, _RECV:_STOP].astype(np.int64)
    return {
        "round": plan.round, "skipped_clients": int((~kept).sum()),
        "train_loss": float((weights[kept] * losses[kept]).sum() / weights.sum()) if kept.any() else math.nan,
        # rank 0's view: what reached the server, what it sent down; control: sent by every rank, plus the
        # rank reports gathered at the end of the round
        "uplink_bytes": int(recv[0, ch["uplink"]]), "downlink_bytes": int(sent[0, ch["downlink"]]),
        "control_bytes": int(sent[:, ch["control"]].sum() + report_bytes),
        "state_bytes": int(sent[:, ch["state"]].sum()),
        "wall_seconds": wall, "resync": int(resync), "digest_mismatches": mismatched,
        "phase_seconds": round_phases(table[:, :_SENT], wall),
        "clients_sampled": plan.sampled, "clients_rank": np.array([by_client[c][0] for c in order]),
        "clients_uplink_bytes": np.array([by_client[c][1].nbytes for c in order]),
        "clients_train_loss": losses, "clients_skipped": (~kept).astype(np.int8),
        "rank_phase_seconds": table[:, :_SENT],
        "rank_bytes_sent": sent.sum(axis=1), "rank_bytes_received": recv.sum(axis=1),
    }
