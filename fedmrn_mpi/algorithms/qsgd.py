"""qsgd: unbiased stochastic quantisation of each masked tensor's update (Alistarh et al., docs/baselines.md §2).

Per masked tensor `v` of `d` entries, with `s = algorithm.levels` and `‖v‖` its L2 norm (float64, rounded once
to float32; the float32 value is used from then on on both sides):

- `r_i = |v_i| · float32(s / ‖v‖) ∈ [0, s]` (float32), `l_i = floor(r_i) + [U_i < r_i − floor(r_i)]` with
  `U_i = uniform01(draw_seed, make_stream(0, j))` (`j` = masked-tensor index), clamped to `s` (float32 rounding
  of the norm can push the largest `r_i` a hair above `s`). `‖v‖ = 0` sends all levels 0.
- decoded value `sgn_i · l_i · float32(‖v‖ / s)` (a float32 product), so `E[v̂] = v` up to the 2⁻²⁴
  granularity of `U` and float32 rounding; variance `E‖v̂ − v‖² ≤ min(d/s², √d/s)·‖v‖²` (Lemma 3.1).
- sign bit = 1 iff `v_i < 0` **and** `l_i > 0`: a zero level carries no sign, so each value has one code.

Wire per tensor: `b = 1 + ceil(log2(s + 1))` bits per entry in bit planes, plane-major and packed once with
`pack_bits` (bit `p·d + i` of the field is bit `p` of entry `i`'s code word `sign | level << 1`: plane 0 = the
sign bits, planes 1..b−1 = the level bits, least significant first), `ceil(b·d/8)` bytes, then `‖v‖` as float32
little-endian. This is the fixed-width wire of docs/baselines.md §2 (the paper's Elias coding has a variable
length, which an exact `payload_nbytes` rules out); no bucketing, one norm per tensor (the analysed variant).
CNN4/FashionMNIST, 389,920 masked entries in 5 tensors (all multiples of 8 entries, so no padding):
levels 1 (b = 2): 97,480 + 20 = 97,500 bytes masked, 105,180 with the 7,680 unmasked bytes;
levels 3 (b = 3): 146,220 + 20 + 7,680 = 153,920 bytes.

The server rejects (ValueError -> WireError) a norm that is not finite or negative, a level above `s`, a sign
bit on a zero level and non-zero padding bits.
"""

from __future__ import annotations

import numpy as np
import torch

from ..rng.bits import check_padding, pack_planes, packed_nbytes, unpack_planes
from ..rng.noise import make_stream, uniform01
from .base import ClientContext, NonFiniteUpdate
from .compress import DeltaCompression

# Stream purposes of this algorithm (one stream per purpose and masked-tensor index).
_ROUNDING = 0


def level_bits(levels: int) -> int:
    """ceil(log2(levels + 1)): bits for an integer level in 0..levels."""
    return int(levels).bit_length()


def qsgd_values(negative: torch.Tensor, level: torch.Tensor, norm: float, levels: int) -> torch.Tensor:
    """norm · sgn · level / s as float32: level · float32(norm / s), one float32 product, so every device
    gives the same bits (the one decoding rule, shared by client and server)."""
    mag = level.to(torch.float32).mul_(float(np.float32(norm / levels)))
    return torch.where(negative, -mag, mag)


class QSGD(DeltaCompression):
    """Per masked tensor: float32 L2 norm and, per entry, a sign bit and a stochastically rounded level."""

    name = "qsgd"
    algo_id = 4
    options = ("levels",)

    @property
    def levels(self) -> int:
        return int(self.cfg.algorithm.levels)

    def entry_bits(self) -> int:
        """b = 1 + ceil(log2(s + 1)) bits per entry."""
        return 1 + level_bits(self.levels)

    def tensor_nbytes(self, index: int, numel: int) -> int:
        return packed_nbytes(self.entry_bits() * numel) + 4

    def quantize(self, v: torch.Tensor, index: int, draw_seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(negative, level, float32 norm) of the flattened tensor `v`; the rounding draws come from `draw_seed`."""
        s, flat = self.levels, v.reshape(-1)
        norm = float(np.float32(torch.linalg.vector_norm(flat.to(torch.float64)).item()))
        if norm == 0.0:  # nothing to send; no draw needed
            zeros = torch.zeros(flat.numel(), dtype=torch.int64, device=flat.device)
            return zeros.bool(), zeros, norm
        # float32 (r − floor(r) is exact, and u lies on a 2^-24 grid anyway), unless s/‖v‖ overflows it
        scale = s / norm
        if np.isfinite(np.float32(scale)):
            r = flat.abs().to(torch.float32).mul_(float(np.float32(scale)))
        else:
            r = flat.abs().to(torch.float64).mul_(scale).to(torch.float32)
        low = r.floor()
        u = uniform01(draw_seed, make_stream(_ROUNDING, index), flat.numel(), flat.device)
        up = u < r.sub_(low)  # r now holds the fractional part
        level = low.add_(up).clamp_(max=s).to(torch.int64)
        return (flat < 0) & (level > 0), level, norm

    def encode_tensor(self, delta: torch.Tensor, index: int, ctx: ClientContext) -> tuple[np.ndarray, torch.Tensor]:
        negative, level, norm = self.quantize(delta, index, ctx.draw_seed)
        word = negative.to(torch.int64) | (level << 1)
        code = np.concatenate([pack_planes(word, self.entry_bits()).cpu().numpy(),
                               np.array([norm], dtype="<f4").view(np.uint8)])
        return code, qsgd_values(negative, level, norm, self.levels).reshape(delta.shape)

    def decode_tensor(self, code: np.ndarray, index: int, shape: tuple[int, ...], seed: int,
                      device: torch.device) -> torch.Tensor:
        name, s, b = self.spec.masked[index], self.levels, self.entry_bits()
        d = int(np.prod(shape, dtype=np.int64))
        nb = packed_nbytes(b * d)
        if code.size != nb + 4:
            raise ValueError(f"qsgd code of {name} is {code.size} bytes, expected {nb + 4}")
        norm = float(code[nb: nb + 4].copy().view("<f4")[0])
        if not np.isfinite(norm):
            raise NonFiniteUpdate(f"qsgd norm of {name} is {norm}")
        if not norm >= 0:
            raise ValueError(f"qsgd norm of {name} is {norm}, expected a finite value >= 0")
        check_padding(code[:nb], b * d, f"qsgd codes of {name}")
        word = unpack_planes(torch.from_numpy(code[:nb].copy()).to(device), d, b)
        negative, level = (word & 1).bool(), word >> 1
        top = int(level.max()) if d else 0
        if top > s:
            raise ValueError(f"qsgd level {top} in {name} exceeds levels={s}")
        if bool((negative & (level == 0)).any()):
            raise ValueError(f"qsgd code of {name} has a sign bit on a zero level")
        return qsgd_values(negative, level, norm, s).reshape(shape)
