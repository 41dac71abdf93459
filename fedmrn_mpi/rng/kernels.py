"""Triton kernels of the counter-hash noise generator and of mask bit packing (docs/design.md#noise-generator).

Imported lazily by the wrappers in `noise.py` and `bits.py` (and by `algorithms/fedmrn_kernels.py`) when a
tensor is on a CUDA device, or when a caller forces ``impl="triton"``: importing this module imports Triton.
Every kernel computes exactly what the NumPy/torch reference computes, in the same float operation order:

- the 32-bit hash in uint32 arithmetic (constants are ``tl.constexpr``: Triton's JIT rejects 64-bit Python
  constants and plain globals); the 64-bit key derivation (`stream_key`) stays in Python and the keys arrive
  as int32 arguments (bit patterns of the uint32 keys, so every key has the same argument type);
- float64 constants and sigma arrive as their IEEE bit patterns in int64 arguments (a Python float argument
  is float32 in Triton, and Triton types float literals as float32);
- every float kernel is launched with ``enable_fp_fusion=False`` so that no multiply and add are contracted into
  an FMA where the reference rounds twice; where the reference does fuse (torch's ``add_(t, alpha=a)``) the
  kernel calls ``tl.fma`` explicitly; float32 divisions are the IEEE ones (``div_rn``).

Bit-exactness: uniform, rademacher, uniform01 and the bit packing are bit-identical to the reference on any
device and under ``TRITON_INTERPRET=1``. Gaussian noise uses float64 ``log`` and ``cos``: on CUDA these are
libdevice's ``__nv_log``/``__nv_cos``, as in torch's eager CUDA ops (the CUDA tests check it); on the CPU
the reference uses torch's (SLEEF) functions and the interpreter NumPy's, so there the float32 results may
differ by the 2 ulp the generator already allows between the CPU and CUDA (in practice the float64
differences of one ulp almost never survive the rounding to float32).
"""

from __future__ import annotations

import struct

import numpy as np
import torch
import triton
import triton.language as tl

from .noise import NOISE_KINDS, stream_key

__all__ = [
    "KIND_IDS",
    "NOISE_BLOCK",
    "PACK_BLOCK",
    "f64_bits",
    "i32_key",
    "noise_keys",
    "noise_args",
    "launch_noise",
    "launch_uniform01",
    "launch_pack",
    "launch_unpack",
    "fmix32",
    "hash32",
    "key32",
    "f64_of",
    "uniform01_of",
    "noise_value",
    "pid64",
]

# murmur3 fmix32 multipliers and the zero guard, as compile-time constants.
F1: tl.constexpr = tl.constexpr(0x85EBCA6B)
F2: tl.constexpr = tl.constexpr(0xC2B2AE35)
EPS: tl.constexpr = tl.constexpr(float(np.float32(1e-8)))    # float32(1e-8): an exact float32 value
TWO_M24: tl.constexpr = tl.constexpr(2.0**-24)
TWO_M23: tl.constexpr = tl.constexpr(2.0**-23)

KIND_IDS = {k: i for i, k in enumerate(NOISE_KINDS)}   # uniform 0, gaussian 1, rademacher 2
_UNIFORM, _GAUSSIAN, _RADEMACHER = (KIND_IDS[k] for k in ("uniform", "gaussian", "rademacher"))
_TWO_PI_2M24 = 2.0 * np.pi * 2.0**-24                  # the reference's float64 angle step (2 pi 2**-24)

NOISE_BLOCK = 2048        # elements per program (uniform01, uniform, rademacher)
GAUSS_BLOCK = 1024        # float64 log/cos hold more registers
PACK_BLOCK = 512          # packed bytes per program (4096 mask bits)
UNPACK_BLOCK = 4096       # mask elements per program


# --- host-side argument helpers ----------------------------------------------------------------------------

def i32_key(k: int) -> int:
    """A uint32 key as the int32 with the same bits (every key then has Triton's i32 argument type)."""
    k = int(k)
    return k - (1 << 32) if k >= 1 << 31 else k


def f64_bits(v: float) -> int:
    """The IEEE-754 bits of the float64 `v` as a signed int64 (passed to kernels, bitcast back there)."""
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


def noise_keys(seed: int, stream: int, kind: str) -> tuple[int, int, int, int]:
    """(k0, k1, k0', k1') as int32 bit patterns: lane 0, and lane 1 for gaussian (zeros otherwise)."""
    k0, k1 = stream_key(seed, stream, 0)
    k0b, k1b = stream_key(seed, stream, 1) if kind == "gaussian" else (0, 0)
    return i32_key(k0), i32_key(k1), i32_key(k0b), i32_key(k1b)


def noise_args(kind: str, sigma: float) -> tuple[float, int, int]:
    """(float32(sigma) as a float, float64 sigma bits, float64 2*pi*2**-24 bits) for the noise kernels."""
    sigma = float(sigma)
    return float(np.float32(sigma)), f64_bits(sigma), f64_bits(_TWO_PI_2M24)


# --- device functions ------------------------------------------------------------------------------------------

@triton.jit
def fmix32(x):
    """murmur3 fmix32 on uint32 values (wrapping arithmetic)."""
    x ^= x >> 16
    x *= F1
    x ^= x >> 13
    x *= F2
    x ^= x >> 16
    return x


@triton.jit
def hash32(i, k0, k1):
    """h(i) = fmix32(fmix32(i ^ k0) ^ k1) on uint32 counters and keys."""
    return fmix32(fmix32(i ^ k0) ^ k1)


@triton.jit
def key32(k):
    """An int32 kernel argument (a key's bit pattern) as uint32."""
    return k.to(tl.uint32, bitcast=True)


@triton.jit
def f64_of(bits):
    """A float64 from its IEEE bits passed as an integer argument."""
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def pid64(BLOCK: tl.constexpr):
    """int64 element offsets of this program's block (counters may exceed 2**31)."""
    return tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def uniform01_of(h):
    """(h >> 8) * 2**-24: float32 in [0, 1), exact."""
    return (h >> 8).to(tl.float32) * TWO_M24


@triton.jit
def noise_value(i, k0, k1, k0b, k1b, s32, sig_bits, tp_bits, KIND: tl.constexpr):
    """The guarded noise value of counters `i` (uint32) with lane-0 keys k0, k1 and lane-1 keys k0b, k1b.

    s32: float32(sigma); sig_bits / tp_bits: float64 sigma and 2*pi*2**-24 as bits (gaussian only).
    """
    h = hash32(i, k0, k1)
    if KIND == 0:  # uniform: (h >> 8) * 2**-23 - 1 is exact in float32; the multiply rounds once
        v = ((h >> 8).to(tl.float32) * TWO_M23 - 1.0) * s32
    elif KIND == 2:  # rademacher: b * (-2 sigma) + sigma, both steps exact
        v = (h >> 31).to(tl.float32) * (s32 * -2.0) + s32
    else:  # gaussian, float64 throughout, left to right, one rounding to float32
        h2 = hash32(i, k0b, k1b)
        u1 = ((h >> 8) + 1).to(tl.float64) * TWO_M24
        a = (h2 >> 8).to(tl.float64) * f64_of(tp_bits)
        r = tl.sqrt(tl.log(u1) * -2.0)  # float64 sqrt is the IEEE one (PTX has sqrt.rn.f64 only)
        v = (r * tl.cos(a) * f64_of(sig_bits)).to(tl.float32)
    return tl.where(tl.abs(v) < EPS, EPS, v)


# --- kernels ----------------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["k0", "k1", "k0b", "k1b", "sig_bits", "tp_bits"])
def _noise_kernel(out_ptr, numel, k0, k1, k0b, k1b, s32, sig_bits, tp_bits,
                  KIND: tl.constexpr, BLOCK: tl.constexpr):
    offs = pid64(BLOCK)
    m = offs < numel
    v = noise_value(offs.to(tl.uint32), key32(k0), key32(k1), key32(k0b), key32(k1b), s32, sig_bits, tp_bits,
                    KIND)
    tl.store(out_ptr + offs, v, mask=m)


@triton.jit(do_not_specialize=["k0", "k1"])
def _uniform01_kernel(out_ptr, numel, k0, k1, BLOCK: tl.constexpr):
    offs = pid64(BLOCK)
    m = offs < numel
    tl.store(out_ptr + offs, uniform01_of(hash32(offs.to(tl.uint32), key32(k0), key32(k1))), mask=m)


@triton.jit
def _pack_kernel(mask_ptr, out_ptr, numel, nbytes, BLOCK: tl.constexpr):
    """mask bytes (0/1) -> packed bytes; bit k of the mask is bit k % 8 of byte k // 8."""
    b = pid64(BLOCK)
    t = tl.arange(0, 8)
    k = b[:, None] * 8 + t[None, :]
    bits = tl.load(mask_ptr + k, mask=k < numel, other=0).to(tl.int32)
    byte = tl.sum((bits != 0).to(tl.int32) << t[None, :], axis=1)
    tl.store(out_ptr + b, byte.to(tl.uint8), mask=b < nbytes)


@triton.jit
def _unpack_kernel(packed_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    """packed bytes -> mask bytes (0/1)."""
    k = pid64(BLOCK)
    m = k < numel
    byte = tl.load(packed_ptr + (k >> 3), mask=m, other=0).to(tl.int32)
    tl.store(out_ptr + k, ((byte >> (k & 7).to(tl.int32)) & 1).to(tl.uint8), mask=m)


# --- launchers (tensors already validated by the wrappers in noise.py / bits.py) ------------------------------

def _grid(n: int, block: int) -> tuple[int]:
    return (triton.cdiv(n, block),)


def launch_noise(out: torch.Tensor, seed: int, stream: int, kind: str, sigma: float) -> torch.Tensor:
    """Fill the contiguous float32 tensor `out` with noise(seed, stream, out.numel(), kind, sigma)."""
    n = out.numel()
    if n:
        kid = KIND_IDS[kind]
        block = GAUSS_BLOCK if kid == _GAUSSIAN else NOISE_BLOCK
        _noise_kernel[_grid(n, block)](out, n, *noise_keys(seed, stream, kind), *noise_args(kind, sigma),
                                       KIND=kid, BLOCK=block, num_warps=4 if kid == _GAUSSIAN else 8,
                                       enable_fp_fusion=False)
    return out


def launch_uniform01(out: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """Fill the contiguous float32 tensor `out` with uniform01(seed, stream, out.numel())."""
    n = out.numel()
    if n:
        k0, k1 = stream_key(seed, stream, 0)
        _uniform01_kernel[_grid(n, NOISE_BLOCK)](out, n, i32_key(k0), i32_key(k1), BLOCK=NOISE_BLOCK,
                                                 num_warps=8, enable_fp_fusion=False)
    return out


def launch_pack(mask_u8: torch.Tensor) -> torch.Tensor:
    """Contiguous 1-D uint8 tensor of 0/1 (a bool mask's bytes) -> ceil(n / 8) packed bytes."""
    n = mask_u8.numel()
    nbytes = (n + 7) // 8
    out = torch.empty(nbytes, dtype=torch.uint8, device=mask_u8.device)
    if nbytes:
        _pack_kernel[_grid(nbytes, PACK_BLOCK)](mask_u8, out, n, nbytes, BLOCK=PACK_BLOCK, num_warps=4)
    return out


def launch_unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Contiguous 1-D packed uint8 tensor -> bool tensor of `numel` elements."""
    out = torch.empty(numel, dtype=torch.uint8, device=packed.device)
    if numel:
        _unpack_kernel[_grid(numel, UNPACK_BLOCK)](packed, out, numel, BLOCK=UNPACK_BLOCK, num_warps=8)
    return out.view(torch.bool)
