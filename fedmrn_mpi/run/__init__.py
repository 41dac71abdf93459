"""Running a job: set-up, the round protocol (server and client parts), the loop, after-round hooks,
checkpoints and resume planning, stop signals and fault injection."""

from .loop import CURRENT_ROUND, run

__all__ = ["CURRENT_ROUND", "run"]
