"""Test-set evaluation of a global state, in fixed blocks so that any split of the blocks over ranks gives the
same numbers.

The test set is cut into blocks of `block_size` consecutive samples (the last may be shorter). A block is
always one forward pass of exactly those samples, its loss summed in float32 by cross-entropy and widened to
float64, its correct predictions counted. Accuracy and loss add the blocks in block order, so who evaluated
which block never changes a bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .precision import logits

#: test images per forward pass when the config says 0: activations of 100 CNN4 images stay in a CPU core's
#: cache (1,000 ran at 1,935 images/s on one core against 3,625 at 100); GPUs want larger batches
CPU_BLOCK, CUDA_BLOCK = 100, 1000


def block_size_for(setting: int, device: torch.device) -> int:
    """The evaluation block size: `setting`, or the device's default when it is 0."""
    return setting or (CUDA_BLOCK if device.type == "cuda" else CPU_BLOCK)


def num_blocks(num_samples: int, block_size: int) -> int:
    return -(-num_samples // block_size)


@torch.no_grad()
def evaluate_blocks(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    block_size: int, transform=lambda t: t, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Per block of `x`/`y` (which start at a block boundary): the summed cross-entropy (float64) and the
    number of correct predictions (int64), BatchNorm in eval mode; the forward under `precision`."""
    model.eval()
    n = num_blocks(int(x.shape[0]), block_size)
    loss = torch.zeros(n, dtype=torch.float64, device=x.device)
    correct = torch.zeros(n, dtype=torch.int64, device=x.device)
    for b in range(n):
        sl = slice(b * block_size, (b + 1) * block_size)
        out = logits(model, state, transform(x[sl]), precision)
        yb = y[sl]
        loss[b] = F.cross_entropy(out, yb, reduction="sum").double()
        correct[b] = (out.argmax(1) == yb).sum()
    return loss.cpu().numpy(), correct.cpu().numpy()


def combine_blocks(loss: np.ndarray, correct: np.ndarray, num_samples: int) -> tuple[float, float]:
    """(accuracy, mean loss) from every block's sums, added in block order."""
    n = max(int(num_samples), 1)
    total = 0.0
    for v in np.asarray(loss, dtype=np.float64).tolist():  # left to right, whatever numpy's pairwise sum does
        total += v
    return float(int(np.asarray(correct, dtype=np.int64).sum())) / n, total / n


def evaluate(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1000, transform=lambda t: t) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of `state` on the whole of `x`/`y`, in blocks of `batch_size`."""
    loss, correct = evaluate_blocks(model, state, x, y, batch_size, transform)
    return combine_blocks(loss, correct, int(x.shape[0]))
