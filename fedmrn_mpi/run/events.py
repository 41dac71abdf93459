"""Round events and their observers (in the style of pfl's callbacks): the loop fires the events, observers
decide what happens. The watchdog, the phase timer, the stop checks, the progress notes, fault injection and
the CLI's round tracker are observers; none of them is written into the loop.
"""

from __future__ import annotations

from typing import Sequence


class RoundObserver:
    """Every method is optional. `round_` is the round under way (the last round for the final evaluation)."""

    def opening(self, round_: int) -> None:
        """A round (or the final evaluation) is about to be asked for: the control block is next."""

    def started(self, round_: int) -> None:
        """The round's plan is known on this rank."""

    def model_received(self, round_: int) -> None:
        """This rank holds the round's global model."""

    def training(self, round_: int) -> None:
        """This rank is about to train its clients (or to wait for the others)."""

    def uploads_ready(self, round_: int) -> None:
        """This rank's uploads are encoded; the uplink is next."""

    def model_rebuilt(self, round_: int, state: dict) -> None:
        """This rank rebuilt the new global model from the relayed uploads (downlink: masks)."""

    def report_ready(self, round_: int) -> None:
        """This rank's round report is built; the gather is next."""

    def round_done(self, round_: int, seconds: float) -> None:
        """The round's reports are gathered: the round took `seconds` on this rank."""

    def finishing(self, round_: int) -> None:
        """The loop is over (complete or stopped): only closing work follows."""

    def poll(self) -> None:
        """Called while waiting and at every local step; may raise to end the round (StopNow, RoundTimeout)."""


class Events(RoundObserver):
    """Fires each event at every observer, in order."""

    def __init__(self, observers: Sequence[RoundObserver]) -> None:
        self.observers = list(observers)

    def add(self, observer: RoundObserver) -> None:
        self.observers.append(observer)


def _fan_out(name: str):
    def fire(self: Events, *args) -> None:
        for o in self.observers:
            getattr(o, name)(*args)
    fire.__name__ = name
    fire.__doc__ = getattr(RoundObserver, name).__doc__
    return fire


for _name in ("opening", "started", "model_received", "training", "uploads_ready", "model_rebuilt",
              "report_ready", "round_done", "finishing", "poll"):
    setattr(Events, _name, _fan_out(_name))


class RoundTracker(RoundObserver):
    """The round this rank is in, for the CLI's error message (0 = set-up)."""

    def __init__(self) -> None:
        self.round = 0

    def started(self, round_: int) -> None:
        self.round = round_
