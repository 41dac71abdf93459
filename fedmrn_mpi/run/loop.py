"""The round loop run by every rank: control -> downlink -> local training -> uplink -> decode/aggregate ->
(downlink: masks) relay and digest check -> rank reports -> after-round hooks on the server.

The model of the last completed round is evaluated during the next round, its test set shared out over every
rank (run/evaluation.py): ranks with no client this round evaluate as soon as the model arrives, the others
after their local training; the per-block sums ride in the end-of-round rank reports. After the last round one
more broadcast and gather evaluate the final model the same way.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..algorithms import BadUpdateError
from ..comm import FlatState, Transport
from ..comm.flat_state import state_arrays
from ..config import Config
from ..results import state_sha256
from .faults import maybe_corrupt_state, maybe_inject_fault, maybe_signal_at_exit
from .progress import PhaseTimer
from ..training.evaluate import block_size_for
from .evaluation import Shard
from .roles import (FLAG_DONE, FLAG_STOP, ClientPart, ServerPart, control_size, eval_bounds, plan_round,
                    upload_limits)
from .setup import prepare
from .start import client_states, start_server
from .stop import EXIT_STOPPED, SIGNALS, StopNow
from .watchdog import MODEL, REPORT, UPLOADS, RoundTimeout, Watchdog

CURRENT_ROUND = [0]  # read by the CLI's error handler: which round failed
EMPTY = np.empty(0, dtype=np.uint8)
EMPTY_ROW = np.empty(0)


def run(cfg: Config, out_path: str, transport: Transport, log: Callable[..., None] = print,
        resume: bool = False) -> int:
    """Run the federated training on this rank; returns the exit status (0, or EXIT_STOPPED after a stop)."""
    watchdog = Watchdog(cfg.round_timeout, transport)
    transport.poll = stop_poll(transport, watchdog)
    su = prepare(cfg, transport, transport.poll)
    timer = PhaseTimer()
    shard = Shard(su, block_size_for(cfg.eval_batch_size, su.device))
    server = start_server(cfg, su, transport, timer, out_path, resume, log, shard)
    client = ClientPart(cfg, su, transport, timer) if transport.runs_clients else None
    states = server.client_states if server else client_states(su)
    masks_down = cfg.algorithm.downlink == "masks" and transport.size > 1
    flat, state, ctrl = FlatState(su.spec.shapes), su.state, np.zeros(control_size(transport.size), dtype=np.int64)
    try:
        while True:
            if server is not None:
                ctrl = server.control()
            watchdog.start(int(ctrl[0]) if server is not None else watchdog.round + 1)
            transport.sync()
            t0, traffic0 = time.perf_counter(), transport.traffic.snapshot()
            with timer("broadcast"):
                transport.bcast(ctrl, "downlink")
            bounds = eval_bounds(ctrl)
            if ctrl[1] & (FLAG_DONE | FLAG_STOP):
                watchdog.start(int(ctrl[0]))
                if bounds is not None:
                    state = final_evaluation(transport, flat, state, shard, bounds, int(ctrl[0]), timer, server,
                                             su.device)
                break
            plan = plan_round(cfg, su, transport, ctrl)
            CURRENT_ROUND[0] = watchdog.round = plan.round
            if plan.full_state:
                with timer("broadcast"):
                    transport.bcast(flat.pack(state) if server else flat.buf, "downlink")
                    state = state if server else flat.unpack(su.device)
            watchdog.reached(MODEL)
            if server is not None:
                server.flush_pending()  # the last round's row, when it is not evaluated
            trains = client is not None and bool(plan.assignment.get(transport.rank))
            scores = EMPTY_ROW
            if bounds is not None and not trains:  # nothing to train: evaluate while the others train
                scores = evaluate_share(shard, state, bounds, plan.round - 1, transport.rank, timer)
            maybe_inject_fault(transport.rank, plan.round, transport.poll, lambda: SIGNALS.requested)
            if states is not None:  # per-client state goes to the rank that trains the client
                with timer("broadcast"):
                    held = states.send(transport, plan.assignment)
            mine, new_held = client.train(plan, state, held if states else None) if client else (EMPTY, {})
            if bounds is not None and trains:
                scores = evaluate_share(shard, state, bounds, plan.round - 1, transport.rank, timer)
            watchdog.reached(UPLOADS)
            transport.sync()
            with timer("gather"):
                limits = upload_limits(su, plan, transport.size)
                got = transport.gather(mine, "uplink", limit=limits)
                if states is not None:
                    states.collect(transport, new_held)
            messages, new_state = server.aggregate(plan, got, state) if server else ([], state)
            if masks_down:  # every rank rebuilds the same global model from the relayed uploads
                with timer("broadcast"):
                    relay = transport.bcast_bytes(got.data if server else None, "downlink", limit=int(limits.sum()))
                new_state = new_state if server else client.rebuild(plan, relay, state)
                new_state = maybe_corrupt_state(transport.rank, plan.round, new_state)
            mismatched = []
            if masks_down and (plan.round % cfg.sync_every == 0 or plan.round == cfg.rounds):
                with timer("broadcast"):
                    mismatched = digests_differ(transport, new_state)
            wall = time.perf_counter() - t0
            report = np.concatenate([timer.take(wall), transport.traffic.snapshot() - traffic0,
                                     [float(SIGNALS.requested)], scores])
            watchdog.reached(REPORT)
            table = transport.gather_rows(report)
            watchdog.done(wall)
            state = new_state
            if server is not None:
                server.complete(plan, messages, table, report.nbytes * (transport.size - 1), wall, mismatched,
                                state)
    except StopNow as exc:
        stop_now(exc, server, transport, log)
    except (RoundTimeout, BadUpdateError) as exc:  # checkpoint what exists; the CLI then ends the job
        if server is not None:
            server.stop_now(str(exc))
        raise
    SIGNALS.ignore()  # the stop is accepted or the run is over: later signals must not change the exit status
    watchdog.start(int(ctrl[0]))
    transport.poll = watchdog.check  # the final barrier must not wait forever for a stuck rank either
    maybe_signal_at_exit(transport.rank)
    if server is not None:
        server.finish(state)
    return EXIT_STOPPED if ctrl[1] & FLAG_STOP else 0


def evaluate_share(shard: Shard, state: dict, bounds: np.ndarray, round_: int, rank: int,
                   timer: PhaseTimer) -> np.ndarray:
    """This rank's blocks of the evaluation of round `round_`'s model, as its rank-report columns."""
    with timer("evaluate"):
        return shard.evaluate(state, round_, int(bounds[rank]), int(bounds[rank + 1]))


def final_evaluation(transport: Transport, flat: FlatState, state: dict, shard: Shard, bounds: np.ndarray,
                     round_: int, timer: PhaseTimer, server: ServerPart | None, device) -> dict:
    """After the last round: every rank gets the final model and evaluates its blocks; rank 0 completes the
    last row. Returns the final state (the same on every rank)."""
    with timer("broadcast"):
        transport.bcast(flat.pack(state) if server else flat.buf, "downlink")
        state = state if server else flat.unpack(device)
    scores = evaluate_share(shard, state, bounds, round_, transport.rank, timer)
    table = transport.gather_rows(np.concatenate([timer.take(0.0), scores]))
    if server is not None:
        server.evaluated(table)
    return state


def stop_poll(transport: Transport, watchdog: Watchdog) -> Callable[[], None]:
    """Called while waiting and at every local step: a second stop signal, here or on a client rank (which
    tells rank 0 point-to-point), ends the round at once; so does a round older than round_timeout."""
    def poll() -> None:
        SIGNALS.check()
        if transport.is_server and (r := transport.server_notified()) is not None:
            raise StopNow(f"a second stop signal reached rank {r}")
        watchdog.check()
    return poll


def digests_differ(transport: Transport, state: dict) -> list[int]:
    """Ranks whose copy of the global model differs from rank 0's (SHA-256 of every tensor)."""
    digest = np.frombuffer(bytes.fromhex(state_sha256(state_arrays(state))), dtype=np.uint8)
    table = transport.allgather_rows(digest, "downlink")
    return [r for r in range(transport.size) if not np.array_equal(table[r], table[0])]


def stop_now(exc: StopNow, server: ServerPart | None, transport: Transport, log: Callable[..., None]) -> None:
    """Second signal: rank 0 checkpoints the last completed round and ends the job; a client rank tells rank 0
    and waits for that end."""
    SIGNALS.ignore()
    if server is not None:
        server.stop_now(str(exc))
        log(f"fedmrn_mpi: {exc}; run again with --resume to continue", flush=True)
    else:
        transport.notify_server()
        deadline = time.monotonic() + 60  # rank 0 checkpoints and aborts the job; this is the last resort
        while time.monotonic() < deadline:
            time.sleep(0.05)
    transport.abort(EXIT_STOPPED)
