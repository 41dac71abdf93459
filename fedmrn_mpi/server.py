"""Server side: validate and decode uploads, aggregate them in client-id order, evaluate the global model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .algorithms import Algorithm
from .wire import Message, WireError


def aggregate(algo: Algorithm, messages: list[tuple[int, Message]], global_state: dict[str, torch.Tensor],
              server_lr: float, round_: int, device: torch.device) -> dict[str, torch.Tensor]:
    """New global = w + η Σ a_k Δ_k / Σ a_k for parameters; weighted mean of values for buffers.

    `messages` holds (rank, message) pairs; they are processed in client-id order so the floating-point sums,
    and therefore the results, do not depend on which rank trained which client.
    """
    spec = algo.spec
    if not messages:
        raise WireError(f"round {round_}: no client uploads arrived")
    acc = {n: torch.zeros_like(global_state[n]) for n in spec.names}
    total = 0.0
    for rank, msg in sorted(messages, key=lambda rm: rm[1].header.client_id):
        h = msg.header
        try:
            upd = algo.decode(msg.payload, h.seed, global_state, device)
        except ValueError as exc:
            raise WireError(f"message from rank {rank}, client {h.client_id}, round {round_}: {exc}") from exc
        if not (h.weight > 0):
            raise WireError(f"message from rank {rank}, client {h.client_id}, round {round_}: weight {h.weight} <= 0")
        for name, t in (*upd.deltas.items(), *upd.buffers.items()):
            acc[name].add_(t, alpha=h.weight)
        total += h.weight
    new = {}
    for name in spec.names:
        mean = acc[name].div_(total)
        new[name] = global_state[name] + server_lr * mean if name in spec.params else mean
    return new


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
