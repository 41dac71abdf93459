"""FedMRN: a 1-bit mask over seeded random noise, trained with progressive stochastic masking
(docs/design.md#the-method).

Per masked tensor the trainable is a latent update `u` (reset to 0 each round) over frozen weights `w`;
the effective weight is `w + Δ` with Δ a hard/soft masked noise sample, and the gradient reaches `u` through
a straight-through identity. After the last step a fresh mask is drawn from q; its packed bits and the noise
seed are the upload, followed by the float32 unmasked tensors.

On CUDA the per-step draws (`materialize`), the final draw with its bit packing (`final_bits`, `encode`) and
the server's decode and weighted sum (`decode`, `fused_sum` used by `aggregate`) run the fused Triton kernels
of `fedmrn_kernels` (imported only then), which regenerate the noise and the draws in one pass and give the
same bits as the eager code here. `FedMRN.kernels` (or the module switch `fedmrn_mpi.rng.noise.KERNELS`)
picks: "auto" (kernels on CUDA), "triton" (always), "reference" (never).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..rng.bits import pack_bits, packed_nbytes, unpack_bits
from ..rng.noise import NOISE_KINDS, make_stream, noise, uniform01, use_triton
from .base import Algorithm, ClientContext, LocalProblem, Update, option

# Stream purposes: one independent stream per (purpose, tensor index, step).
_NOISE, _HARD, _SELECT, _FINAL = 0, 1, 2, 3

# The values of `algorithm.mask`: m in {0,1} or {-1,+1}.
BINARY, SIGNED = "binary", "signed"
MASKS: tuple[str, ...] = (BINARY, SIGNED)
# The values of `algorithm.training`: progressive stochastic masking, always hard, soft then one draw, dense
# update masked after training (see `hard_share` and `FedMRN.sample_delta`).
PSM, SM, DETERMINISTIC, POST = "psm", "sm", "deterministic", "post"
TRAININGS: tuple[str, ...] = (PSM, SM, DETERMINISTIC, POST)
# docs/design.md#the-method: one absolute sigma for all layers, depending on the mask kind.
DEFAULT_SIGMA: dict[str, float] = {BINARY: 0.01, SIGNED: 0.005}


def clipped_ratio(u: torch.Tensor, n: torch.Tensor, mask: str) -> torch.Tensor:
    """clip(u/n, 0, 1) for binary masks, clip(u/n, -1, 1) for signed: both q and the soft value follow from it."""
    return (u / n).clamp_(0.0 if mask == BINARY else -1.0, 1.0)


def probability_from_ratio(c: torch.Tensor, mask: str) -> torch.Tensor:
    """q from the clipped ratio: c itself (binary), (c + 1) / 2 (signed; equals clip((u/n + 1) / 2, 0, 1))."""
    return c if mask == BINARY else (c + 1.0).mul_(0.5)


def mask_probability(u: torch.Tensor, n: torch.Tensor, mask: str) -> torch.Tensor:
    """q: the probability that a mask bit is 1 (binary: keep the noise; signed: +noise)."""
    return probability_from_ratio(clipped_ratio(u, n, mask), mask)


def soft_value(u: torch.Tensor, n: torch.Tensor, mask: str) -> torch.Tensor:
    """E[Δ] under q: n·q for binary masks, n·clip(u/n, -1, 1) for signed masks."""
    return clipped_ratio(u, n, mask).mul_(n)


def masked_noise(n: torch.Tensor, bits: torch.Tensor, mask: str) -> torch.Tensor:
    """Δ = n ⊙ m with m ∈ {0,1} (binary) or m ∈ {-1,+1} (signed, bit 1 = +1)."""
    if mask == BINARY:
        return torch.where(bits, n, torch.zeros((), dtype=n.dtype, device=n.device))
    return torch.where(bits, n, -n)


def hard_share(step: int, total_steps: int, training: str) -> float:
    """Probability p that an element uses the hard sample at local step `step` (1-based)."""
    if training == PSM:
        return step / total_steps
    if training == SM:
        return 1.0
    return 0.0


class FedMRN(Algorithm):
    name = "fedmrn"
    algo_id = 2

    @dataclass(frozen=True)
    class Options:
        mask: str = option(BINARY, "FedMRN mask values: {0,1} or {-1,+1}", choices=MASKS)
        noise: str = option("uniform", "distribution of the random noise", choices=NOISE_KINDS)
        sigma: float | None = option(None, f"noise scale; null = {DEFAULT_SIGMA[BINARY]} for binary, "
                                     f"{DEFAULT_SIGMA[SIGNED]} for signed masks", gt=0)
        training: str = option(PSM, "FedMRN mask training: progressive / always hard / soft then one draw / "
                               "dense update masked after training", choices=TRAININGS)

        @property
        def effective_sigma(self) -> float:
            """`sigma`, or the paper default for this mask kind when unset."""
            return self.sigma if self.sigma is not None else DEFAULT_SIGMA[self.mask]

    options: Options

    # Which codec implementation runs: None follows fedmrn_mpi.rng.noise.KERNELS ("auto": the Triton kernels
    # for CUDA tensors); "triton" or "reference" force one (tests, benchmarks).
    kernels: str | None = None

    def noise_for(self, seed: int, index: int, name: str, device: torch.device) -> torch.Tensor:
        return noise(seed, make_stream(_NOISE, index), self.spec.shapes[name], self.options.noise,
                     self.options.effective_sigma, device, impl=self.kernels)

    def _fused(self, device: torch.device) -> bool:
        """Whether the codec runs the fused kernels for tensors on `device`."""
        return use_triton(device, self.kernels)

    def _kernel_noise(self, n: torch.Tensor) -> torch.Tensor | None:
        # Kernels regenerate uniform/rademacher noise (cheaper than reading it); gaussian's float64 log/cos
        # cost more than reading the stored noise, which the client computed with the same code.
        return n if self.options.noise == "gaussian" else None

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
        if self.options.training == POST:  # ablation: the dense update itself; masked only after the last step
            return u.detach().clone()
        mask = self.options.mask
        p = hard_share(step, ctx.total_steps, self.options.training)
        c = clipped_ratio(u, n, mask)  # one division per step serves both q and the soft value
        soft = c * n
        if p <= 0.0:
            return soft
        q = probability_from_ratio(c, mask)
        draw = uniform01(ctx.draw_seed, make_stream(_HARD, index, step), u.shape, u.device, impl=self.kernels)
        hard = masked_noise(n, draw < q, mask)
        if p >= 1.0:
            return hard
        select = uniform01(ctx.draw_seed, make_stream(_SELECT, index, step), u.shape, u.device,
                           impl=self.kernels) < p
        return torch.where(select, hard, soft)

    def sample_base(self, u: torch.Tensor, n: torch.Tensor, w: torch.Tensor, index: int, step: int,
                    ctx: ClientContext) -> torch.Tensor:
        """The straight-through base `(w + Δ) - u` of one local step (no gradient), Δ from `sample_delta`: one
        fused kernel per tensor on the kernel path, the eager ops otherwise (the same bits either way)."""
        if self.options.training != POST and self._fused(u.device):
            from . import fedmrn_kernels as fk
            a = self.options
            return fk.sample_base(u, w, self._kernel_noise(n), noise_seed=ctx.noise_seed,
                                  noise_stream=make_stream(_NOISE, index), kind=a.noise, sigma=a.effective_sigma,
                                  draw_seed=ctx.draw_seed, hard_stream=make_stream(_HARD, index, step),
                                  select_stream=make_stream(_SELECT, index, step),
                                  p=hard_share(step, ctx.total_steps, a.training), signed=a.mask == SIGNED)
        return w + self.sample_delta(u, n, index, step, ctx) - u

    def materialize(self, problem: LocalProblem, step: int, ctx: ClientContext) -> dict[str, torch.Tensor]:
        params = dict(problem.trainables)
        noises, frozen = problem.extra["noise"], problem.extra["w"]
        for j, name in enumerate(self.spec.masked):
            u = problem.trainables[name]
            with torch.no_grad():
                base = self.sample_base(u, noises[name], frozen[name], j, step, ctx)
            # straight-through: the forward sees w + Δ, the gradient reaches u unchanged (∂Δ/∂u = I)
            params[name] = base + u
        return params

    def _final_pack(self, out: torch.Tensor, bit_off: int, index: int, u: torch.Tensor, n: torch.Tensor,
                    ctx: ClientContext) -> None:
        from . import fedmrn_kernels as fk
        a = self.options
        fk.final_pack(out, bit_off, u, self._kernel_noise(n), noise_seed=ctx.noise_seed,
                      noise_stream=make_stream(_NOISE, index), kind=a.noise, sigma=a.effective_sigma,
                      draw_seed=ctx.draw_seed, final_stream=make_stream(_FINAL, index), signed=a.mask == SIGNED)

    def final_bits(self, problem: LocalProblem, ctx: ClientContext) -> dict[str, torch.Tensor]:
        """The fresh final draw m ~ Bernoulli(q), one bool tensor per masked tensor."""
        out = {}
        with torch.no_grad():
            for j, name in enumerate(self.spec.masked):
                u, n = problem.trainables[name], problem.extra["noise"][name]
                if self._fused(u.device):
                    packed = torch.empty(packed_nbytes(u.numel()), dtype=torch.uint8, device=u.device)
                    self._final_pack(packed, 0, j, u, n, ctx)
                    out[name] = unpack_bits(packed, u.numel(), impl=self.kernels).view(u.shape)
                    continue
                q = mask_probability(u, n, self.options.mask)
                out[name] = uniform01(ctx.draw_seed, make_stream(_FINAL, j), u.shape, u.device, impl=self.kernels) < q
        return out

    def encode(self, problem: LocalProblem, ctx: ClientContext) -> np.ndarray:
        if self._fused(ctx.device):
            # the final draw goes straight into the packed bytes, one kernel per tensor
            packed_t = torch.empty(packed_nbytes(self.spec.num_masked), dtype=torch.uint8, device=ctx.device)
            off = 0
            with torch.no_grad():
                for j, name in enumerate(self.spec.masked):
                    u = problem.trainables[name]
                    self._final_pack(packed_t, off, j, u, problem.extra["noise"][name], ctx)
                    off += u.numel()
            problem.extra["final_delta"] = _FinalDeltas(self, packed_t, problem.extra["noise"])
            packed = packed_t.cpu().numpy()
        else:
            bits = self.final_bits(problem, ctx)
            problem.extra["final_delta"] = {n: masked_noise(problem.extra["noise"][n], b, self.options.mask)
                                            for n, b in bits.items()}
            packed = pack_bits(torch.cat([b.reshape(-1) for b in bits.values()]), impl=self.kernels).cpu().numpy()
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
        deltas: dict[str, torch.Tensor]
        if self._fused(device):  # one client's weighted sum with weight 1: fma(Δ, 1, +0) is Δ itself
            deltas = self._mask_sums(packed.view(1, -1), [seed], torch.ones(1, dtype=torch.float32, device=device))
        else:
            bits = unpack_bits(packed, self.spec.num_masked, impl=self.kernels)
            deltas = {}
            off = 0
            for j, name in enumerate(self.spec.masked):
                k = self.spec.numel(name)
                m = bits[off: off + k].reshape(self.spec.shapes[name])
                deltas[name] = masked_noise(self.noise_for(seed, j, name, device), m, self.options.mask)
                off += k
        values = self._read_floats(payload, self.spec.unmasked, nb, device)
        more, buffers = self._values_to_update(values, global_state)
        deltas.update(more)
        return Update(deltas, buffers)

    def _mask_sums(self, packed: torch.Tensor, seeds: list[int], weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Σ_k a_k Δ_k per masked tensor from K clients' packed fields (uint8 [K, bytes] on the device), their
        noise seeds and float32 weights, in row order: the fused `mask_sum` kernel, one launch per tensor."""
        from . import fedmrn_kernels as fk
        a = self.options
        keys = torch.from_numpy(np.stack([fk.mask_sum_keys(seeds, make_stream(_NOISE, j), a.noise)
                                          for j in range(len(self.spec.masked))])).to(packed.device)
        out: dict[str, torch.Tensor] = {}
        off = 0
        for j, name in enumerate(self.spec.masked):
            k = self.spec.numel(name)
            out[name] = fk.mask_sum(packed, off, k, keys[j], weights, kind=a.noise, sigma=a.effective_sigma,
                                    signed=a.mask == SIGNED).view(self.spec.shapes[name])
            off += k
        return out

    def fused_sum(self, device: torch.device) -> "FusedMaskSum | None":
        """The server's fast path for `aggregate` on `device` (None: decode client by client as usual)."""
        if not self.spec.masked or not self._fused(device):
            return None
        return FusedMaskSum(self, device)


class FusedMaskSum:
    """FedMRN's hook into `aggregate`: `decode` validates a payload and decodes its unmasked tensors as
    `FedMRN.decode` does, keeping the packed mask bits and the seed; `weight` records the client's weight;
    `sums` then computes every masked tensor's weighted sum over all clients in one kernel launch per tensor
    (the same float32 values as adding each decoded Δ with `acc.add_(Δ, alpha=a)` in the same order)."""

    def __init__(self, algo: FedMRN, device: torch.device) -> None:
        self.algo, self.device = algo, device
        self.rows: list[np.ndarray] = []
        self.seeds: list[int] = []
        self.weights: list[float] = []

    def decode(self, payload: memoryview, seed: int, global_state: dict[str, torch.Tensor],
               device: torch.device) -> Update:
        algo = self.algo
        if payload.nbytes != algo.payload_nbytes():
            raise ValueError(f"FedMRN payload is {payload.nbytes} bytes, expected {algo.payload_nbytes()}")
        nb = packed_nbytes(algo.spec.num_masked)
        self.rows.append(np.frombuffer(payload, dtype=np.uint8, count=nb))
        self.seeds.append(int(seed))
        values = algo._read_floats(payload, algo.spec.unmasked, nb, device)
        deltas, buffers = algo._values_to_update(values, global_state)
        return Update(deltas, buffers)

    def weight(self, a: float) -> None:
        self.weights.append(float(a))

    def drop(self) -> None:
        """Leave out the client decoded last (its upload was not finite and is skipped)."""
        self.rows.pop()
        self.seeds.pop()

    def sums(self) -> dict[str, torch.Tensor]:
        if len(self.weights) != len(self.rows):
            raise RuntimeError(f"{len(self.rows)} payloads but {len(self.weights)} weights")
        packed = torch.from_numpy(np.stack(self.rows)).to(self.device)
        weights = torch.from_numpy(np.array(self.weights, dtype=np.float32)).to(self.device)  # alpha -> float32
        return self.algo._mask_sums(packed, self.seeds, weights)


class _FinalDeltas(Mapping):
    """`problem.extra["final_delta"]` of the kernel path: the sent Δ per masked tensor, rebuilt from the packed
    bits only when someone reads it (the upload itself needs only the bits)."""

    def __init__(self, algo: FedMRN, packed: torch.Tensor, noises: dict[str, torch.Tensor]) -> None:
        self._algo, self._packed, self._noises = algo, packed, noises
        self._cache: dict[str, torch.Tensor] | None = None

    def _all(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            spec, algo = self._algo.spec, self._algo
            bits = unpack_bits(self._packed, spec.num_masked, impl=algo.kernels)
            self._cache, off = {}, 0
            for name in spec.masked:
                k = spec.numel(name)
                m = bits[off: off + k].reshape(spec.shapes[name])
                self._cache[name] = masked_noise(self._noises[name], m, algo.options.mask)
                off += k
        return self._cache

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._algo.spec.masked)

    def __len__(self) -> int:
        return len(self._algo.spec.masked)
