"""FedMRN: a 1-bit mask over seeded random noise, trained with progressive stochastic masking
(docs/design.md#the-method).

Per masked tensor the trainable is a latent update `u` (reset to 0 each round) over frozen weights `w`;
the effective weight is `w + Δ` with Δ a hard/soft masked noise sample, and the gradient reaches `u` through
a straight-through identity. After the last step a fresh mask is drawn from q; its packed bits and the noise
seed are the upload, followed by the float32 unmasked tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from ..rng.bits import pack_bits, packed_nbytes, unpack_bits
from ..rng.noise import make_stream, noise, uniform01
from .base import Algorithm, ClientContext, LocalProblem, Update

# Stream purposes: one independent stream per (purpose, tensor index, step).
_NOISE, _HARD, _SELECT, _FINAL = 0, 1, 2, 3


def clipped_ratio(u: torch.Tensor, n: torch.Tensor, mask: str) -> torch.Tensor:
    """clip(u/n, 0, 1) for binary masks, clip(u/n, -1, 1) for signed: both q and the soft value follow from it."""
    return (u / n).clamp_(0.0 if mask == "binary" else -1.0, 1.0)


def probability_from_ratio(c: torch.Tensor, mask: str) -> torch.Tensor:
    """q from the clipped ratio: c itself (binary), (c + 1) / 2 (signed; equals clip((u/n + 1) / 2, 0, 1))."""
    return c if mask == "binary" else (c + 1.0).mul_(0.5)


def mask_probability(u: torch.Tensor, n: torch.Tensor, mask: str) -> torch.Tensor:
    """q: the probability that a mask bit is 1 (binary: keep the noise; signed: +noise)."""
    return probability_from_ratio(clipped_ratio(u, n, mask), mask)


def soft_value(u: torch.Tensor, n: torch.Tensor, mask: str) -> torch.Tensor:
    """E[Δ] under q: n·q for binary masks, n·clip(u/n, -1, 1) for signed masks."""
    return clipped_ratio(u, n, mask).mul_(n)


def masked_noise(n: torch.Tensor, bits: torch.Tensor, mask: str) -> torch.Tensor:
    """Δ = n ⊙ m with m ∈ {0,1} (binary) or m ∈ {-1,+1} (signed, bit 1 = +1)."""
    if mask == "binary":
        return torch.where(bits, n, torch.zeros((), dtype=n.dtype, device=n.device))
    return torch.where(bits, n, -n)


def hard_share(step: int, total_steps: int, training: str) -> float:
    """Probability p that an element uses the hard sample at local step `step` (1-based)."""
    if training == "psm":
        return step / total_steps
    if training == "sm":
        return 1.0
    return 0.0


class FedMRN(Algorithm):
    name = "fedmrn"
    algo_id = 2
    options = ("mask", "noise", "sigma", "training")

    @property
    def _a(self):
        return self.cfg.algorithm

    def noise_for(self, seed: int, index: int, name: str, device: torch.device) -> torch.Tensor:
        return noise(seed, make_stream(_NOISE, index), self.spec.shapes[name], self._a.noise,
                     self._a.effective_sigma, device)

    def begin(self, global_state: dict[str, torch.Tensor], ctx: ClientContext) -> LocalProblem:
        masked = self.spec.masked
        trainables: dict[str, torch.Tensor] = {}
        noises, frozen = {}, {}
        for j, name in enumerate(masked):
            frozen[name] = global_state[name].detach()
            noises[name] = self.noise_for(ctx.noise_seed, j, name, ctx.device)
            trainables[name] = torch.zeros_like(frozen[name], requires_grad=True)
        for name in self.spec.params:
            if name not in frozen:
                trainables[name] = global_state[name].detach().clone().requires_grad_(True)
        buffers = {n: global_state[n].detach().clone() for n in self.spec.buffers}
        return LocalProblem(trainables, buffers, {"noise": noises, "w": frozen})

    def sample_delta(self, u: torch.Tensor, n: torch.Tensor, index: int, step: int, ctx: ClientContext) -> torch.Tensor:
        """Δ at one local step: each element hard with probability p = hard_share, soft otherwise."""
        if self._a.training == "post":  # ablation: the dense update itself; masked only after the last step
            return u.detach().clone()
        mask = self._a.mask
        p = hard_share(step, ctx.total_steps, self._a.training)
        c = clipped_ratio(u, n, mask)  # one division per step serves both q and the soft value
        soft = c * n
        if p <= 0.0:
            return soft
        q = probability_from_ratio(c, mask)
        draw = uniform01(ctx.draw_seed, make_stream(_HARD, index, step), u.shape, u.device)
        hard = masked_noise(n, draw < q, mask)
        if p >= 1.0:
            return hard
        select = uniform01(ctx.draw_seed, make_stream(_SELECT, index, step), u.shape, u.device) < p
        return torch.where(select, hard, soft)

    def materialize(self, problem: LocalProblem, step: int, ctx: ClientContext) -> dict[str, torch.Tensor]:
        params = dict(problem.trainables)
        noises, frozen = problem.extra["noise"], problem.extra["w"]
        for j, name in enumerate(self.spec.masked):
            u = problem.trainables[name]
            with torch.no_grad():
                delta = self.sample_delta(u, noises[name], j, step, ctx)
                base = frozen[name] + delta - u
            # straight-through: the forward sees w + Δ, the gradient reaches u unchanged (∂Δ/∂u = I)
            params[name] = base + u
        return params

    def final_bits(self, problem: LocalProblem, ctx: ClientContext) -> dict[str, torch.Tensor]:
        """The fresh final draw m ~ Bernoulli(q), one bool tensor per masked tensor."""
        out = {}
        with torch.no_grad():
            for j, name in enumerate(self.spec.masked):
                u, n = problem.trainables[name], problem.extra["noise"][name]
                q = mask_probability(u, n, self._a.mask)
                out[name] = uniform01(ctx.draw_seed, make_stream(_FINAL, j), u.shape, u.device) < q
        return out

    def encode(self, problem: LocalProblem, ctx: ClientContext) -> np.ndarray:
        bits = self.final_bits(problem, ctx)
        problem.extra["final_delta"] = {n: masked_noise(problem.extra["noise"][n], b, self._a.mask)
                                        for n, b in bits.items()}
        packed = pack_bits(torch.cat([b.reshape(-1) for b in bits.values()])).cpu().numpy()
        state = {**problem.trainables, **problem.buffers}
        floats = self._float_payload([state[n] for n in self.spec.unmasked])
        return np.concatenate([packed, floats])

    def payload_nbytes(self) -> int:
        return packed_nbytes(self.spec.num_masked) + 4 * self.spec.num_unmasked

    def decode(self, payload: memoryview, seed: int, global_state: dict[str, torch.Tensor],
               device: torch.device) -> Update:
        if payload.nbytes != self.payload_nbytes():
            raise ValueError(f"FedMRN payload is {payload.nbytes} bytes, expected {self.payload_nbytes()}")
        nb = packed_nbytes(self.spec.num_masked)
        packed = torch.frombuffer(bytearray(payload[:nb]), dtype=torch.uint8).to(device)
        bits = unpack_bits(packed, self.spec.num_masked)
        deltas: dict[str, torch.Tensor] = {}
        off = 0
        for j, name in enumerate(self.spec.masked):
            k = self.spec.numel(name)
            m = bits[off: off + k].reshape(self.spec.shapes[name])
            deltas[name] = masked_noise(self.noise_for(seed, j, name, device), m, self._a.mask)
            off += k
        values = self._read_floats(payload, self.spec.unmasked, nb, device)
        more, buffers = self._values_to_update(values, global_state)
        deltas.update(more)
        return Update(deltas, buffers)
