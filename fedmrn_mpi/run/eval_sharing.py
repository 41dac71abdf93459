"""Evaluation is no one rank's job: the test set's blocks are shared out over every rank each round.

Rank 0 decides the split (`Balancer.plan`) and sends it in the control block. Ranks that train no client this
round (rank 0 among them) evaluate their blocks as soon as the model arrives; the others after their local
training. The split gives each rank blocks in proportion to the time it has left before the slowest rank
would finish: measured seconds per block and per training sample of every rank (water filling), so busy
ranks get fewer blocks. Each rank's per-block sums travel in the rank report the round gathers anyway, and rank
0 adds the blocks in block order (training/block_scores.py): the numbers do not depend on the split.
"""

from __future__ import annotations

import numpy as np
import torch

from ..training.block_scores import combine_blocks, evaluate_blocks, num_blocks
from .setup import Setup

# a forward pass costs about a third of a training step per sample; used until a rank has evaluated once
_FORWARD_SHARE = 1 / 3
_SMOOTH = 0.5  # weight of the newest measurement in the running estimates


def split_blocks(total: int, loads: np.ndarray, per_block: np.ndarray) -> np.ndarray:
    """Boundaries (len P + 1) of contiguous block ranges, rank r taking blocks [b[r], b[r+1]): the ranks
    finish together as nearly as whole blocks allow, rank r being busy `loads[r]` seconds before it starts and
    needing `per_block[r]` seconds a block."""
    loads = np.asarray(loads, dtype=np.float64)
    per_block = np.maximum(np.asarray(per_block, dtype=np.float64), 1e-9)
    lo, hi = float(loads.min()), float(loads.max() + per_block.max() * total)
    for _ in range(100):  # bisection on the common finishing time
        mid = (lo + hi) / 2
        if np.maximum(0.0, (mid - loads) / per_block).sum() >= total:
            hi = mid
        else:
            lo = mid
    share = np.maximum(0.0, (hi - loads) / per_block)
    share *= total / share.sum() if share.sum() > 0 else 0.0
    counts = np.floor(share).astype(np.int64)
    # the blocks left by rounding down go to the ranks whose share lost most
    for r in np.argsort(-(share - counts), kind="stable")[: total - int(counts.sum())]:
        counts[r] += 1
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


class Balancer:
    """Rank 0's running estimates of every rank's evaluation and training speed, and the split they give."""

    def __init__(self, world: int, total_blocks: int, block_size: int) -> None:
        self.total, self.block_size = total_blocks, block_size
        self.per_block = np.full(world, np.nan)    # seconds per evaluation block
        self.per_sample = np.full(world, np.nan)   # seconds per training sample (one epoch)

    def plan(self, samples: np.ndarray, trains: np.ndarray) -> np.ndarray:
        """Block boundaries for a round in which rank r trains `samples[r]` samples (local epochs included);
        `trains[r]`: rank r evaluates after its training (else as soon as the model arrives)."""
        tau = _fill(self.per_sample)
        guess = _FORWARD_SHARE * self.block_size * (np.nanmean(self.per_sample)
                                                    if np.isfinite(self.per_sample).any() else 1.0)
        block = _fill(self.per_block)
        block = np.where(np.isnan(block) | (block == 0), guess, block)
        loads = np.where(trains, np.nan_to_num(tau) * samples, 0.0)
        return split_blocks(self.total, loads, block)

    def measured(self, bounds: np.ndarray, eval_seconds: np.ndarray, samples: np.ndarray,
                 train_seconds: np.ndarray) -> None:
        """Update the estimates from a round's rank reports."""
        blocks = np.diff(bounds)
        for est, work, secs in ((self.per_block, blocks, eval_seconds), (self.per_sample, samples, train_seconds)):
            ok = work > 0
            new = secs[ok] / work[ok]
            est[ok] = np.where(np.isnan(est[ok]), new, (1 - _SMOOTH) * est[ok] + _SMOOTH * new)


def _fill(values: np.ndarray) -> np.ndarray:
    """NaN entries (not measured yet) take the mean of the measured ones."""
    if np.isfinite(values).any():
        return np.where(np.isnan(values), np.nanmean(values), values)
    return np.zeros_like(values)


class Shard:
    """One rank's part: its blocks of the test set, evaluated on the model it holds."""

    def __init__(self, setup: Setup, block_size: int) -> None:
        self.setup, self.block_size = setup, block_size
        self.total = num_blocks(setup.num_test, block_size)

    def row_size(self) -> int:
        """Values this rank adds to its rank report: loss and correct count of every block."""
        return 2 * self.total

    def evaluate(self, state: dict[str, torch.Tensor], round_: int, lo: int, hi: int) -> np.ndarray:
        """Per-block (loss sums, correct counts) for blocks [lo, hi), zeros elsewhere, as one float64 row."""
        row = np.zeros(2 * self.total)
        if hi > lo:
            first, last = lo * self.block_size, min(hi * self.block_size, self.setup.num_test)
            x, y = self.setup.test_data(first, last)
            loss, correct = evaluate_blocks(self.setup.model, self.setup.algo.eval_state(state, round_), x, y,
                                            self.block_size, self.setup.eval_transform, self.setup.local.precision)
            row[lo:hi], row[self.total + lo: self.total + hi] = loss, correct
        return row

    def combine(self, table: np.ndarray) -> tuple[float, float]:
        """(accuracy, loss) from every rank's row: each block is non-zero in exactly one row."""
        sums = table.sum(axis=0)  # one non-zero term per column: exact
        return combine_blocks(sums[: self.total], sums[self.total:].astype(np.int64), self.setup.num_test)
