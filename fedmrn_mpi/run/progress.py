"""The round's critical path and the progress line rank 0 prints."""

from __future__ import annotations

import math

import numpy as np

from ..results import PHASES, format_bytes, format_duration
from ..results.schema import RoundRow


def progress_line(row: RoundRow, rounds: int, elapsed: float, rounds_run: int) -> str:
    r = row.round
    acc = "  --  " if math.isnan(row.test_accuracy) else f"{100 * row.test_accuracy:6.2f}%"
    loss = "  --  " if math.isnan(row.test_loss) else f"{row.test_loss:.4f}"
    table = row.ranks.phase_seconds
    busy = table[:, PHASES.index("local_train")] + table[:, PHASES.index("encode")]
    working = sorted(set(np.asarray(row.clients.rank).tolist()))  # ranks idle this round (K < P-1) excluded
    slow = max(working, key=lambda r: busy[r])
    w = busy[working]
    spread = (w.max() - w.min()) / w.mean() if w.mean() > 0 else 0.0
    return (f"round {r:4d}/{rounds}  acc {acc}  loss {loss}  train {row.train_loss:.4f}  "
            f"up {format_bytes(row.uplink_bytes)}  {row.wall_seconds:.2f} s/round  "
            f"slowest r{slow} {busy[slow]:.2f} s (spread {100 * spread:.0f}%)  "
            f"ETA {format_duration(elapsed / max(rounds_run, 1) * (rounds - r))}")


def round_phases(table: np.ndarray, wall: float) -> np.ndarray:
    """The round's critical path: local_train, encode and evaluate of the client rank that was busy longest,
    the other phases of rank 0, and idle = the rest of the wall time (so the row adds up to the round's wall
    time, except where rank 0's share of the evaluation overlapped the clients' training)."""
    row = table[0].copy()
    if table.shape[0] > 1:
        own = [PHASES.index(p) for p in ("local_train", "encode", "evaluate")]
        slow = 1 + int(np.argmax(table[1:, own].sum(axis=1)))
        row[own] = table[slow, own]
    idle = PHASES.index("idle")
    row[idle] = 0.0
    row[idle] = max(0.0, wall - row.sum())
    return row
