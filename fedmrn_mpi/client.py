"""The one local-training loop shared by every algorithm (plain SGD on the algorithm's trainables)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .algorithms import Algorithm, ClientContext
from .seeds import derive_seed, torch_generator
from .stop import SIGNALS


@dataclass
class ClientResult:
    client_id: int
    payload: np.ndarray   # uint8
    seed: int
    weight: float
    train_loss: float


def make_context(root_seed: int, round_: int, client_id: int, num_samples: int, batch_size: int,
                 local_epochs: int, device: torch.device) -> ClientContext:
    """All per-(round, client) seeds come from named streams of the root seed."""
    nb = -(-num_samples // batch_size)
    return ClientContext(
        round=round_, client_id=client_id,
        noise_seed=derive_seed(root_seed, "noise", round_, client_id),
        draw_seed=derive_seed(root_seed, "draws", round_, client_id),
        num_samples=num_samples, num_batches=nb, total_steps=nb * local_epochs, device=device)


def train_client(model: nn.Module, algo: Algorithm, global_state: dict[str, torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor, ctx: ClientContext, *, root_seed: int, lr: float,
                 batch_size: int, local_epochs: int, weighting: str,
                 timer: Callable | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ClientResult:
    """Run one client's local round on its samples `x`, `y` (already on ctx.device) and encode the upload.

    `timer(phase)`, when given, is a context manager that books the time of "local_train" and "encode";
    `transform` turns stored images into model input per batch (e.g. uint8 pixels -> normalised float32).
    """
    timer = timer or (lambda phase: nullcontext())
    with timer("local_train"):
        problem, loss = _local_sgd(model, algo, global_state, x, y, ctx, root_seed, lr, batch_size, local_epochs,
                                   transform or (lambda t: t))
    with timer("encode"):
        payload = algo.encode(problem, ctx)
    weight = float(ctx.num_samples if weighting == "samples" else ctx.num_batches)
    return ClientResult(ctx.client_id, payload, ctx.noise_seed, weight, loss)


def _local_sgd(model: nn.Module, algo: Algorithm, global_state: dict[str, torch.Tensor], x: torch.Tensor,
               y: torch.Tensor, ctx: ClientContext, root_seed: int, lr: float, batch_size: int,
               local_epochs: int, transform: Callable[[torch.Tensor], torch.Tensor]):
    model.train()
    problem = algo.begin(global_state, ctx)
    leaves = list(problem.trainables.values())
    order = torch_generator(derive_seed(root_seed, "order", ctx.round, ctx.client_id))
    n = ctx.num_samples
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    step = 0
    for _ in range(local_epochs):
        perm = torch.randperm(n, generator=order).to(ctx.device)
        for b in range(ctx.num_batches):
            idx = perm[b * batch_size: (b + 1) * batch_size]
            step += 1
            SIGNALS.check()
            params = algo.materialize(problem, step, ctx)
            logits = functional_call(model, {**params, **problem.buffers}, (transform(x[idx]),))
            loss = F.cross_entropy(logits, y[idx])
            grads = torch.autograd.grad(loss, leaves)
            with torch.no_grad():
                torch._foreach_add_(leaves, grads, alpha=-lr)
                loss_sum += loss.detach()
    return problem, float(loss_sum) / max(step, 1)
