"""The round protocol, as every rank runs it (docs/design.md, "Round protocol"):

control -> model -> evaluation share / training -> uplink -> aggregate -> (downlink: masks) relay and digest
check -> rank reports -> round complete.

Each step is a method of this rank's `Part` (run/part.py: the server's and the clients' sides behind one
interface). The model of the last completed round is evaluated during the next round, shared out over every
rank (run/eval_sharing.py); after the last round one more step evaluates the final model the same way. Between
the steps the loop fires round events (run/events.py); the watchdog, the phase timer, the stop checks, the
progress notes and fault injection are observers of them.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..algorithms import BadUpdateError
from ..comm import Transport
from ..config import Config
from ..training.block_scores import block_size_for
from .eval_sharing import Shard
from .events import Events, RoundObserver
from .faults import FaultInjection
from .part import ClientPart, Part
from .phase_timer import PhaseTimer
from .setup import build_setup
from .start import client_states, start_server
from .stop import EXIT_STOPPED, StopChecks, StopNow
from .watchdog import ProgressNotes, RoundTimeout, Watchdog


def run(cfg: Config, out_path: str, transport: Transport, log: Callable[..., None] = print,
        resume: bool = False, observers: Sequence[RoundObserver] = ()) -> int:
    """Run the federated training on this rank; returns the exit status (0, or EXIT_STOPPED after a stop).
    `observers` get every round event of this rank (e.g. the CLI's RoundTracker)."""
    events = round_events(cfg, transport, observers)
    part = open_part(cfg, out_path, transport, log, resume, events)
    ctrl = None
    try:
        while True:
            events.opening(part.next_round())
            transport.sync()
            part.timer.synced()
            ctrl = part.control()
            if ctrl.finished:
                events.opening(ctrl.round)
                part.final_evaluation(ctrl)
                break
            plan = part.plan(ctrl)
            events.started(plan.round)
            part.receive_model(plan)
            events.model_received(plan.round)
            part.evaluate(plan, after_training=False)
            events.training(plan.round)
            part.train(plan)
            part.evaluate(plan, after_training=True)
            events.uploads_ready(plan.round)
            part.uplink(plan)
            part.aggregate(plan)
            if part.relay(plan):
                events.model_rebuilt(plan.round, part.new_state)
            part.check_digests(plan)
            wall = part.build_report(plan)
            events.report_ready(plan.round)
            part.gather_reports(plan)
            events.round_done(plan.round, wall)
            part.complete(plan, wall)
    except StopNow as exc:
        part.stop_now(exc)
    except (RoundTimeout, BadUpdateError) as exc:  # keep what exists; the CLI then ends the job
        part.failed(str(exc))
        raise
    events.finishing(ctrl.round)
    part.finish()
    return EXIT_STOPPED if ctrl.stop else 0


def round_events(cfg: Config, transport: Transport, observers: Sequence[RoundObserver]) -> Events:
    """The observers of every run, in the order they act: stop checks before the watchdog (a second signal
    wins over a timeout), progress notes before the watchdog reads them."""
    notes = ProgressNotes(transport)
    events = Events([StopChecks(transport), notes, Watchdog(cfg.round_timeout, transport, notes), *observers])
    events.add(FaultInjection(transport.rank, events.poll))
    transport.poll = events.poll  # every wait of the transport checks them
    return events


def open_part(cfg: Config, out_path: str, transport: Transport, log: Callable[..., None], resume: bool,
              events: Events) -> Part:
    """Set up this rank (data, model, algorithm) and open the run: rank 0 its results file and its ServerPart,
    the other ranks their ClientPart."""
    setup = build_setup(cfg, transport, events.poll)
    timer = PhaseTimer(transport.traffic)
    shard = Shard(setup, block_size_for(cfg.eval_batch_size, setup.device))
    part_args = (cfg, setup, transport, events, timer, shard, client_states(setup))
    server = start_server(cfg, setup, transport, out_path, resume, log, part_args)
    return server if server is not None else ClientPart(*part_args)
