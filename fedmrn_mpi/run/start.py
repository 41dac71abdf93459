"""Opening a run on rank 0: fresh or resumed, the results file and its environment attributes, the hooks."""

from __future__ import annotations

import os
from typing import Callable


from .. import __version__
from ..comm import Transport
from ..compat import torch_range_note
from ..config import Config
from ..results.schema import PARTITION, PARTITION_LABEL_COUNTS, PARTITION_SIZES
from .client_states import ClientStates
from .evaluation import Shard
from .hooks import CheckpointHook, ProgressHook, ResultsHook
from .progress import PhaseTimer
from .resume import plan_start
from .roles import ServerPart
from .setup import Setup, environment_attrs, rank_facts, ranks_text


def start_server(cfg: Config, su: Setup, transport: Transport, timer: PhaseTimer, out_path: str, resume: bool,
                 log: Callable[..., None], shard: Shard) -> ServerPart | None:
    """Every rank calls this (it gathers each rank's facts); rank 0 gets its ServerPart, the others None."""
    facts = rank_facts(su, transport)
    if not transport.is_server:
        return None
    start = plan_start(cfg, out_path, resume)
    if start.note:
        log(f"fedmrn_mpi: {start.note}", flush=True)
    checkpoints = CheckpointHook(cfg, out_path, log)
    states = client_states(su)
    if start.complete:
        return ServerPart(cfg, su, transport, timer, None, checkpoints, [], cfg.rounds + 1, None, log, states, shard)
    from ..results import ResultsWriter  # rank 0 only: client ranks never load h5py
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    attrs = environment_attrs(cfg, su, transport, facts)
    if start.state is not None:
        su.state = {n: t.to(su.device) for n, t in start.state.items()}
        if states is not None:
            states.load(start.client_states)
        writer = ResultsWriter.reopen(out_path, start.rows, attrs, transport.size)
    else:
        static = {f"{PARTITION}/{PARTITION_SIZES}": su.sizes, f"{PARTITION}/{PARTITION_LABEL_COUNTS}": su.label_counts}
        writer = ResultsWriter(out_path, attrs, cfg.clients_per_round, transport.size, static)
    log(f"fedmrn_mpi {__version__}: {cfg.algorithm.name} on {cfg.data.name}/{cfg.model.name}, "
        f"{cfg.num_clients} clients ({cfg.clients_per_round}/round), {cfg.rounds} rounds, "
        f"{transport.size} rank(s), {attrs['threads_per_rank']} thread(s)/rank, downlink {cfg.algorithm.downlink}; "
        f"{su.spec.num_masked} masked + {su.spec.num_unmasked} unmasked values, "
        f"upload {'<= ' if su.algo.variable_payload else ''}{su.algo.payload_nbytes()} B/client; results -> {out_path}")
    log(f"devices: {ranks_text(attrs['rank_devices'])}", flush=True)
    if note := torch_range_note():  # the torch_version attribute records it too; this says it at the start
        log(f"fedmrn_mpi: {note}", flush=True)
    hooks = [ResultsHook(writer), ProgressHook(cfg, start.round, log)]
    return ServerPart(cfg, su, transport, timer, writer, checkpoints, hooks, start.round, start.pending, log, states,
                      shard)


def client_states(su: Setup) -> ClientStates | None:
    """The per-client state store, on every rank, when the algorithm keeps per-client state."""
    shapes = su.algo.client_state_shapes()
    return ClientStates(shapes) if shapes else None
