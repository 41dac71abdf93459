"""Running a job: set-up, the round protocol (one interface for the server's and the clients' parts), the loop
and its observers, after-round hooks, checkpoints and resume planning, stop signals and fault injection."""

from .events import RoundTracker
from .loop import run

__all__ = ["RoundTracker", "run"]
