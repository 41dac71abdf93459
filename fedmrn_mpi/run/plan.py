"""What every rank derives from the control block without asking: which clients train this round and where,
how much each rank trains, and how many upload bytes each rank may send."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..algorithms import Algorithm
from ..comm import HEADER_SIZE
from ..config import Config
from ..training import assign_clients, sample_clients
from .protocol import ControlBlock
from .setup import Setup


@dataclass(frozen=True)
class Plan:
    """Round `round` as every rank knows it once the control block arrived."""

    round: int
    full_state: bool                    # the float32 state is broadcast this round
    sampled: np.ndarray                 # sorted client ids
    assignment: dict[int, list[int]]    # rank -> its client ids
    samples: np.ndarray                 # training samples (all local epochs) per rank
    upload_limits: np.ndarray           # the most upload bytes each rank may send (int64 per rank)
    evaluation: np.ndarray | None       # the evaluation blocks per rank (ControlBlock.bounds)

    def clients(self, rank: int) -> list[int]:
        return self.assignment.get(rank, [])

    def trains(self, rank: int) -> bool:
        return bool(self.assignment.get(rank))


def plan_round(cfg: Config, setup: Setup, client_ranks: list[int], world: int, ctrl: ControlBlock) -> Plan:
    """The round the control block announces (the same on every rank: everything random comes from the seed).
    Upload limits: every client's message at the payload bound, so the server refuses a larger announced size
    before allocating for it."""
    sampled = sample_clients(cfg.seed, ctrl.round, cfg.num_clients, cfg.clients_per_round)
    assignment = assign_clients(sampled, setup.sizes, client_ranks)
    samples = np.zeros(world)
    for r, clients in assignment.items():
        samples[r] = cfg.local_epochs * sum(int(setup.sizes[c]) for c in clients)
    return Plan(ctrl.round, ctrl.full_state, sampled, assignment, samples,
                upload_limits(setup.algo, assignment, world), ctrl.bounds)


def upload_limits(algo: Algorithm, assignment: dict[int, list[int]], world: int) -> np.ndarray:
    """The most upload bytes each rank may send in a round: its clients' messages at the payload bound."""
    per_message = HEADER_SIZE + algo.payload_nbytes()
    return np.array([len(assignment.get(r, [])) * per_message for r in range(world)], dtype=np.int64)
