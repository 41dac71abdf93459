"""Fast Walsh–Hadamard transform and the randomised Hadamard rotation used by EDEN (docs/baselines.md §4).

`fwht(x)` is the orthonormal transform H x / sqrt(n) over the last dimension of a (blocks, n) tensor,
n = 2**m, with H the Sylvester (natural-order) Hadamard matrix: the butterfly (a, b) -> (a + b, a - b) over
h = 1, 2, 4, ..., n/2, done in place on views, O(n log n). H / sqrt(n) is symmetric and orthogonal, so
`fwht` is its own inverse.

The randomised rotation is R(x) = H (D x) / sqrt(n) with D = diag(r), r_i = +-1 fair coins from the
counter-based generator (`rng.noise`, kind "rademacher": the top bit of the hash word), one stream per row,
so client and server build the same D from the header seed on any device. R^-1(y) = D (H y) / sqrt(n).

Precision: float32 in and out, computed in float32 (the inputs are float32 model updates). Measured on
Gaussian inputs (CPU): `fwht(fwht(x))` recovers x with relative L2 error 0.9e-7 (n = 2**5) to 1.8e-7
(n = 2**19), largest entry error <= 1.8e-7 of max|x|; the forward transform is within 1.3e-7 (relative L2)
of a float64 one. EDEN's 1-bit quantisation error is ~0.75 of the norm, so a float64 pass (a cast and twice
the memory traffic) buys nothing. The decoder transforms +-1 vectors, whose butterfly sums are integers of
magnitude <= n < 2**24 and therefore exact in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..rng.noise import noise

__all__ = ["is_power_of_two", "fwht_", "fwht", "rademacher_diagonal", "randomized_hadamard",
           "inverse_randomized_hadamard"]


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n >= 1 and n & (n - 1) == 0


def _check(x: torch.Tensor) -> int:
    if x.dim() != 2:
        raise ValueError(f"expected a (blocks, 2**m) tensor, got shape {tuple(x.shape)}")
    n = x.shape[1]
    if not is_power_of_two(n):
        raise ValueError(f"the last dimension must be a power of two, got {n}")
    return n


def fwht_(x: torch.Tensor) -> torch.Tensor:
    """In place, unnormalised: x <- x H over the last dimension of a contiguous (blocks, 2**m) tensor. Returns x."""
    n = _check(x)
    if not x.is_contiguous():
        raise ValueError("fwht_ needs a contiguous tensor (it works on reshaped views)")
    b = x.shape[0]
    tmp = torch.empty(b * (n // 2), dtype=x.dtype, device=x.device)
    h = 1
    while h < n:
        # rows split into n/(2h) pairs of adjacent runs of length h: (lo, hi) -> (lo + hi, lo - hi)
        v = x.view(b, n // (2 * h), 2, h)
        lo, hi = v[:, :, 0, :], v[:, :, 1, :]
        diff = tmp.view(b, n // (2 * h), h)
        torch.sub(lo, hi, out=diff)
        lo.add_(hi)
        hi.copy_(diff)
        h *= 2
    return x


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh–Hadamard transform H x / sqrt(n) over the last dimension of a (blocks, 2**m) float32
    tensor; a new float32 tensor. Its own inverse."""
    n = _check(x)
    out = x.to(torch.float32, copy=True).contiguous()
    fwht_(out)
    if n > 1:
        out.mul_(1.0 / math.sqrt(n))
    return out


def rademacher_diagonal(seed: int, streams: Sequence[int], n: int, device: torch.device | str) -> torch.Tensor:
    """(len(streams), n) float32 tensor of +-1: row k is the diagonal of D drawn from (seed, streams[k])."""
    if not streams:
        return torch.empty(0, n, dtype=torch.float32, device=device)
    return torch.stack([noise(seed, s, n, "rademacher", 1.0, device) for s in streams])


def randomized_hadamard(x: torch.Tensor, seed: int, streams: Sequence[int]) -> torch.Tensor:
    """R(x) = H (D x) / sqrt(n) per row of a (blocks, 2**m) tensor, row k rotated by D from (seed, streams[k])."""
    n = _check(x)
    if len(streams) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} rows need as many streams, got {len(streams)}")
    return fwht(x * rademacher_diagonal(seed, streams, n, x.device))


def inverse_randomized_hadamard(y: torch.Tensor, seed: int, streams: Sequence[int]) -> torch.Tensor:
    """R^-1(y) = D (H y) / sqrt(n), the inverse (and transpose) of `randomized_hadamard` with the same seed/streams."""
    n = _check(y)
    if len(streams) != y.shape[0]:
        raise ValueError(f"{y.shape[0]} rows need as many streams, got {len(streams)}")
    return fwht(y).mul_(rademacher_diagonal(seed, streams, n, y.device))
