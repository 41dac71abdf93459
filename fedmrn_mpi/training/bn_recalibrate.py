"""BatchNorm statistics consistent with the upload (`bn_recalibrate: true`; docs/baselines.md, "BatchNorm
statistics and the upload").

A client trains a local model, but what the server applies is the *decoded* upload: a masked, signed, sparsified
or quantised update. The BatchNorm running statistics travel as float32 values and are averaged as they are, so
without this step they describe the client's dense local model, a different network from the one the server
builds (post-training codecs and FedMRN's `training: post` then sit at chance for many rounds). With it, after
`encode`, the client:

1. decodes its own payload with the algorithm's `decode`, the exact bytes the server will read (a server-side
   method: it reads only the payload, the header seed and the global state, never the client's per-client
   state such as error-feedback residuals, which `encode` has already updated once);
2. rebuilds the model the server would hold if this upload were the round's only one:
   `eval_state(server_step(w, update, server_lr), round)`, i.e. `w + η·Δ` for parameters with the run's server
   learning rate η (FedPM: the scores' posterior and the evaluation's sampled mask). With η = 1 that is the
   client's decoded model `w + Δ`; with η ≠ 1 it is the model the server's rule actually produces from this
   update, which is what the averaged statistics end up sitting in;
3. re-estimates every BatchNorm layer's running mean and variance for that model: the statistics are reset
   (mean 0, variance 1, batch count 0), then one forward pass without gradient in train mode over the
   client's first local epoch again (the same permutation from its "order" stream and, where augmentation is
   on, the same augmentation from its "augment" stream, regenerated from the seeds, so nothing depends on the
   rank or on the clients trained before), with `momentum = None`: the cumulative average of the per-batch
   statistics (torch's own BatchNorm update, the short last batch counting as one batch);
4. writes those statistics over the bytes where `encode` put the dense model's (`Algorithm.value_offsets`),
   after checking that those bytes hold exactly the dense statistics. The payload is then finished as
   before: the header and both CRC32s are computed from it afterwards (`comm.wire.encode_message`).

Nothing else in the payload changes (the compressed part, the BN affine parameters, the seed), nor any
per-client state, and the server needs nothing new: the message format and size are the same. An upload that
is not finite (decode raises `NonFiniteUpdate`, or the rebuilt model holds NaN/inf) is left as `encode` wrote
it, so the server's `on_bad_update` decision is the same with and without recalibration.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..algorithms import Algorithm, ClientContext
from ..algorithms.base import NonFiniteUpdate
from ..models import forward

__all__ = ["batchnorm_layers", "estimate_bn_stats", "recalibrate_upload", "served_state", "write_values"]


def batchnorm_layers(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> list[tuple[str, _BatchNorm]]:
    """(name prefix, module) of every BatchNorm layer that keeps running statistics (and, with `state`, whose
    statistics are part of it), in module order."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.track_running_stats and module.running_mean is not None:
            prefix = f"{name}." if name else ""
            if state is None or (prefix + "running_mean" in state and prefix + "running_var" in state):
                out.append((prefix, module))
    return out


def served_state(algo: Algorithm, payload: np.ndarray, seed: int, global_state: dict[str, torch.Tensor],
                 round_: int, server_lr: float, device: torch.device) -> dict[str, torch.Tensor] | None:
    """The model the server would hold after `round_` if this payload were the round's only upload (see the
    module docstring), or None when the upload is not finite."""
    try:
        update = algo.decode(memoryview(payload), seed, global_state, device)
    except NonFiniteUpdate:
        return None
    with torch.no_grad():
        state = algo.eval_state(algo.server_step(global_state, {**update.deltas, **update.buffers}, server_lr),
                                round_)
        if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
            return None
    return state


def estimate_bn_stats(model: nn.Module, state: dict[str, torch.Tensor], inputs: Iterable[torch.Tensor],
                      poll: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """Running mean and variance of every BatchNorm layer of `model` run with `state`, re-estimated from scratch
    over the model inputs `inputs` (train-mode forward passes without gradient, cumulative average: what
    `reset_running_stats()` and `momentum = None` give a module). Returns new tensors named as in `state`
    ({} when the model has no such layer or `inputs` is empty); `state` itself is not changed. The modules'
    `momentum` and training mode are restored afterwards."""
    layers = batchnorm_layers(model, state)
    if not layers:
        return {}
    tensors = dict(state)
    stats: dict[str, torch.Tensor] = {}
    for prefix, _ in layers:
        mean, var = state[prefix + "running_mean"], state[prefix + "running_var"]
        stats[prefix + "running_mean"] = torch.zeros_like(mean)
        stats[prefix + "running_var"] = torch.ones_like(var)
        # the batch counter stays on the CPU: BatchNorm reads it with float() at every batch (no device sync)
        tensors[prefix + "num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    tensors.update(stats)
    momenta = [m.momentum for _, m in layers]
    was_training = model.training
    seen = 0
    try:
        for _, m in layers:
            m.momentum = None
        model.train()
        with torch.no_grad():
            for x in inputs:
                if poll is not None:
                    poll()
                forward(model, tensors, x)
                seen += 1
    finally:
        for (_, m), momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return stats if seen else {}


def _f32_bytes(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).to("cpu", torch.float32).numpy().view(np.uint8)


def write_values(algo: Algorithm, payload: np.ndarray, old: dict[str, torch.Tensor],
                 new: dict[str, torch.Tensor]) -> np.ndarray:
    """`payload` (changed in place and returned) with the float32 values of each tensor in `new` written where
    `encode` wrote it (`algo.value_offsets`); the bytes there must be exactly `old[name]`'s, or nothing is
    written and a RuntimeError names the algorithm and the tensor."""
    offsets = algo.value_offsets(payload.nbytes)
    spans = []
    for name, values in new.items():
        if name not in offsets:
            raise RuntimeError(f"{algo.name}: its payload does not carry {name!r} as float32 values "
                               f"(Algorithm.value_offsets); cannot upload recalibrated BatchNorm statistics")
        want, at = _f32_bytes(old[name]), offsets[name]
        if not np.array_equal(payload[at: at + want.nbytes], want):
            raise RuntimeError(f"{algo.name}: payload bytes {at}..{at + want.nbytes} do not hold {name!r} "
                               f"(Algorithm.value_offsets does not match encode's layout)")
        spans.append((at, _f32_bytes(values)))
    for at, data in spans:
        payload[at: at + data.nbytes] = data
    return payload


def recalibrate_upload(model: nn.Module, algo: Algorithm, payload: np.ndarray, ctx: ClientContext,
                       dense_buffers: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor],
                       server_lr: float, inputs: Iterable[torch.Tensor],
                       poll: Callable[[], None] | None = None) -> np.ndarray:
    """The client's payload with BatchNorm statistics re-estimated for the model its upload rebuilds on the
    server (steps 1-4 of the module docstring). `dense_buffers`: the buffers `encode` wrote (the local model's);
    `inputs`: the model inputs of the pass (the client's first local epoch again)."""
    if not batchnorm_layers(model, dense_buffers):
        return payload
    state = served_state(algo, payload, ctx.noise_seed, global_state, ctx.round, server_lr, ctx.device)
    if state is None:
        return payload
    stats = estimate_bn_stats(model, state, inputs, poll)
    return write_values(algo, payload, dense_buffers, stats) if stats else payload
