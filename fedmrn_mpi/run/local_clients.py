"""The clients one rank trains in a round, and the decoding of uploads that both the server and (with
`downlink: masks`) every client rank do."""

from __future__ import annotations

import math

import numpy as np

from ..algorithms import aggregate_round
from ..comm import WireError, decode_messages, encode_message
from ..config import Config
from ..training import train_client, train_clients_batched
from .faults import bad_update_fault, poison_state
from .phase_timer import PhaseTimer
from .plan import Plan
from .setup import Setup

EMPTY = np.empty(0, dtype=np.uint8)


def decode_uploads(setup: Setup, buffers: list, plan: Plan, state: dict, cfg: Config,
                   ranks: list[int] | None = None) -> tuple[list, dict, dict[int, str]]:
    """Validate every rank's concatenated uploads and aggregate them; `ranks` names each buffer's sender
    (None: one relayed buffer holding every sampled client's upload). Returns the messages, the new state and
    the clients skipped for a non-finite update (on_bad_update=skip)."""
    messages = []
    for i, view in enumerate(buffers):
        rank = ranks[i] if ranks is not None else 0
        expected = plan.assignment.get(rank, []) if ranks is not None else plan.sampled.tolist()
        messages += [(rank, m) for m in decode_messages(view, rank=rank, round_=plan.round,
                                                        algo_id=setup.algo.algo_id, expected_clients=set(expected))]
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
    new_state, skipped = aggregate_round(setup.algo, messages, state, cfg.server_lr, plan.round, setup.device,
                                         cfg.on_bad_update)
    return messages, new_state, skipped


class LocalClients:
    """Trains the clients assigned to this rank and encodes their uploads; with `downlink: masks`, rebuilds
    the global model from the relayed uploads."""

    def __init__(self, cfg: Config, setup: Setup, rank: int, timer: PhaseTimer) -> None:
        self.cfg, self.setup, self.rank, self.timer = cfg, setup, rank, timer

    def train(self, plan: Plan, state: dict, client_states: dict[int, dict] | None = None) -> tuple[np.ndarray, dict]:
        """This rank's uploads for the round, back to back (empty if it has no client), and its clients' new
        per-client states (when the algorithm keeps any; `client_states` holds the old ones)."""
        setup, uploads, new_states = self.setup, [], {}
        clients = plan.clients(self.rank)
        ctxs = [setup.local.context(plan.round, cid, int(setup.sizes[cid]), setup.device) for cid in clients]
        for cid, ctx in zip(clients, ctxs):
            if client_states is not None:
                ctx.state = {n: t.to(setup.device) for n, t in client_states.get(cid, {}).items()}
        poison = {cid: bad_update_fault(self.rank, plan.round, cid) for cid in clients}
        if self.cfg.batched_clients and len(clients) > 1 and not any(poison.values()):
            # one vectorised computation for all of them
            results = train_clients_batched(setup.model, setup.algo, state, [setup.client_data(c) for c in clients],
                                            ctxs, setup.local, timer=self.timer)
        else:  # the reference: one after another
            results = [train_client(setup.model, setup.algo, poison_state(state) if poison[cid] == "nan" else state,
                                    *setup.client_data(cid), ctx, setup.local, timer=self.timer)
                       for cid, ctx in zip(clients, ctxs)]
        for cid, ctx, res in zip(clients, ctxs, results):
            if poison[cid] == "inf-loss":
                res.train_loss = math.inf
            with self.timer("encode"):
                uploads.append(encode_message(setup.algo.algo_id, plan.round, cid, res.seed, res.weight,
                                              res.train_loss, res.payload))
            if client_states is not None:
                new_states[cid] = ctx.state
        return np.concatenate(uploads) if uploads else EMPTY, new_states

    def rebuild(self, plan: Plan, relay: np.ndarray, state: dict) -> dict:
        """The new global state from the relayed uploads of every sampled client (same sums as rank 0)."""
        with self.timer("decode_aggregate"):
            return decode_uploads(self.setup, [memoryview(relay)], plan, state, self.cfg)[1]
