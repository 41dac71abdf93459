"""FedBAT (Li et al., ICML 2024): learnable stochastic binarisation of the local update
(docs/baselines.md §6; reference code Leopold1423/fedbat-icml24, `model/bat.py`, `train/trainer.py`).

Per masked tensor (index j in `ModelSpec.masked`) the trainables of one round are a latent update `u`
(zeros) over the frozen global weight `w` and a scalar log-scale `s` (zero); unmasked parameters train as in
FedAvg and buffers are copies. Local step t = 1..T (T = `ctx.total_steps`, φ = `algorithm.warmup_fraction`):

- t <= φ·T (warm-up): the forward uses `w + u` at full precision; `s` is in the graph with gradient 0.
- the first step with t > φ·T (the switch): `α0 = mean|u|` per tensor, detached, kept in
  `problem.extra["alpha0"]`; from then on the forward uses `w + B(u)` with
  `α = clamp(α0·exp(ρ·s), 5e-4, 5e-2)` and the stochastic binarisation
  `B(u) = α·(2b − 1)`, `b ~ Bernoulli(clip((u/α + 1)/2, 0, 1))`, drawn fresh each step from
  `uniform01(draw_seed, make_stream(_STEP, j, t))`. `E[B(u)] = u` for `|u| <= α`.
- backward (as the reference's `bat.backward`), with `x = u/α`: `∂B/∂u = 1[|x| <= 1]` (clipped
  straight-through) and `∂B/∂α = +1 (x > 1), −1 (x < −1), 2b − (x + 1) otherwise`, summed over the tensor,
  then through the clamp and the exponential to `s` (`∂α/∂s = ρ·α` inside the clamp, 0 at the bounds).

Upload: a fresh binarisation `b = [U_final < clip((u/α + 1)/2, 0, 1)]`, `U_final` from
`uniform01(draw_seed, make_stream(_FINAL, j))`, with the α of the final `s`. The server decodes
`Δ = α·(2b − 1)` per masked tensor; unmasked tensors travel as float32 as in FedMRN; the header seed is not
used. Wire layout (all little-endian):

    pack_bits(b of all masked tensors, concatenated in ModelSpec.masked order)   ceil(num_masked / 8) bytes
    float32 α per masked tensor, in the same order                                4 · len(masked) bytes
    every unmasked tensor (state-dict order) as float32                           4 · num_unmasked bytes

CNN4/FashionMNIST: 48,740 + 20 + 7,680 = 56,440 bytes. Decode rejects (ValueError) a wrong length, an α that
is not finite or lies outside [float32(5e-4), float32(5e-2)] (the client's clamp guarantees the range), and
non-zero padding bits after the last mask bit.

Decisions and deviations from the reference code:

- ρ: the config default `algorithm.rho` is 6, the value of every released run of the reference
  (docs/baselines.md §6: `train/server.py` default `--rho 6`; the scripts' `rho=0` is overwritten by
  `rhos[3]`). `algorithm.rho=0` makes `∂α/∂s = 0`, so α is the fixed `clamp(mean|u_warm-up|, 5e-4, 5e-2)` and
  the learnable scale is off.
- Warm-up covering every step: the config requires φ < 1, so the switch normally happens at some step
  <= T. If it never happened (φ·T >= T, which floating-point rounding of φ·T or a caller that skips
  `materialize` could produce), `encode` takes the switch after the last step: `α0 = mean|u|` of the final
  `u`, `s` = 0 (it never had a gradient), and the upload is `B(u)` with that α. The reference would instead
  reuse the module's stale `alpha0` (its initial 0.01 or the previous round's value).
- Randomness: counter-based uniforms instead of `torch.rand_like`; `b = [U < p]` has the same law as the
  reference's `clamp(floor(p + r), 0, 1)`.
- The reference uploads `w + B(u)` as float32 and the server averages weights; here the server adds the
  averaged `Δ` to `w` (same value up to float32 rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..rng.bits import pack_bits, packed_nbytes, unpack_bits
from ..rng.noise import make_stream, uniform01
from .base import Algorithm, ClientContext, LocalProblem, NonFiniteUpdate, Update, option

# Stream purposes: per-step binarisation draw (purpose, j, step), final upload draw (purpose, j).
_STEP, _FINAL = 0, 1

ALPHA_MIN, ALPHA_MAX = 5e-4, 5e-2   # the reference's clamp of the scale
# the bounds as float32 (what the client's float32 clamp can produce), for the decoder's range check
_ALPHA_MIN32, _ALPHA_MAX32 = float(np.float32(ALPHA_MIN)), float(np.float32(ALPHA_MAX))

_S_PREFIX = "fedbat.log_scale:"   # trainables key of tensor `name`'s scalar s (not a state name)


def log_scale_key(name: str) -> str:
    """The `LocalProblem.trainables` key of masked tensor `name`'s log-scale s."""
    return _S_PREFIX + name


def scale(alpha0: torch.Tensor, s: torch.Tensor, rho: float) -> torch.Tensor:
    """α = clamp(α0·exp(ρ·s), 5e-4, 5e-2), differentiable w.r.t. s (zero gradient when clamped)."""
    return torch.clamp(alpha0 * torch.exp(rho * s), ALPHA_MIN, ALPHA_MAX)


def binary_bits(u: torch.Tensor, alpha: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """b = [U < clip((u/α + 1)/2, 0, 1)]: P(b = 1) = (u/α + 1)/2 for |u| <= α, b = [u > 0] beyond."""
    p = (u / alpha).add_(1.0).mul_(0.5).clamp_(0.0, 1.0)
    return uniform < p


class _Binarize(torch.autograd.Function):
    """B(u) = α·(2b − 1) with the reference's clipped straight-through / LSQ-style backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, alpha: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        bits = binary_bits(u.detach(), alpha.detach(), uniform)
        ctx.save_for_backward(u, alpha, bits)
        return torch.where(bits, alpha, -alpha)   # exactly ±α

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        u, alpha, bits = ctx.saved_tensors
        x = u / alpha
        big, small = x > 1, x < -1
        middle = ~(big | small)
        grad_u = torch.where(middle, dy, torch.zeros((), dtype=dy.dtype, device=dy.device)) \
            if ctx.needs_input_grad[0] else None
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            # +1 above, −1 below, 2b − (x + 1) inside (the reference's form), weighted by dy and summed
            g = torch.where(middle, 2.0 * bits.to(x.dtype) - (x + 1.0), big.to(x.dtype) - small.to(x.dtype))
            grad_alpha = (g * dy).sum().reshape(alpha.shape)
        return grad_u, grad_alpha, None


def binarize(u: torch.Tensor, alpha: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The stochastic binarisation B(u) = α·(2b − 1), b = [uniform < clip((u/α + 1)/2, 0, 1)];
    differentiable w.r.t. u and α as in the reference (see the module docstring)."""
    return _Binarize.apply(u, alpha, uniform)


class _WarmUp(torch.autograd.Function):
    """w + u with s attached at gradient 0: the shared loop differentiates every trainable, so s must be in
    the graph during warm-up too, and this costs one addition instead of an extra broadcast op."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ctx.s_shape = s.shape
        return w + u

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        return None, dy, torch.zeros(ctx.s_shape, dtype=dy.dtype, device=dy.device)


class FedBAT(Algorithm):
    name = "fedbat"
    algo_id = 8

    @dataclass(frozen=True)
    class Options:
        warmup_fraction: float = option(0.5, "fedbat: share of the local steps trained at full precision",
                                        ge=0, lt=1)
        rho: float = option(6.0, "fedbat: learnable log-scale factor, alpha = alpha0 * exp(rho * s); 6 as in every "
                            "released FedBAT run")

    options: Options

    def in_warmup(self, step: int, total_steps: int) -> bool:
        """Whether local step `step` (1-based) trains at full precision: step <= φ·T, as the reference."""
        return step <= self.options.warmup_fraction * total_steps

    def begin(self, global_state: dict[str, torch.Tensor], ctx: ClientContext) -> LocalProblem:
        trainables: dict[str, torch.Tensor] = {}
        frozen = {}
        for name in self.spec.masked:
            frozen[name] = global_state[name].detach()
            trainables[name] = torch.zeros_like(frozen[name], requires_grad=True)
            trainables[log_scale_key(name)] = torch.zeros((), dtype=frozen[name].dtype, device=frozen[name].device,
                                                          requires_grad=True)
        for name in self.spec.params:
            if name not in frozen:
                trainables[name] = global_state[name].detach().clone().requires_grad_(True)
        buffers = {n: global_state[n].detach().clone() for n in self.spec.buffers}
        return LocalProblem(trainables, buffers, {"w": frozen})

    def switch(self, problem: LocalProblem, step: int) -> None:
        """End the warm-up: α0 = mean|u| per masked tensor, taken now and detached."""
        with torch.no_grad():
            problem.extra["alpha0"] = {n: problem.trainables[n].detach().abs().mean() for n in self.spec.masked}
        problem.extra["switch_step"] = step

    def alpha(self, problem: LocalProblem, name: str) -> torch.Tensor:
        """The current α of masked tensor `name` (a differentiable function of its s); needs the switch."""
        return scale(problem.extra["alpha0"][name], problem.trainables[log_scale_key(name)], self.options.rho)

    def materialize(self, problem: LocalProblem, step: int, ctx: ClientContext) -> dict[str, torch.Tensor]:
        params = {n: t for n, t in problem.trainables.items() if not n.startswith(_S_PREFIX)}
        frozen = problem.extra["w"]
        if self.in_warmup(step, ctx.total_steps):
            for name in self.spec.masked:
                params[name] = _WarmUp.apply(frozen[name], problem.trainables[name],
                                             problem.trainables[log_scale_key(name)])
            return params
        if "alpha0" not in problem.extra:
            self.switch(problem, step)
        for j, name in enumerate(self.spec.masked):
            u = problem.trainables[name]
            draw = uniform01(ctx.draw_seed, make_stream(_STEP, j, step), u.shape, u.device)
            params[name] = frozen[name] + binarize(u, self.alpha(problem, name), draw)
        return params

    def final_upload(self, problem: LocalProblem, ctx: ClientContext) -> tuple[dict[str, torch.Tensor],
                                                                                 dict[str, torch.Tensor]]:
        """(bits, α) per masked tensor: the fresh final binarisation that is uploaded."""
        if "alpha0" not in problem.extra:  # warm-up covered every step: switch after the last one
            self.switch(problem, ctx.total_steps + 1)
        bits, alphas = {}, {}
        with torch.no_grad():
            for j, name in enumerate(self.spec.masked):
                u = problem.trainables[name].detach()
                alphas[name] = self.alpha(problem, name).detach()
                draw = uniform01(ctx.draw_seed, make_stream(_FINAL, j), u.shape, u.device)
                bits[name] = binary_bits(u, alphas[name], draw)
        return bits, alphas

    def encode(self, problem: LocalProblem, ctx: ClientContext) -> np.ndarray:
        bits, alphas = self.final_upload(problem, ctx)
        problem.extra["final_delta"] = {n: torch.where(b, alphas[n], -alphas[n]) for n, b in bits.items()}
        packed = pack_bits(torch.cat([b.reshape(-1) for b in bits.values()])).cpu().numpy()
        scales = torch.stack([alphas[n] for n in self.spec.masked]).to("cpu", torch.float32).numpy().view(np.uint8)
        state = {**problem.trainables, **problem.buffers}
        floats = self._float_payload([state[n] for n in self.spec.unmasked])
        return np.concatenate([packed, scales, floats])

    def payload_nbytes(self) -> int:
        return packed_nbytes(self.spec.num_masked) + 4 * len(self.spec.masked) + 4 * self.spec.num_unmasked

    def decode(self, payload: memoryview, seed: int, global_state: dict[str, torch.Tensor],
               device: torch.device) -> Update:
        if payload.nbytes != self.payload_nbytes():
            raise ValueError(f"FedBAT payload is {payload.nbytes} bytes, expected {self.payload_nbytes()}")
        arr = np.frombuffer(payload, dtype=np.uint8)
        num_masked, nb = self.spec.num_masked, packed_nbytes(self.spec.num_masked)
        if num_masked % 8 and arr[nb - 1] >> (num_masked % 8):
            raise ValueError("FedBAT payload has non-zero padding bits after the last mask bit")
        k = len(self.spec.masked)
        alphas = arr[nb: nb + 4 * k].copy().view("<f4")
        if not np.isfinite(alphas).all():
            j = int(np.flatnonzero(~np.isfinite(alphas))[0])
            raise NonFiniteUpdate(f"FedBAT scale of {self.spec.masked[j]} is {float(alphas[j])!r}")
        bad = ~((alphas >= _ALPHA_MIN32) & (alphas <= _ALPHA_MAX32))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise ValueError(f"FedBAT scale of {self.spec.masked[j]} is {float(alphas[j])!r}, outside "
                             f"[{ALPHA_MIN}, {ALPHA_MAX}]")
        bits = unpack_bits(torch.frombuffer(bytearray(arr[:nb]), dtype=torch.uint8).to(device), num_masked)
        alpha_t = torch.from_numpy(alphas.astype(np.float32)).to(device)
        deltas: dict[str, torch.Tensor] = {}
        off = 0
        for j, name in enumerate(self.spec.masked):
            n = self.spec.numel(name)
            b = bits[off: off + n].reshape(self.spec.shapes[name])
            deltas[name] = torch.where(b, alpha_t[j], -alpha_t[j])
            off += n
        more, buffers = self._values_to_update(self._read_floats(payload, self.spec.unmasked, nb + 4 * k, device),
                                               global_state)
        deltas.update(more)
        return Update(deltas, buffers)
