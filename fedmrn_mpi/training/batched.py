"""Many clients of a rank trained side by side: one vectorised forward and backward per step for all of them.

`train_clients_batched` returns what `train_client` returns for each client, in the same order, but drives all
clients through the shared loop (`local.train_steps`) at once. Per client, everything stays as in its sequential
run: its own `algo.begin` problem, batch order ("order" generator), augmentation generator ("augment"),
`algo.materialize` draws, SGD/Adam steps, BatchNorm statistics and loss. What is shared is the expensive part:
at each step the active clients with batches of the same size stack their materialized parameters and their
buffers (`torch.stack` keeps autograd to each client's leaves) and run one `torch.func.vmap` over
`functional_call(model, ...)` with their own batches, then one backward of the sum of their losses (loss k
depends only on client k's leaves, so each client gets its own gradients).

BatchNorm: the stacked running statistics go in as vmapped inputs, so train-mode batch statistics are computed
per client (vmap never mixes its slices) and the in-place running-stat updates land in each client's slice;
they are copied back into each client's `problem.buffers` after the forward. Clients whose batch has another
size (the short last batch, or fewer batches in all) form their own group at that step: nothing is padded,
since padding would change the batch statistics.

Results agree with the sequential path within float tolerance, not bit for bit: vmapped convolutions run as
grouped convolutions that may sum in another order. A group of one client runs exactly the sequential code.

`settings.transform` is applied once to the group's images concatenated along the batch dimension, so it must
act image by image (as the normalisation of `data.readers.normalize_images` does).
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..algorithms import Algorithm, ClientContext
from .local import ClientResult, ClientRun, LocalTraining, train_steps
from .precision import autocast, full_precision

__all__ = ["train_clients_batched"]


def train_clients_batched(model: nn.Module, algo: Algorithm, global_state: dict[str, torch.Tensor],
                          data: list[tuple[torch.Tensor, torch.Tensor]], ctxs: list[ClientContext],
                          settings: LocalTraining, timer: Callable | None = None) -> list[ClientResult]:
    """Train the clients of `ctxs` (samples `data[i] = (x, y)` on the device) as one vectorised computation and
    encode their uploads: the same results, in the same order, as `train_client` called for each in turn
    (within float tolerance), including the per-client state that `encode` updates in `ctxs[i].state`.

    `timer(phase)`, when given, books the training of all clients under "local_train" and each encode under
    "encode".
    """
    if len(data) != len(ctxs):
        raise ValueError(f"{len(data)} client data sets for {len(ctxs)} client contexts")
    timer = timer or (lambda phase: nullcontext())
    with timer("local_train"):
        # all clients' samples in one tensor (one copy per round), so that a step gathers a group's batches
        # with one indexing op; each client's batch rows are its own rows shifted by its offset
        x_all = torch.cat([x for x, _ in data]) if data else None
        y_all = torch.cat([y for _, y in data]) if data else None
        offsets = np.cumsum([0] + [len(x) for x, _ in data[:-1]]).tolist()
        runs = [ClientRun(model, algo, global_state, x_all, y_all, ctx, settings, offset=off)
                for off, ctx in zip(offsets, ctxs)]
        train_steps(model, runs, settings, step_group=vmap_step)
    results = []
    for run in runs:
        with timer("encode"):
            results.append(run.result())
    return results


def _loss(model: nn.Module, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One client's batch loss (train mode: BN updates `buffers` in place)."""
    return F.cross_entropy(full_precision(functional_call(model, {**params, **buffers}, (x,))), y)


def _group_batch(group: list[ClientRun], settings: LocalTraining) -> tuple[torch.Tensor, torch.Tensor]:
    """The group's stored images, client after client along the batch dimension, and labels (k, batch)."""
    first = group[0]
    if settings.augment is None and all(r.x is first.x and r.y is first.y for r in group):
        idx = torch.cat([r.pending for r in group])
        return first.x[idx], first.y[idx].reshape(len(group), -1)
    xs, ys = zip(*(r.batch() for r in group))   # per client: its own augmentation generator
    return torch.cat(xs), torch.stack(ys)


def vmap_step(model: nn.Module, group: list[ClientRun], client_params: list, settings: LocalTraining) -> list:
    """The forward and backward of a group of clients with batches of one size (the `step_group` of
    `local.train_steps`): (gradients of each client's leaves, its loss as float64) per client."""
    k = len(group)
    names = list(client_params[0])
    params = {n: torch.stack([p[n] for p in client_params]) for n in names}
    buffer_names = list(group[0].problem.buffers)
    buffers = {n: torch.stack([r.problem.buffers[n] for r in group]) for n in buffer_names}
    # the model's own buffers that are not passed (BN's integer num_batches_tracked): the sequential path
    # advances them once per client and step, the vmapped forward once per group
    passed = set(names) | set(buffer_names)
    counters = [b for n, b in model.named_buffers() if n not in passed]
    before = torch._foreach_add(counters, 0) if counters else []   # copies
    images, y = _group_batch(group, settings)
    xs = settings.transform(images)
    x = xs.reshape(k, -1, *xs.shape[1:])
    with autocast(settings.precision, x.device):  # the loss itself is taken from float32 logits
        losses = vmap(functools.partial(_loss, model))(params, buffers, x, y)
    with torch.no_grad():
        if counters:
            steps = torch._foreach_sub(counters, before)
            torch._foreach_mul_(steps, k - 1)
            torch._foreach_add_(counters, steps)
        if buffer_names:
            torch._foreach_copy_([r.problem.buffers[n] for r in group for n in buffer_names],
                                 [buffers[n][i] for i in range(k) for n in buffer_names])
    leaves = [t for r in group for t in r.leaves]
    grads = torch.autograd.grad(losses.sum(), leaves)
    # float64 for the loss sums: one widening here instead of one per client there (exact either way)
    booked = losses.detach().double().unbind()
    out, at = [], 0
    for i, r in enumerate(group):
        out.append((grads[at: at + len(r.leaves)], booked[i]))
        at += len(r.leaves)
    return out
