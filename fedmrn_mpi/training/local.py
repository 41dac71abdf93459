"""The one local-training loop shared by every algorithm (plain SGD on the algorithm's trainables)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..algorithms import Algorithm, ClientContext
from .precision import logits
from ..rng.seeds import derive_seed, torch_generator
from .bn_recalibrate import recalibrate_upload


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
    # re-estimate the BatchNorm statistics for the model the server rebuilds from the upload, and send those
    # (training/bn_recalibrate.py); server_lr is the run's, which that rebuild applies
    bn_recalibrate: bool = False
    server_lr: float = 1.0
    precision: str = "fp32"  # "bf16": forward and backward under autocast (training/precision.py)

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
        run = ClientRun(model, algo, global_state, x, y, ctx, settings)
        train_steps(model, [run], settings)
    with timer("encode"):
        return run.result()


StepGroup = Callable[[nn.Module, "list[ClientRun]", list, LocalTraining], list]


class ClientRun:
    """One client's local round in progress: its local problem (`algo.begin`), optimiser (SGD, Adam for the
    trainables that ask), batch order (its own "order" generator) and augmentation generator (stream
    "augment"), the step counter and the float64 loss sum. `train_steps` drives one or many of them."""

    def __init__(self, model: nn.Module, algo: Algorithm, global_state: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, ctx: ClientContext, settings: LocalTraining, offset: int = 0) -> None:
        """`x`, `y`: the client's samples, or (several clients side by side) a tensor holding every client's
        samples, of which this client's are the `ctx.num_samples` rows from `offset` on."""
        self.algo, self.x, self.y, self.ctx, self.settings, self.offset = algo, x, y, ctx, settings, offset
        self.model, self.global_state = model, global_state
        self.problem = problem = algo.begin(global_state, ctx)
        names = list(problem.trainables)
        self.leaves = leaves = list(problem.trainables.values())
        self.sgd = [i for i, n in enumerate(names) if not algo.uses_adam(n)]
        sgd_set = set(self.sgd)
        self.adam_idx = [i for i in range(len(names)) if i not in sgd_set]
        self.adam = _Adam([leaves[i] for i in self.adam_idx], settings.lr)
        self.sgd_leaves = [leaves[i] for i in self.sgd]
        self.order = self._order_generator()
        # A generator of its own per (round, client): the augmentation of a client's batches depends neither on
        # the batch order stream nor on which clients this rank trained before (or with). None: nothing is
        # created or drawn.
        self.augment_gen = self._augment_generator()
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        self.step = 0
        self._indices = self._batch_indices()
        self.pending: torch.Tensor | None = next(self._indices, None)   # rows of x, y of the next step

    def _order_generator(self) -> torch.Generator:
        ctx = self.ctx
        return torch_generator(derive_seed(self.settings.root_seed, "order", ctx.round, ctx.client_id))

    def _augment_generator(self) -> torch.Generator | None:
        ctx = self.ctx
        return (torch_generator(derive_seed(self.settings.root_seed, "augment", ctx.round, ctx.client_id))
                if self.settings.augment is not None else None)

    def _batch_indices(self, epochs: int | None = None, order: torch.Generator | None = None
                       ) -> Iterator[torch.Tensor]:
        """Rows of x, y for every step: per epoch a permutation from the "order" generator (shifted by
        `offset`), cut into batches of `batch_size` (the last one may be short)."""
        n, bs = self.ctx.num_samples, self.settings.batch_size
        order = self.order if order is None else order
        for _ in range(self.settings.local_epochs if epochs is None else epochs):
            perm = torch.randperm(n, generator=order)
            if self.offset:
                perm += self.offset
            perm = perm.to(self.ctx.device)
            for b in range(self.ctx.num_batches):
                yield perm[b * bs: (b + 1) * bs]

    def first_epoch_inputs(self) -> Iterator[torch.Tensor]:
        """The model inputs of the client's first local epoch once more, batch by batch: the same permutation
        and augmentation as in training, from fresh generators of the same (round, client) seeds."""
        augment, gen = self.settings.augment, self._augment_generator()
        for idx in self._batch_indices(1, self._order_generator()):
            xb = self.x[idx] if augment is None else augment(self.x[idx], gen)
            yield self.settings.transform(xb)

    def next_params(self) -> dict[str, torch.Tensor]:
        """Start the next step: the algorithm's parameters for it (`materialize`)."""
        self.step += 1
        return self.algo.materialize(self.problem, self.step, self.ctx)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's stored images (augmented with the client's generator, not yet transformed) and labels."""
        idx, augment = self.pending, self.settings.augment
        xb = self.x[idx] if augment is None else augment(self.x[idx], self.augment_gen)
        return xb, self.y[idx]

    def advance(self) -> None:
        """Move on to the next batch (None after the last step)."""
        self.pending = next(self._indices, None)

    def result(self) -> ClientResult:
        """Encode the upload after the last step (with `bn_recalibrate`, BatchNorm statistics re-estimated for
        the model the upload rebuilds; the caller books this under "encode")."""
        ctx, settings = self.ctx, self.settings
        payload = self.algo.encode(self.problem, ctx)
        if settings.bn_recalibrate:
            payload = recalibrate_upload(self.model, self.algo, payload, ctx, self.problem.buffers,
                                         self.global_state, settings.server_lr, self.first_epoch_inputs(),
                                         settings.poll)
        weight = float(ctx.num_samples if settings.weighting == "samples" else ctx.num_batches)
        return ClientResult(ctx.client_id, payload, ctx.noise_seed, weight, self.mean_loss())

    def mean_loss(self) -> float:
        return float(self.loss_sum) / max(self.step, 1)


def train_steps(model: nn.Module, runs: list[ClientRun], settings: LocalTraining,
                step_group: StepGroup | None = None) -> None:
    """The local SGD loop, for one client or many side by side.

    At each step every client that still has a batch takes one step; `settings.poll()` is called once per step.
    The clients of a step are grouped by batch size (a short last batch forms its own group; nothing is ever
    padded). A group of one client runs a plain `functional_call` forward and backward; a larger group goes
    through `step_group(model, group, params, settings) -> [(grads, loss) per client]` (the vectorised step of
    `training.batched`; `params`: each client's materialized parameters; the loss may come as float64). Then
    each client takes its SGD (and Adam) step on its own leaves and adds its batch loss to its float64 sum.
    """
    model.train()
    lr = settings.lr
    while True:
        active = [r for r in runs if r.pending is not None]
        if not active:
            return
        if settings.poll is not None:
            settings.poll()
        groups: dict[int, list[ClientRun]] = {}
        for r in active:
            groups.setdefault(int(r.pending.shape[0]), []).append(r)
        for group in groups.values():
            params = [r.next_params() for r in group]
            if len(group) == 1 or step_group is None:
                out = [_forward_backward(model, r, p, settings) for r, p in zip(group, params)]
            else:
                out = step_group(model, group, params, settings)
            with torch.no_grad():
                # one foreach call for the SGD leaves of the whole group (elementwise: the same values as
                # per client), then each client's Adam
                sgd_leaves = [t for r in group for t in r.sgd_leaves]
                sgd_grads = [g[i] for r, (g, _) in zip(group, out) for i in r.sgd]
                if sgd_leaves:
                    torch._foreach_add_(sgd_leaves, sgd_grads, alpha=-lr)
                for r, (grads, _) in zip(group, out):
                    if r.adam.params:
                        r.adam.step([grads[i] for i in r.adam_idx])
                # the float64 loss sums (a float32 loss is widened exactly, as by `+=`)
                torch._foreach_add_([r.loss_sum for r in group], [loss.detach() for _, loss in out])
            for r in group:
                r.advance()


def _forward_backward(model: nn.Module, run: ClientRun, params: dict[str, torch.Tensor], settings: LocalTraining):
    """One client's forward (train mode: BN statistics update `run.problem.buffers` in place) and gradients."""
    xb, yb = run.batch()
    loss = F.cross_entropy(logits(model, {**params, **run.problem.buffers}, settings.transform(xb),
                                  settings.precision), yb)
    return torch.autograd.grad(loss, run.leaves), loss


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
