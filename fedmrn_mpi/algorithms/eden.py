"""EDEN with 1 bit per coordinate (Vargaftik et al., ICML 2022; docs/baselines.md §4), as a post-training codec.

The client trains every parameter as FedAvg does (`DeltaCompression`); each masked tensor's update Δ
(d entries, flattened) is then cut into power-of-two blocks, and every block x (zero-padded to its size n) is
rotated by the randomised Hadamard transform y = R(x) = H (D x) / sqrt(n) (`hadamard.py`) and sent as
n sign bits plus one float32 scale

    S = ||y||_2^2 / ||y||_1        (EDEN's unbiased scale for 1 bit; = DRIVE's unbiased variant)

The server rebuilds x_hat = R^-1(S * sign(y)) and drops the padding. D is regenerated from the header seed
(`noise_seed` on the client, `seed` in decode) with stream make_stream(_ROTATION, j, b) for masked tensor j,
block b, so no rotation seed travels besides the header's. Unmasked tensors travel as float32 (as in FedMRN).

Block rule (`block_sizes`): the binary decomposition of d, largest power first, keeping every power of two
>= MIN_BLOCK = 256 as its own block; the remainder r = d mod 256, if any, is one block of next_pow2(r) entries,
zero-padded. Padding is therefore < 128 entries per tensor (< r, and 0 when r is a power of two), and a tensor
has at most floor(log2 d) - 6 blocks, i.e. at most that many 32-bit scales. CNN4 (FashionMNIST) and CNN8
(CIFAR-10) have zero padding except CNN8's first conv (864 = 512 + 256 + 96 -> blocks 512, 256, 128: 32
padded entries), see tests/unit/test_eden.py. Merging the remainder into one block rather than splitting it
further keeps small blocks (high variance, 32 bits of scale each) to at most one per tensor.

Wire layout of masked tensor j (blocks n_0 > n_1 > ... > n_{k-1}, n' = sum n_b = d + padding):
  k float32 scales S_0..S_{k-1} (little-endian), then pack_bits of the n' sign bits of the blocks
  concatenated in block order, bit = 1 where y >= 0 (decoded +S), 0 where y < 0 (decoded -S):
  4 k + ceil(n' / 8) bytes; the unused high bits of the last byte are zero.
The payload is these codes in `ModelSpec.masked` order, then the unmasked float32 values (`DeltaCompression`).
CNN4/FashionMNIST: 5 tensors, 10 blocks, 389,920 sign bits: 40 + 48,740 = 48,780 bytes + 4 * 1,920 = 56,460
bytes (1.0008 bits per masked weight, 1.1527 bits per parameter including the float32 BN values).

Edge cases: an exact zero y_i sends bit 1 (sign +1, as drive_torch's `sign` with 0 -> +1); it adds nothing to
||y||_1, so S is unchanged. An all-zero block (||y||_1 = 0) has S = 0 and decodes to zeros. A non-finite
update (diverged training) is refused on the client with ValueError rather than sent as a NaN scale. The
decoder refuses a scale that is NaN, infinite or negative and non-zero unused bits (ValueError, which
`aggregate` reports as a WireError naming rank, client and round).

Deviations from the reference code (docs/baselines.md §4):
- Power-of-two blocks per tensor instead of zero-padding the whole flattened vector to the next power of two
  (the reference pads; per-tensor padding would cost +78 % bits on CNN4, whole-model padding +34 %). Each
  block is an independent EDEN instance (own rotation, own scale).
- The diagonal D comes from the counter-based generator (`rng.noise`, rademacher), not torch.Generator's
  bernoulli_, so it is identical on every device; the transform and its inverse are the reference's
  (R = H D / sqrt(n), R^-1 = D H / sqrt(n)).
- The scale is sent as S = ||y||^2 / ||y||_1 itself (not the centroid form S * sqrt(2/pi)), computed with
  float64 sums and rounded once to float32.
Unbiasedness: exact only for a uniformly random rotation. With the randomised Hadamard transform (one D, as
in the reference) it is approximate: measured relative bias ||E[x_hat] - x|| / ||x|| ~ 0.005 for a dense
Gaussian block of 256 (20,000 draws), but ~0.3 for a block dominated by one large entry (H D maps a spike to a
vector of equal magnitudes, whose signs then carry almost nothing about the other entries). Applying R twice
with independent D brought the bias below the Monte-Carlo noise of 20,000 draws for blocks of >= 256 entries
in the same measurement; not done here, to stay with the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..rng.bits import pack_bits, packed_nbytes, unpack_bits
from ..rng.noise import make_stream
from .base import ClientContext, NonFiniteUpdate
from .compress import DeltaCompression
from .hadamard import inverse_randomized_hadamard, randomized_hadamard

__all__ = ["EDEN", "MIN_BLOCK", "block_sizes", "eden_encode", "eden_decode"]

MIN_BLOCK = 256      # powers of two below this are not blocks of their own (see the module docstring)
_ROTATION = 0        # stream purpose: the diagonal D of block b of masked tensor j


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def block_sizes(d: int) -> list[int]:
    """Block sizes (powers of two, largest first) for a tensor of `d` entries; their sum - d is the padding."""
    if d < 0:
        raise ValueError(f"tensor size must be >= 0, got {d}")
    big = [1 << b for b in range(d.bit_length() - 1, -1, -1) if (d >> b) & 1 and (1 << b) >= MIN_BLOCK]
    rest = d % MIN_BLOCK
    return big + ([_next_pow2(rest)] if rest else [])


def _streams(index: int, nblocks: int) -> list[int]:
    return [make_stream(_ROTATION, index, b) for b in range(nblocks)]


def eden_encode(x: torch.Tensor, index: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """1-bit EDEN code of the flattened tensor `x` (masked tensor `index`, header `seed`):
    (float32 scales per block, bool sign bits of all blocks concatenated, True where y >= 0)."""
    flat = x.detach().reshape(-1).to(torch.float32)
    sizes = block_sizes(flat.numel())
    scales = np.zeros(len(sizes), dtype="<f4")
    bits, start = [], 0
    for b, (n, stream) in enumerate(zip(sizes, _streams(index, len(sizes)))):
        block = torch.zeros(1, n, dtype=torch.float32, device=flat.device)
        part = flat[start: start + n]
        block[0, : part.numel()] = part
        start += part.numel()
        y = randomized_hadamard(block, seed, [stream])
        y64 = y.double()
        sq, l1 = torch.stack([y64.square().sum(), y64.abs().sum()]).tolist()  # one device sync
        scale = sq / l1 if l1 > 0 else 0.0  # l1 = 0: all-zero block, decoded as zeros
        if not (math.isfinite(sq) and math.isfinite(l1) and math.isfinite(float(np.float32(scale)))):
            scale = math.nan  # a diverged update: sent as is, the server's on_bad_update policy decides
        scales[b] = scale
        bits.append(y[0] >= 0)
    return scales, torch.cat(bits) if bits else torch.zeros(0, dtype=torch.bool, device=flat.device)


def eden_decode(scales: np.ndarray, bits: torch.Tensor, index: int, numel: int, seed: int) -> torch.Tensor:
    """x_hat = R^-1(S * sign) per block, concatenated and truncated to `numel` (1-D float32, on bits' device)."""
    sizes = block_sizes(numel)
    signs = bits.to(torch.float32).mul_(2.0).sub_(1.0)
    out, start = [], 0
    for n, s, stream in zip(sizes, scales.tolist(), _streams(index, len(sizes))):
        out.append(inverse_randomized_hadamard(signs[start: start + n].view(1, n) * s, seed, [stream])[0])
        start += n
    flat = torch.cat(out) if out else torch.zeros(0, dtype=torch.float32, device=bits.device)
    return flat[:numel]


class EDEN(DeltaCompression):
    """EDEN, 1 bit per coordinate, power-of-two blocks per masked tensor (see the module docstring)."""

    name = "eden"
    algo_id = 6

    @dataclass(frozen=True)
    class Options:
        """EDEN has no options of its own."""

    def tensor_nbytes(self, index: int, numel: int) -> int:
        sizes = block_sizes(numel)
        return 4 * len(sizes) + packed_nbytes(sum(sizes))

    def encode_tensor(self, delta: torch.Tensor, index: int, ctx: ClientContext) -> tuple[np.ndarray, torch.Tensor]:
        scales, bits = eden_encode(delta, index, ctx.noise_seed)
        code = np.concatenate([scales.view(np.uint8), pack_bits(bits).cpu().numpy()])
        decoded = eden_decode(scales, bits, index, delta.numel(), ctx.noise_seed).reshape(delta.shape)
        return code, decoded

    def decode_tensor(self, code: np.ndarray, index: int, shape: tuple[int, ...], seed: int,
                      device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        sizes = block_sizes(numel)
        k, nbits = len(sizes), sum(sizes)
        if code.nbytes != self.tensor_nbytes(index, numel):
            raise ValueError(f"EDEN code of masked tensor {index} is {code.nbytes} bytes, "
                             f"expected {self.tensor_nbytes(index, numel)}")
        scales = np.frombuffer(code[: 4 * k].tobytes(), dtype="<f4")
        if not np.isfinite(scales).all():
            b = int(np.argmax(~np.isfinite(scales)))
            raise NonFiniteUpdate(f"EDEN masked tensor {index}, block {b}: scale {scales[b]} is not finite")
        bad = scales < 0
        if bad.any():
            b = int(np.argmax(bad))
            raise ValueError(f"EDEN masked tensor {index}, block {b}: scale {scales[b]} is not a finite number >= 0")
        packed = code[4 * k:]
        if nbits % 8 and packed[-1] >> (nbits % 8):
            raise ValueError(f"EDEN masked tensor {index}: unused bits of the last sign byte are not zero")
        bits = unpack_bits(torch.from_numpy(packed.copy()).to(device), nbits)
        return eden_decode(scales, bits, index, numel, seed).reshape(shape)
