"""Opening a run on rank 0: fresh or resumed, the results file and its environment attributes, the hooks."""

from __future__ import annotations

import os
from typing import Callable


from .. import __version__
from ..comm import Transport
from ..compat import torch_range_note
from ..config import Config
from ..results.schema import PARTITION, PARTITION_LABEL_COUNTS, PARTITION_SIZES, RANK_DEVICES, THREADS_PER_RANK
from .client_states import ClientStates
from .hooks import CheckpointHook, ProgressHook, ResultsHook
from .resume import plan_start
from .server import ServerPart
from .setup import Setup, environment_attrs, rank_facts, ranks_text


def start_server(cfg: Config, setup: Setup, transport: Transport, out_path: str, resume: bool,
                 log: Callable[..., None], part_args: tuple) -> ServerPart | None:
    """Every rank calls this (it gathers each rank's facts); rank 0 gets its ServerPart (built from
    `part_args`, run/part.py), the others None."""
    facts = rank_facts(setup, transport)
    if not transport.is_server:
        return None
    start = plan_start(cfg, out_path, resume)
    if start.note:
        log(f"fedmrn_mpi: {start.note}", flush=True)
    checkpoints = CheckpointHook(cfg, out_path, log)
    states = part_args[-1]
    if start.complete:
        return ServerPart(*part_args, writer=None, checkpoints=checkpoints, hooks=[], first_round=cfg.rounds + 1,
                          pending=None, log=log)
    from ..results import ResultsWriter  # rank 0 only: client ranks never load h5py
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    attrs = environment_attrs(cfg, setup, transport, facts)
    if start.state is not None:
        setup.state = {n: t.to(setup.device) for n, t in start.state.items()}
        if states is not None:
            states.load(start.client_states)
        writer = ResultsWriter.reopen(out_path, start.rows, attrs, transport.size)
    else:
        static = {f"{PARTITION}/{PARTITION_SIZES}": setup.sizes, f"{PARTITION}/{PARTITION_LABEL_COUNTS}": setup.label_counts}
        writer = ResultsWriter(out_path, attrs, cfg.clients_per_round, transport.size, static)
    log(f"fedmrn_mpi {__version__}: {cfg.algorithm.name} on {cfg.data.name}/{cfg.model.name}, "
        f"{cfg.num_clients} clients ({cfg.clients_per_round}/round), {cfg.rounds} rounds, "
        f"{transport.size} rank(s), {attrs[THREADS_PER_RANK]} thread(s)/rank, downlink {cfg.algorithm.downlink}; "
        f"{setup.spec.num_masked} masked + {setup.spec.num_unmasked} unmasked values, "
        f"upload {'<= ' if setup.algo.variable_payload else ''}{setup.algo.payload_nbytes()} B/client; results -> {out_path}")
    log(f"devices: {ranks_text(attrs[RANK_DEVICES])}", flush=True)
    if note := torch_range_note():  # the torch_version attribute records it too; this says it at the start
        log(f"fedmrn_mpi: {note}", flush=True)
    hooks = [ResultsHook(writer), ProgressHook(cfg, start.round, log)]
    return ServerPart(*part_args, writer=writer, checkpoints=checkpoints, hooks=hooks, first_round=start.round,
                      pending=start.pending, log=log)


def client_states(setup: Setup) -> ClientStates | None:
    """The per-client state store, on every rank, when the algorithm keeps per-client state."""
    shapes = setup.algo.client_state_shapes()
    return ClientStates(shapes) if shapes else None
