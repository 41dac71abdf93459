"""Pack boolean masks into bytes and back (the FedMRN uplink payload, docs/design.md#wire-format).

Layout: bit k of the flattened mask is bit (k % 8) of byte k // 8, least significant bit first, zero
padded: the same bytes as ``numpy.packbits(mask, bitorder="little")``.

On CUDA (and on the CPU with _CPU_NUMPY = False) both directions are a few int64 torch ops: 8 mask
bytes (each 0/1) are read as one little-endian int64 word and the 8 bits are folded together with shifts,
or spread apart in reverse. Every intermediate stays below 2**57, so nothing relies on overflow. On the
CPU, numpy.packbits / unpackbits on zero-copy views do the same 3-4x faster.

On CUDA both directions run a Triton kernel instead (`fedmrn_mpi.rng.kernels`; selection and the `impl`
argument as in `fedmrn_mpi.rng.noise.use_triton`); the paths above remain the reference.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from .noise import use_triton

__all__ = ["check_padding", "pack_bits", "pack_planes", "packed_nbytes", "unpack_bits", "unpack_planes"]

# Reinterpreting 8 bytes as one int64 word assumes little-endian memory (x86, ARM, every CUDA GPU).
assert sys.byteorder == "little", "fedmrn_mpi.bits assumes a little-endian machine"

# CPU tensors use NumPy's packbits; tests set this False to run the torch (CUDA) path on the CPU.
_CPU_NUMPY = True


def packed_nbytes(numel: int) -> int:
    """Bytes that pack_bits uses for `numel` mask elements: ceil(numel / 8)."""
    numel = int(numel)
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    return (numel + 7) // 8


def pack_bits(mask: torch.Tensor, *, impl: str | None = None) -> torch.Tensor:
    """Any-shape bool (or 0/1) tensor -> 1-D uint8 tensor of ceil(n / 8) bytes, LSB first, on the same device."""
    flat = mask.reshape(-1)
    if flat.dtype != torch.bool:
        flat = flat != 0
    if use_triton(flat.device, impl):
        from .kernels import launch_pack
        return launch_pack(flat.contiguous().view(torch.uint8))
    if flat.device.type == "cpu" and _CPU_NUMPY:
        return torch.from_numpy(np.packbits(flat.contiguous().numpy(), bitorder="little"))
    n = flat.numel()
    nbytes = packed_nbytes(n)
    if n % 8 == 0 and flat.is_contiguous() and flat.data_ptr() % 8 == 0:
        buf = flat.view(torch.uint8)  # no copy; only read below
    else:
        buf = torch.zeros(nbytes * 8, dtype=torch.uint8, device=flat.device)
        buf[:n].copy_(flat)
    x = buf.view(torch.int64)  # byte j of a word (0 or 1) sits at bit 8j
    # Fold bit 8j down to bit j: 8j -> 8j-7 pairs bytes, -14 pairs pairs, -28 pairs quads. The stray
    # copies all land on bits >= 8 or on bits that stay zero in the low byte (checked exhaustively by tests).
    x = x | (x >> 7)
    x.bitwise_or_(x >> 14).bitwise_or_(x >> 28).bitwise_and_(0xFF)
    return x.to(torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int, *, impl: str | None = None) -> torch.Tensor:
    """Inverse of pack_bits: 1-D bool tensor of `numel` elements on the device of `packed`."""
    numel = int(numel)
    want = packed_nbytes(numel)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"packed mask must be a uint8 tensor, got {got}")
    if packed.dim() != 1 or packed.numel() != want:
        raise ValueError(f"packed mask for {numel} elements must be 1-D with {want} bytes, "
                         f"got {packed.numel()} bytes in shape {tuple(packed.shape)}")
    if use_triton(packed.device, impl):
        from .kernels import launch_unpack
        return launch_unpack(packed.contiguous(), numel)
    if packed.device.type == "cpu" and _CPU_NUMPY:
        bits = np.unpackbits(packed.contiguous().numpy(), count=numel, bitorder="little")
        return torch.from_numpy(bits.view(np.bool_))
    # Spread bit j of a byte to bit 8j of an int64 word, in three steps that mirror pack_bits.
    x = packed.to(torch.int64)
    x = (x | (x << 28)).bitwise_and_(0x0000000F0000000F)
    x = (x | (x << 14)).bitwise_and_(0x0003000300030003)
    x = (x | (x << 7)).bitwise_and_(0x0101010101010101)
    return x.view(torch.uint8).view(torch.bool)[:numel]


def check_padding(packed: np.ndarray, nbits: int, what: str) -> None:
    """The unused high bits of the last byte of a pack_bits field must be zero (cheap corruption check)."""
    used = nbits % 8
    if used and packed.size and int(packed[-1]) >> used:
        raise ValueError(f"{what}: non-zero padding bits in the last byte")


def pack_planes(values: torch.Tensor, width: int) -> torch.Tensor:
    """Non-negative integers (1-D, each < 2**width) -> `ceil(width·n/8)` bytes: bit `p` of `values[i]` is bit
    `p·n + i` of the packed field (plane-major, pack_bits order)."""
    n = values.numel()
    planes = torch.empty((width, n), dtype=torch.bool, device=values.device)
    for p in range(width):  # one vectorised pass per bit plane
        planes[p] = ((values >> p) & 1).bool()
    return pack_bits(planes)


def unpack_planes(packed: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Inverse of pack_planes: int64 tensor of `n` values on the device of `packed`."""
    planes = unpack_bits(packed, width * n).reshape(width, n)
    out = torch.zeros(n, dtype=torch.int64, device=packed.device)
    for p in range(width):
        out |= planes[p].to(torch.int64) << p
    return out
