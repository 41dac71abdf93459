"""`fedmrn-mpi status RUN.h5`: progress of one run, also while the job is still writing the file (SWMR)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from ..results import Run, format_duration
from .front import parse_and_load

ETA_WINDOW = 5  # rounds averaged for seconds per round and the ETA


def recent_seconds_per_round(run: Run, window: int = ETA_WINDOW) -> float | None:
    """Mean wall seconds of the last `window` rounds (recent pace, not the start-up rounds)."""
    w = run.wall_seconds[-window:]
    w = w[np.isfinite(w)]
    return float(w.mean()) if w.size else None


def remaining_rounds(run: Run) -> int | None:
    """Planned minus the latest round, or None when the planned total is unknown."""
    if run.planned_rounds is None:
        return None
    return max(0, run.planned_rounds - (run.last_round or 0))


def status_lines(run: Run, now: float | None = None) -> list[str]:
    """The status report of `run` as text lines."""
    now = time.time() if now is None else now
    planned = "?" if run.planned_rounds is None else str(run.planned_rounds)
    ranks = f"{run.world_size} rank{'s' if run.world_size != 1 else ''}" if run.world_size else "? ranks"
    lines = [f"file      : {run.path}",
             f"run       : {run.name} ({run.algorithm_label}, {ranks})",
             f"round     : {run.last_round or 0} / {planned}"
             + ("" if run.rounds_done else "  (no round finished yet)")]
    final = run.final_eval
    if final:
        lines.append(f"accuracy  : {100 * final[1]:.2f}%  loss {final[2]:.4f}  (round {final[0]})")
    else:
        lines.append("accuracy  : not evaluated yet")
    spr, left = recent_seconds_per_round(run), remaining_rounds(run)
    if spr is not None:
        window = min(ETA_WINDOW, run.rounds_done)
        first = int(run.rounds[-window])
        span = f"round {first}" if window == 1 else f"rounds {first}-{run.last_round}"
        lines.append(f"s/round   : {spr:.2f}  (mean of {span})")
    else:
        lines.append("s/round   : --")
    if run.finished or left == 0:
        lines.append("ETA       : 0s (no rounds left)")
    elif spr is None or left is None:
        lines.append("ETA       : unknown" + (" (planned rounds unknown)" if left is None else ""))
    else:
        lines.append(f"ETA       : {format_duration(spr * left)}  ({left} round{'s' if left != 1 else ''} left)")
    if run.finished:
        took = f"; total {format_duration(run.total_seconds)}" if run.total_seconds is not None else ""
        lines.append(f"finished  : yes (final_model_sha256 {run.final_model_sha256}){took}")
    else:
        age = max(0.0, now - run.mtime)
        lines.append(f"finished  : no; file last modified {format_duration(age)} ago")
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedmrn-mpi status",
                                description="Progress of one run; works while the job is still writing the file.")
    p.add_argument("file", metavar="RUN.h5", help="results file")
    return p


def main_status(argv: Sequence[str]) -> int:
    """`fedmrn-mpi status RUN.h5`. Returns the exit code (2 for an unreadable file)."""
    loaded = parse_and_load(_parser(), argv, lambda a: [a.file])
    if isinstance(loaded, int):
        return loaded
    print("\n".join(status_lines(loaded[1][0])))
    return 0
