"""The one local-training loop shared by every algorithm (plain SGD on the algorithm's trainables)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..algorithms import Algorithm, ClientContext
from ..rng.seeds import derive_seed, torch_generator


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class LocalTraining:
    """The settings of every client's local round (from the config, the same for all clients of a run)."""

    root_seed: int
    lr: float
    batch_size: int
    local_epochs: int
    weighting: str = "samples"  # aggregation weight: "samples" or "batches"
    # stored images -> model input, per batch (e.g. uint8 pixels -> normalised float32)
    transform: Callable[[torch.Tensor], torch.Tensor] = field(default=_identity, compare=False)
    # called once per local step; may raise to abandon the round (e.g. an urgent stop request)
    poll: Callable[[], None] | None = field(default=None, compare=False)
    # stored images of a batch -> augmented images, before `transform` (e.g. data.augment.crop_flip); its
    # randomness comes from the generator it is given, one per (round, client) from the stream "augment"
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = field(default=None, compare=False)

    def context(self, round_: int, client_id: int, num_samples: int, device: torch.device) -> ClientContext:
        """All per-(round, client) seeds come from named streams of the root seed."""
        nb = -(-num_samples // self.batch_size)
        return ClientContext(
            round=round_, client_id=client_id,
            noise_seed=derive_seed(self.root_seed, "noise", round_, client_id),
            draw_seed=derive_seed(self.root_seed, "draws", round_, client_id),
            num_samples=num_samples, num_batches=nb, total_steps=nb * self.local_epochs, device=device)


@dataclass
class ClientResult:
    client_id: int
    payload: np.ndarray   # uint8
    seed: int
    weight: float
    train_loss: float


def train_client(model: nn.Module, algo: Algorithm, global_state: dict[str, torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor, ctx: ClientContext, settings: LocalTraining,
                 timer: Callable | None = None) -> ClientResult:
    """Run one client's local round on its samples `x`, `y` (already on ctx.device) and encode the upload.

    `timer(phase)`, when given, is a context manager that books the time of "local_train" and "encode".
    """
    timer = timer or (lambda phase: nullcontext())
    with timer("local_train"):
        problem, loss = _local_sgd(model, algo, global_state, x, y, ctx, settings)
    with timer("encode"):
        payload = algo.encode(problem, ctx)
    weight = float(ctx.num_samples if settings.weighting == "samples" else ctx.num_batches)
    return ClientResult(ctx.client_id, payload, ctx.noise_seed, weight, loss)


def _local_sgd(model: nn.Module, algo: Algorithm, global_state: dict[str, torch.Tensor], x: torch.Tensor,
               y: torch.Tensor, ctx: ClientContext, settings: LocalTraining):
    model.train()
    problem = algo.begin(global_state, ctx)
    names = list(problem.trainables)
    leaves = list(problem.trainables.values())
    sgd = [i for i, n in enumerate(names) if not algo.uses_adam(n)]
    sgd_set = set(sgd)
    adam = _Adam([leaves[i] for i in range(len(names)) if i not in sgd_set], settings.lr)
    order = torch_generator(derive_seed(settings.root_seed, "order", ctx.round, ctx.client_id))
    augment = settings.augment
    # A generator of its own per (round, client): the augmentation of a client's batches depends neither on the
    # batch order stream nor on which clients this rank trained before. None: nothing is created or drawn.
    augment_gen = (torch_generator(derive_seed(settings.root_seed, "augment", ctx.round, ctx.client_id))
                   if augment is not None else None)
    n, bs, lr = ctx.num_samples, settings.batch_size, settings.lr
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    step = 0
    for _ in range(settings.local_epochs):
        perm = torch.randperm(n, generator=order).to(ctx.device)
        for b in range(ctx.num_batches):
            idx = perm[b * bs: (b + 1) * bs]
            step += 1
            if settings.poll is not None:
                settings.poll()
            params = algo.materialize(problem, step, ctx)
            xb = x[idx] if augment is None else augment(x[idx], augment_gen)
            logits = functional_call(model, {**params, **problem.buffers}, (settings.transform(xb),))
            loss = F.cross_entropy(logits, y[idx])
            grads = torch.autograd.grad(loss, leaves)
            with torch.no_grad():
                if adam.params:
                    torch._foreach_add_([leaves[i] for i in sgd], [grads[i] for i in sgd], alpha=-lr)
                    adam.step([g for i, g in enumerate(grads) if i not in sgd_set])
                else:
                    torch._foreach_add_(leaves, grads, alpha=-lr)
                loss_sum += loss.detach()
    return problem, float(loss_sum) / max(step, 1)


class _Adam:
    """Adam (β = 0.9, 0.999, ε = 1e-8) on a list of leaves as a few foreach ops; moments start at zero every
    round, since a client's local problem is rebuilt each round (for the algorithms that ask for it)."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, (self.b1, self.b2), self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        torch._foreach_mul_(self.m, self.b1)
        torch._foreach_add_(self.m, grads, alpha=1 - self.b1)
        torch._foreach_mul_(self.v, self.b2)
        torch._foreach_addcmul_(self.v, grads, grads, value=1 - self.b2)
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, (1 - self.b2 ** self.t) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.m, denom, value=-self.lr / (1 - self.b1 ** self.t))
