"""Test-set evaluation of a global state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


@torch.no_grad()
def evaluate(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1000, transform=lambda t: t) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of `state` (BatchNorm in eval mode, running statistics)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        xb, yb = transform(x[i: i + batch_size]), y[i: i + batch_size]
        logits = functional_call(model, state, (xb,))
        loss += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(1) == yb).sum()
    n = max(int(x.shape[0]), 1)
    return float(correct) / n, float(loss) / n
