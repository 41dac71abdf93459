"""The round loop run by every rank: control -> downlink -> local training -> uplink -> decode/aggregate ->
(downlink: masks) relay and digest check -> rank reports -> after-round hooks on the server.

Rank 0 evaluates the model it has just broadcast while the clients train, so evaluation costs no client
time; the round's results row is written once that evaluation is done.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..comm import FlatState, Transport
from ..comm.flat_state import state_arrays
from ..config import Config
from ..results import state_sha256
from .faults import maybe_corrupt_state, maybe_inject_fault, maybe_signal_at_exit
from .progress import PhaseTimer
from .roles import FLAG_DONE, FLAG_STOP, ClientPart, ServerPart, plan_round
from .setup import prepare
from .start import client_states, start_server
from .stop import EXIT_STOPPED, SIGNALS, StopNow

CURRENT_ROUND = [0]  # read by the CLI's error handler: which round failed
EMPTY = np.empty(0, dtype=np.uint8)


def run(cfg: Config, out_path: str, transport: Transport, log: Callable[..., None] = print,
        resume: bool = False) -> int:
    """Run the federated training on this rank; returns the exit status (0, or EXIT_STOPPED after a stop)."""
    transport.poll = stop_poll(transport)
    su = prepare(cfg, transport, transport.poll)
    timer = PhaseTimer()
    server = start_server(cfg, su, transport, timer, out_path, resume, log)
    client = ClientPart(cfg, su, transport, timer) if transport.runs_clients else None
    states = server.client_states if server else client_states(su)
    masks_down = cfg.algorithm.downlink == "masks" and transport.size > 1
    flat, state, ctrl = FlatState(su.spec.shapes), su.state, np.zeros(2, dtype=np.int64)
    try:
        while True:
            if server is not None:
                ctrl = server.control()
            transport.sync()
            t0, traffic0 = time.perf_counter(), transport.traffic.snapshot()
            with timer("broadcast"):
                transport.bcast(ctrl, "downlink")
            if ctrl[1] & (FLAG_DONE | FLAG_STOP):
                break
            plan = plan_round(cfg, su, transport, ctrl)
            CURRENT_ROUND[0] = plan.round
            if plan.full_state:
                with timer("broadcast"):
                    transport.bcast(flat.pack(state) if server else flat.buf, "downlink")
                    state = state if server else flat.unpack(su.device)
            if server is not None:
                server.flush_pending(state)  # evaluate the model just broadcast while the clients train
            maybe_inject_fault(transport.rank, plan.round, transport.poll, lambda: SIGNALS.requested)
            if states is not None:  # per-client state goes to the rank that trains the client
                with timer("broadcast"):
                    held = states.send(transport, plan.assignment)
            mine, new_held = client.train(plan, state, held if states else None) if client else (EMPTY, {})
            transport.sync()
            with timer("gather"):
                got = transport.gather(mine, "uplink")
                if states is not None:
                    states.collect(transport, new_held)
            messages, new_state = server.aggregate(plan, got, state) if server else ([], state)
            if masks_down:  # every rank rebuilds the same global model from the relayed uploads
                with timer("broadcast"):
                    relay = transport.bcast_bytes(got.data if server else None, "downlink")
                new_state = new_state if server else client.rebuild(plan, relay, state)
                new_state = maybe_corrupt_state(transport.rank, plan.round, new_state)
            mismatched = []
            if masks_down and (plan.round % cfg.sync_every == 0 or plan.round == cfg.rounds):
                with timer("broadcast"):
                    mismatched = digests_differ(transport, new_state)
            wall = time.perf_counter() - t0
            report = np.concatenate([timer.take(wall), transport.traffic.snapshot() - traffic0,
                                     [float(SIGNALS.requested)]])
            table = transport.gather_rows(report)
            state = new_state
            if server is not None:
                server.complete(plan, messages, table, report.nbytes * (transport.size - 1), wall, mismatched,
                                state)
    except StopNow as exc:
        stop_now(exc, server, transport, log)
    SIGNALS.ignore()  # the stop is accepted or the run is over: later signals must not change the exit status
    transport.poll = None
    maybe_signal_at_exit(transport.rank)
    if server is not None:
        server.finish(state)
    return EXIT_STOPPED if ctrl[1] & FLAG_STOP else 0


def stop_poll(transport: Transport) -> Callable[[], None]:
    """Called while waiting and at every local step: a second stop signal, here or on a client rank (which
    tells rank 0 point-to-point), ends the round at once."""
    def poll() -> None:
        SIGNALS.check()
        if transport.is_server and (r := transport.server_notified()) is not None:
            raise StopNow(f"a second stop signal reached rank {r}")
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
