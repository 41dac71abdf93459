"""topk: the largest-magnitude entries of each masked tensor's update (docs/baselines.md §3).

Per masked tensor `v` of `d` entries (`v = Δ`, or `Δ + e` with `algorithm.error_feedback`, `e` the client's
residual from its previous round, kept by the runner; the residual is then `v` with the sent entries zeroed):

- `k = max(1, ceil(fraction · d))`, with `fraction` taken as the decimal it was written as (so 0.07 · 100 is 7,
  not 8 through float rounding), at most `d`.
- the sent set is the `k` largest `|v_i|`, **ties broken by the lower index**: the first `k` of a stable
  descending sort of `|v|` (torch.topk's indices are not stable; `select_topk` gets the same set from its
  values, the k-th largest magnitude, in O(d)). NaN magnitudes sort first; the server then rejects the
  upload (non-finite value).
- indices are coded per tensor as whichever is smaller, decided from `d` and `k` alone (so the size is fixed):
  a `d`-bit bitmap (bit `i` = entry `i` is sent, `pack_bits` order) when `d < k · w`, else `k` indices of
  `w = ceil(log2 d)` bits each in increasing order, bit-plane packed once (bit `p·k + t` of the field = bit
  `p` of the `t`-th index, see qsgd.pack_planes); a tie goes to the indices.
- then the `k` values `v_i` as float32 little-endian, in index order. Decode scatters them into zeros, so the
  server's tensor equals the client's `v` on the sent entries bit for bit.

Wire per tensor: `ceil(min-coding bits / 8) + 4k` bytes. CNN4/FashionMNIST at fraction 0.01 (every tensor uses
**indices**: a bitmap would need at least 5x more bits):

| tensor | d | k | w | index bits | bytes (indices + values) |
|---|---|---|---|---|---|
| features.0.weight | 288 | 3 | 9 | 27 | 4 + 12 = 16 |
| features.4.weight | 18,432 | 185 | 15 | 2,775 | 347 + 740 = 1,087 |
| features.8.weight | 73,728 | 738 | 17 | 12,546 | 1,569 + 2,952 = 4,521 |
| features.12.weight | 294,912 | 2,950 | 19 | 56,050 | 7,007 + 11,800 = 18,807 |
| classifier.weight | 2,560 | 26 | 12 | 312 | 39 + 104 = 143 |

24,574 bytes masked + 7,680 unmasked = 32,254 bytes (message 32,310). The bitmap takes over for a tensor
once `fraction` exceeds about `1/w` (e.g. features.0.weight at fraction 0.2: k = 58, 522 index bits > 288).

The server rejects (ValueError -> WireError) an index >= d, indices not strictly increasing, a bitmap whose
popcount is not `k`, non-zero padding bits and non-finite values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from ..rng.bits import check_padding, pack_bits, pack_planes, packed_nbytes, unpack_bits, unpack_planes
from .base import ClientContext, NonFiniteUpdate, option
from .compress import DeltaCompression, error_feedback_option


def topk_count(fraction: float, numel: int) -> int:
    """k = max(1, ceil(fraction · d)), at most d; `fraction` read as its shortest decimal representation."""
    return min(numel, max(1, math.ceil(Fraction(repr(float(fraction))) * numel)))


def index_bits(numel: int) -> int:
    """w = ceil(log2 d) bits per index."""
    return max(int(numel) - 1, 0).bit_length()


def uses_bitmap(numel: int, k: int) -> bool:
    """True when a d-bit bitmap is strictly smaller than k indices of ceil(log2 d) bits."""
    return numel < k * index_bits(numel)


def select_topk(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Increasing int64 indices of the k largest |flat| entries; ties go to the lower index.

    The result is that of a stable descending sort of |flat| (the rule in the module docstring), computed
    without the full sort: the k-th largest magnitude t (torch.topk's values are exact even where its
    indices are not stable), every entry above t, and the lowest-index entries equal to t to make up k."""
    a = flat.abs()
    if bool(torch.isnan(a).any()):  # NaN breaks the comparisons below; the slow rule places NaN first
        return torch.sort(torch.sort(a, descending=True, stable=True).indices[:k]).values
    t = torch.topk(a, k, sorted=False).values.min()
    above = a > t
    at = a == t
    at &= torch.cumsum(at, 0) <= k - int(above.sum())
    return torch.nonzero(above | at).reshape(-1)


class TopK(DeltaCompression):
    """Per masked tensor: the k largest-magnitude entries as (bitmap or packed indices, float32 values)."""

    name = "topk"
    algo_id = 5

    @dataclass(frozen=True)
    class Options:
        fraction: float = option(0.01, "topk: share of each tensor's entries sent", gt=0, lt=1)
        error_feedback: bool = error_feedback_option()

    options: Options

    def plan(self, numel: int) -> tuple[int, bool, int]:
        """(k, bitmap?, bytes of the index field) for a tensor of `numel` entries."""
        k = topk_count(self.options.fraction, numel)
        bitmap = uses_bitmap(numel, k)
        return k, bitmap, packed_nbytes(numel if bitmap else k * index_bits(numel))

    def tensor_nbytes(self, index: int, numel: int) -> int:
        k, _, nb = self.plan(numel)
        return nb + 4 * k

    def encode_tensor(self, delta: torch.Tensor, index: int, ctx: ClientContext) -> tuple[np.ndarray, torch.Tensor]:
        flat = delta.reshape(-1)
        d = flat.numel()
        k, bitmap, _ = self.plan(d)
        idx = select_topk(flat, k)
        values = flat[idx].to(torch.float32)
        if bitmap:
            field = pack_bits(torch.zeros(d, dtype=torch.bool, device=flat.device).index_fill_(0, idx, True))
        else:
            field = pack_planes(idx, index_bits(d))
        code = np.concatenate([field.cpu().numpy(), values.cpu().numpy().astype("<f4").view(np.uint8)])
        decoded = torch.zeros(d, dtype=torch.float32, device=flat.device).index_copy_(0, idx, values)
        return code, decoded.reshape(delta.shape)

    def decode_tensor(self, code: np.ndarray, index: int, shape: tuple[int, ...], seed: int,
                      device: torch.device) -> torch.Tensor:
        name = self.spec.masked[index]
        d = int(np.prod(shape, dtype=np.int64))
        k, bitmap, nb = self.plan(d)
        if code.size != nb + 4 * k:
            raise ValueError(f"topk code of {name} is {code.size} bytes, expected {nb + 4 * k}")
        nbits = d if bitmap else k * index_bits(d)
        check_padding(code[:nb], nbits, f"topk index field of {name}")
        field = torch.from_numpy(code[:nb].copy()).to(device)
        if bitmap:
            idx = torch.nonzero(unpack_bits(field, d)).reshape(-1)
            if idx.numel() != k:
                raise ValueError(f"topk bitmap of {name} marks {idx.numel()} entries, expected {k}")
        else:
            idx = unpack_planes(field, k, index_bits(d))
            if bool((idx[1:] <= idx[:-1]).any()):
                raise ValueError(f"topk indices of {name} are not strictly increasing")
            if int(idx[-1]) >= d:  # increasing, so the last index is the largest
                raise ValueError(f"topk index {int(idx[-1])} of {name} is out of range for {d} entries")
        values = torch.from_numpy(code[nb:].copy().view("<f4")).to(device)
        if not bool(torch.isfinite(values).all()):
            raise NonFiniteUpdate(f"topk values of {name} are not all finite")
        return torch.zeros(d, dtype=torch.float32, device=device).index_copy_(0, idx, values).reshape(shape)
