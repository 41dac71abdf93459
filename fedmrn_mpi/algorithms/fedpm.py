"""FedPM (Isik et al., ICLR 2023): train Bernoulli keep-probabilities over one frozen random network
(docs/baselines.md §5).

Every masked tensor `j` (Conv/Linear weight, `ModelSpec.masked` order) has frozen weights `w_j = ±c_j`,
`c_j = e·√(1/fan_in)` (the reference's signed-constant "ME_init", `fan_in = numel / out_channels`), signs from
`rademacher(derive_seed(seed, "fedpm-weights"), make_stream(_WEIGHTS, j))` (`seed`: the root seed): every rank
builds the same network without communication. The global state holds, in place of those weights, the *scores*
`s` (logits of the keep probabilities `θ = sigmoid(s)`); unmasked tensors (BN affine and statistics) are handled
as in FedMRN.

Client: trainables are the scores and the unmasked parameters. Each local step draws a fresh mask
`m = [U < θ]` (`U` = uniform01(draw_seed, make_stream(_TRAIN, j, step))) and uses `w ⊙ m`; the gradient is the
reference's Bernoulli estimator `∂L/∂θ = θ·∂L/∂m`, hence `∂L/∂s = θ²(1−θ)·∂L/∂m`. Upload: one fresh sample
`m ~ Bernoulli(θ)` (stream `_UPLOAD`), 1 bit per masked entry, then the unmasked tensors as float32.

Server: `decode` returns, under `Update.deltas`, the ε-clipped sample `v = ε + (1−2ε)·m` (ε = 0.01; exactly
float32(0.01) or float32(0.99)) for masked tensors, and deltas/values for unmasked ones. `aggregate` averages
them unweighted (`weighted = False`). `server_step` forms the Beta posterior per entry with the prior
α = β = 1 reset every round, as the reference does; its mode is the mean of the `v_k`, and the new score is
`logit(mode)`. Unmasked tensors: `w + η·mean` (parameters), `mean` (buffers).

Payload: `pack_bits` of the upload masks of all masked tensors concatenated in `ModelSpec.masked` order
(`ceil(num_masked / 8)` bytes, zero padding only at the end, checked by `decode`), then every unmasked tensor in
state-dict order as float32 (`4 · num_unmasked` bytes); the header seed is not used.

Evaluation (`eval_state`) uses `w ⊙ m` with one mask `m ~ Bernoulli(θ)` per round from
`derive_seed(seed, "fedpm-eval", round)`.

Deviations from the reference code (docs/baselines.md §5), each forced by this project's interface or model:
- Optimiser: Adam on the scores with `cfg.lr` (the reference's 0.1 in configs/compare) as in the reference, but
  its moments start at zero every round instead of being kept per client object; with plain SGD the scores
  barely move (one client, 300 steps: 11% test accuracy with SGD lr 0.1 against 63% with Adam lr 0.1).
  This matters: ∂L/∂s carries the factor θ²(1−θ)·c, so SGD moves the scores very little (one client, 300 steps
  of batch 64 on FashionMNIST: SGD lr 0.1 stays at chance, Adam lr 0.1 reaches ~63 % test accuracy).
- Initial scores: the runner's initial state (N(0, 0.01²) conv/linear weights) is read as the round-1 scores,
  so θ ≈ 0.5 everywhere; the reference draws scores N(0, 1), whose θ average 0.5 too but spread out.
- BatchNorm (absent from the reference models): affine parameters trained by SGD and, with the running
  statistics, sent as float32 as in FedMRN. Biases of Conv/Linear layers, where a model has them, are not
  masked (the reference masks them over frozen ±c biases); CNN4/CNN8 have none.
- Evaluation: one sampled mask per evaluation, not a fresh one per test batch (deterministic per round).
- `server_lr` does not act on the scores (the reference has no server learning rate); it scales the
  unmasked parameters' mean delta as for every other algorithm.
- The wire carries the packed bits (1 bit per entry); the paper's entropy-coded bitrate estimate is not applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..rng.bits import pack_bits, packed_nbytes, unpack_bits
from ..rng.noise import make_stream, noise, uniform01
from ..rng.seeds import derive_seed
from .base import Algorithm, ClientContext, LocalProblem, Update
from .spec import ModelSpec

# Stream purposes; the weight and eval streams use their own seeds, but distinct purposes keep them apart anyway.
_WEIGHTS, _TRAIN, _UPLOAD, _EVAL = 0, 1, 2, 3

EPSILON = 0.01   # the reference clips uploaded mask samples to {ε, 1−ε} so the logit stays finite
PRIOR = 1.0      # Beta(λ, λ) prior, λ = 1, reset every round


def signed_constant(shape: tuple[int, ...]) -> float:
    """c = e·√(1/fan_in), fan_in = elements per output unit (in_features, or k²·in_channels for a conv)."""
    fan_in = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    return math.e * math.sqrt(1.0 / fan_in)


def beta_posterior(sum_v, count, prior: float = PRIOR):
    """(α, β, mode) of the Beta posterior after `count` observations v ∈ [0, 1] summing to `sum_v`,
    from the prior Beta(prior, prior): α = prior + Σv, β = prior + count − Σv, mode = (α−1)/(α+β−2).

    Works on floats and tensors alike. With prior 1 the mode is Σv / count, so (mean, 1) gives the same mode
    as (Σv, K): this is why `server_step` can use the aggregator's mean.
    """
    alpha = prior + sum_v
    beta = prior + count - sum_v
    return alpha, beta, (alpha - 1.0) / (alpha + beta - 2.0)


class BernoulliSample(torch.autograd.Function):
    """m = [u < θ] (a Bernoulli(θ) sample from given uniforms) with the reference's backward ∂L/∂θ = θ·∂L/∂m."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(theta)
        return (u < theta).to(theta.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (theta,) = ctx.saved_tensors
        return theta * grad_out, None


def bernoulli_sample(theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Differentiable mask sample: forward [u < θ], backward θ·grad (docs/baselines.md §5)."""
    return BernoulliSample.apply(theta, u)


def clipped_sample(mask: torch.Tensor) -> torch.Tensor:
    """v = ε + (1−2ε)·m as float32: exactly float32(ε) where m = 0 and float32(1−ε) where m = 1."""
    lo = torch.tensor(EPSILON, dtype=torch.float32, device=mask.device)
    return torch.where(mask, 1.0 - lo, lo)


def logit(theta: torch.Tensor) -> torch.Tensor:
    """log(θ / (1 − θ))."""
    return torch.log(theta) - torch.log1p(-theta)


class FedPM(Algorithm):
    name = "fedpm"
    algo_id = 7
    weighted = False   # the reference's posterior counts every client once

    @dataclass(frozen=True)
    class Options:
        """FedPM has no options of its own."""

    def uses_adam(self, name: str) -> bool:
        """The scores take Adam steps, as in the reference (plain SGD barely moves them: their gradient carries
        θ²(1−θ)·c); the unmasked parameters take the shared loop's SGD steps."""
        return name in self.spec.masked

    def __init__(self, options: Options, spec: ModelSpec, seed: int) -> None:
        super().__init__(options, spec, seed)
        self._weights_seed = derive_seed(seed, "fedpm-weights")
        self._frozen: dict[str, dict[str, torch.Tensor]] = {}

    # the frozen random network ---------------------------------------------------------------------------
    def frozen_weights(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The fixed ±c weights of every masked tensor on `device`; built once per device, then cached."""
        key = str(torch.device(device))
        if key not in self._frozen:
            self._frozen[key] = {
                name: noise(self._weights_seed, make_stream(_WEIGHTS, j), self.spec.shapes[name], "rademacher",
                            signed_constant(self.spec.shapes[name]), device)
                for j, name in enumerate(self.spec.masked)}
        return self._frozen[key]

    # client ----------------------------------------------------------------------------------------------
    def begin(self, global_state: dict[str, torch.Tensor], ctx: ClientContext) -> LocalProblem:
        # the masked tensors' global values are scores, so every parameter is a trainable copy of its global value
        trainables = {n: global_state[n].detach().clone().requires_grad_(True) for n in self.spec.params}
        buffers = {n: global_state[n].detach().clone() for n in self.spec.buffers}
        return LocalProblem(trainables, buffers, {"w": self.frozen_weights(ctx.device)})

    def materialize(self, problem: LocalProblem, step: int, ctx: ClientContext) -> dict[str, torch.Tensor]:
        params = dict(problem.trainables)
        frozen = problem.extra["w"]
        for j, name in enumerate(self.spec.masked):
            s = problem.trainables[name]
            u = uniform01(ctx.draw_seed, make_stream(_TRAIN, j, step), s.shape, s.device)
            params[name] = frozen[name] * bernoulli_sample(torch.sigmoid(s), u)
        return params

    def upload_masks(self, problem: LocalProblem, ctx: ClientContext) -> dict[str, torch.Tensor]:
        """The uploaded sample m ~ Bernoulli(sigmoid(s)), one fresh bool tensor per masked tensor."""
        out = {}
        with torch.no_grad():
            for j, name in enumerate(self.spec.masked):
                s = problem.trainables[name]
                out[name] = uniform01(ctx.draw_seed, make_stream(_UPLOAD, j), s.shape, s.device) < torch.sigmoid(s)
        return out

    def encode(self, problem: LocalProblem, ctx: ClientContext) -> np.ndarray:
        masks = self.upload_masks(problem, ctx)
        problem.extra["upload_mask"] = masks
        packed = pack_bits(torch.cat([m.reshape(-1) for m in masks.values()])).cpu().numpy()
        state = {**problem.trainables, **problem.buffers}
        return np.concatenate([packed, self._float_payload([state[n] for n in self.spec.unmasked])])

    def payload_nbytes(self) -> int:
        return packed_nbytes(self.spec.num_masked) + 4 * self.spec.num_unmasked

    # server ----------------------------------------------------------------------------------------------
    def decode(self, payload: memoryview, seed: int, global_state: dict[str, torch.Tensor],
               device: torch.device) -> Update:
        if payload.nbytes != self.payload_nbytes():
            raise ValueError(f"FedPM payload is {payload.nbytes} bytes, expected {self.payload_nbytes()}")
        total = self.spec.num_masked
        nb = packed_nbytes(total)
        if total % 8 and payload[nb - 1] >> (total % 8):  # pack_bits zero-pads: set pad bits mean corruption
            raise ValueError(f"FedPM mask padding bits are not zero (last mask byte {payload[nb - 1]:#04x})")
        bits = unpack_bits(torch.frombuffer(bytearray(payload[:nb]), dtype=torch.uint8).to(device), total)
        deltas: dict[str, torch.Tensor] = {}
        off = 0
        for name in self.spec.masked:
            k = self.spec.numel(name)
            # not a delta: the clipped sample v, averaged by the aggregator and turned into scores by server_step
            deltas[name] = clipped_sample(bits[off: off + k].reshape(self.spec.shapes[name]))
            off += k
        more, buffers = self._values_to_update(self._read_floats(payload, self.spec.unmasked, nb, device),
                                               global_state)
        deltas.update(more)
        return Update(deltas, buffers)

    def server_step(self, global_state: dict[str, torch.Tensor], mean: dict[str, torch.Tensor],
                    server_lr: float) -> dict[str, torch.Tensor]:
        """Scores: logit of the Beta posterior's mode (prior 1, reset every round; `mean` = mean of the v_k,
        so (mean, 1) stands for (Σv, K)). Unmasked tensors: the usual rule."""
        new = {}
        for n in self.spec.names:
            if n in self.spec.masked:
                # float64: 1 + v in float32 would cost ~1e-5 relative precision of θ near ε
                _, _, mode = beta_posterior(mean[n].double(), 1.0)
                new[n] = logit(mode).to(mean[n].dtype)
            elif n in self.spec.params:
                new[n] = global_state[n] + server_lr * mean[n]
            else:
                new[n] = mean[n]
        return new

    def eval_state(self, global_state: dict[str, torch.Tensor], round_: int) -> dict[str, torch.Tensor]:
        """w ⊙ m with one mask m ~ Bernoulli(sigmoid(s)) drawn for round `round_`; unmasked tensors as they are."""
        seed = derive_seed(self.seed, "fedpm-eval", round_)
        out = dict(global_state)
        with torch.no_grad():
            for j, name in enumerate(self.spec.masked):
                s = global_state[name]
                frozen = self.frozen_weights(s.device)[name]
                keep = uniform01(seed, make_stream(_EVAL, j), s.shape, s.device) < torch.sigmoid(s)
                out[name] = torch.where(keep, frozen, torch.zeros((), dtype=frozen.dtype, device=frozen.device))
        return out
