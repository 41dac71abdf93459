"""Counter-based noise generator, bit-identical on the CPU and on every CUDA GPU (docs/design.md#noise-generator).

torch's seeded CUDA generators give values that depend on the GPU model, so FedMRN's noise comes from a
keyed 32-bit counter hash computed with exact integer arithmetic. Only the final float steps round: the
uniform and rademacher conversions are exact or one IEEE float32 multiply (bit-identical everywhere);
gaussian uses float64 log/sqrt/cos rounded once to float32 (CPU and CUDA agree within 2 ulp).

Algorithm (64-bit arithmetic modulo 2**64, 32-bit arithmetic modulo 2**32)::

    G = 0x9E3779B97F4A7C15
    mix64(z):  z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31
    fmix32(x): x ^= x >> 16; x *= 0x85EBCA6B;  x ^= x >> 13; x *= 0xC2B2AE35;  x ^= x >> 16   (murmur3)

    keys, for seed and stream in [0, 2**64) and lane in {0, 1}:
        state = mix64(seed ^ mix64(stream + G))
        k     = mix64(state + (lane + 1) * G)        # splitmix64's (lane+1)-th output from `state`
        k0, k1 = k & 0xFFFFFFFF, k >> 32
    word of element i (0 <= i < numel <= 2**32 - 1), lane 0 unless stated:
        h(i)  = fmix32(fmix32(i ^ k0) ^ k1)

    uniform01:   u = (h >> 8) * 2**-24                               float32 in [0, 1), exact
    uniform:     n = ((h >> 8) * 2**-23 - 1) * float32(sigma)       bracket exact in float32, one rounding
    rademacher:  n = (1 - 2 * (h >> 31)) * float32(sigma)           top bit of h, exact
    gaussian:    u1 = ((h_lane0 >> 8) + 1) * 2**-24  in (0, 1]      (so log u1 is finite)
                 a  = (h_lane1 >> 8) * (2 * pi * 2**-24)            = 2 pi u2, u2 in [0, 1)
                 n  = float32(sqrt(-2 * log(u1)) * cos(a) * sigma)  float64 throughout, left to right
    zero guard:  every n with |n| < float32(1e-8) becomes float32(1e-8)

    make_stream(p_1, ..., p_m):  s = mix64(m + G); for each p: s = mix64(((s + G) mod 2**64) ^ p)

Element i depends only on (seed, stream, lane, i), never on the shape or the chunking. The kinds share
lane 0 of a stream (rademacher's sign is uniform's sign): use different streams for independent draws.
For fixed keys h is a bijection of the counter, so two streams whose k1 happen to coincide (chance 2**-32
per pair) hold the same words in a different order: element-wise still unrelated.

Two exact implementations of h, checked against each other and against tests/numpy_noise_ref.py:
- torch int64 (CUDA, or the CPU with _CPU_NUMPY = False): a 32-bit product is formed as x * (c - 2**32);
  |c - 2**32| < 2**31 for both constants, so |product| < 2**63 never overflows, and `& 0xFFFFFFFF` of the
  two's-complement product is the exact residue mod 2**32.
- NumPy uint32 on the CPU (default there): native wrapping arithmetic, half the memory traffic, about 2x
  faster than eager torch int64 on the CPU.
Both work in cache-sized chunks on the CPU: every eager op is a pass over memory.

On CUDA, `noise` and `uniform01` (and the FedMRN codec built on them) run fused Triton kernels
(`fedmrn_mpi.rng.kernels`, one pass that writes float32) instead of the eager torch int64 path; the code
here stays the CPU path and the reference the kernels are tested against bit for bit. `use_triton`
decides: the module switch `KERNELS` (initialised from the environment variable FEDMRN_KERNELS) or a
call's `impl` is "auto" (Triton for CUDA tensors when it imports), "triton" (always; CPU tensors need
TRITON_INTERPRET=1 set before Triton is imported) or "reference" (never). Triton is imported only when a
kernel is about to run, so CPU-only processes never pay for it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..compat import triton_interpreter_problem

__all__ = [
    "NOISE_KINDS",
    "MAX_NUMEL",
    "make_stream",
    "stream_key",
    "random_u32",
    "uniform01",
    "noise",
    "zero_guard_",
    "KERNEL_IMPLS",
    "use_triton",
]

NOISE_KINDS = ("uniform", "gaussian", "rademacher")
MAX_NUMEL = (1 << 32) - 1  # counters are 32-bit; one stream holds at most this many elements

_M64 = (1 << 64) - 1
_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15
_ZERO_EPS = 1e-8
_F1 = 0x85EBCA6B
_F2 = 0xC2B2AE35
# The same multipliers shifted into (-2**31, 0) so that int64 products cannot overflow (module docstring).
_C1 = _F1 - (1 << 32)
_C2 = _F2 - (1 << 32)

# CPU words come from NumPy uint32 arithmetic; tests set this False to run the torch int64 (CUDA) path here.
_CPU_NUMPY = True

ShapeLike = int | Sequence[int] | torch.Size
DeviceLike = torch.device | str


# --- kernel selection ---------------------------------------------------------------------------------------

KERNEL_IMPLS = ("auto", "triton", "reference")
# Module switch for every codec wrapper (noise, uniform01, pack/unpack, FedMRN's draws and decode); a call's
# own `impl` argument wins. Tests and benchmarks assign it; runs can set FEDMRN_KERNELS=reference to compare.
KERNELS: str = os.environ.get("FEDMRN_KERNELS", "auto") or "auto"

_triton_ok: bool | None = None   # None: not tried yet


class KernelsUnavailable(RuntimeError):
    """The Triton kernels were asked for explicitly (FEDMRN_KERNELS=triton or impl="triton") and do not import."""


def _triton_importable() -> bool:
    """Import the Triton kernels once (this imports Triton); False, with a warning, if that fails."""
    global _triton_ok
    if _triton_ok is None:
        try:
            from . import kernels  # noqa: F401
        except Exception as exc:  # ImportError, or a Triton that cannot initialise here
            warnings.warn(f"Triton kernels unavailable ({type(exc).__name__}: {exc}); using the reference path",
                          RuntimeWarning, stacklevel=3)
            _triton_ok = False
        else:
            _triton_ok = True
    return _triton_ok


def use_triton(device: DeviceLike, impl: str | None = None) -> bool:
    """Whether a codec op on `device` runs its Triton kernel: `impl` (default: the module switch `KERNELS`)
    "reference" -> never; "triton" -> always (an error if Triton does not import); "auto" -> for CUDA devices
    when Triton imports. Nothing is imported for CPU devices under "auto"."""
    impl = KERNELS if impl is None else impl
    if impl == "auto":
        return torch.device(device).type == "cuda" and _triton_importable()
    if impl == "reference":
        return False
    if impl == "triton":
        if not _triton_importable():
            raise KernelsUnavailable("the Triton kernels were requested (FEDMRN_KERNELS=triton or impl='triton') but "
                                     "do not import: pip install triton (the build matching your torch), or unset "
                                     "FEDMRN_KERNELS to use the reference code")
        # a CPU tensor means Triton's interpreter, which an older Triton cannot run under a newer NumPy: say
        # so here rather than let the first kernel fail deep inside the interpreter
        problem = triton_interpreter_problem() if torch.device(device).type == "cpu" else None
        if problem:
            raise KernelsUnavailable(problem)
        return True
    raise ValueError(f"unknown kernel implementation {impl!r}; expected one of {KERNEL_IMPLS}")


# --- keys and stream ids (exact Python integers) ------------------------------------------------------------

def _mix64(z: int) -> int:
    """splitmix64 finalizer on an exact Python int (a bijection of [0, 2**64))."""
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _check_u64(name: str, v: int) -> int:
    v = int(v)
    if not 0 <= v <= _M64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {v}")
    return v


def make_stream(*parts: int) -> int:
    """Combine non-negative ints (tensor index, purpose, step, ...) into one 64-bit stream id.

    Order- and length-sensitive: make_stream(1, 2), make_stream(2, 1) and make_stream(1, 2, 0) all differ.
    """
    h = _mix64(len(parts) + _GOLDEN)
    for p in parts:
        h = _mix64(((h + _GOLDEN) & _M64) ^ _check_u64("stream part", p))
    return h


def stream_key(seed: int, stream: int, lane: int = 0) -> tuple[int, int]:
    """The two 32-bit keys (k0, k1) of `stream` under the 64-bit `seed`; lane 1 feeds gaussian's second uniform."""
    seed = _check_u64("seed", seed)
    stream = _check_u64("stream", stream)
    if lane not in (0, 1):
        raise ValueError(f"lane must be 0 or 1, got {lane}")
    state = _mix64(seed ^ _mix64(stream + _GOLDEN))
    k = _mix64(state + (lane + 1) * _GOLDEN)
    return k & _M32, k >> 32


# --- the per-element hash, two exact backends ---------------------------------------------------------------

def _fmix32_torch_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """murmur3 fmix32 in place on int64 values in [0, 2**32); `tmp` is scratch of the same shape."""
    x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=tmp))
    x.mul_(_C1).bitwise_and_(_M32)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 13, out=tmp))
    x.mul_(_C2).bitwise_and_(_M32)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=tmp))
    return x


def _fmix32_numpy_(x: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """murmur3 fmix32 in place on a uint32 array (wrapping multiply)."""
    x ^= np.right_shift(x, 16, out=tmp)
    x *= np.uint32(_F1)
    x ^= np.right_shift(x, 13, out=tmp)
    x *= np.uint32(_F2)
    x ^= np.right_shift(x, 16, out=tmp)
    return x


def _chunk_elems(device: torch.device) -> int:
    # On the CPU, chunks that stay in L2/L3 made the ~25-op hash 2-8x faster than whole-tensor passes;
    # on CUDA they only bound the temporaries.
    if device.type == "cpu":
        return (1 << 16) * max(2, torch.get_num_threads())
    return 1 << 24


class _Words:
    """The hash words h(i) of one (seed, stream, lane), produced chunk by chunk into reused scratch."""

    def __init__(self, seed: int, stream: int, lane: int, device: torch.device, chunk: int) -> None:
        self.k0, self.k1 = stream_key(seed, stream, lane)
        self.numpy = device.type == "cpu" and _CPU_NUMPY
        if self.numpy:
            self.base = np.arange(chunk, dtype=np.uint32)
            self.x, self.tmp = np.empty((2, chunk), dtype=np.uint32)
        else:
            self.x, self.tmp = torch.empty(2, chunk, dtype=torch.int64, device=device).unbind(0)

    def raw(self, start: int, stop: int) -> np.ndarray | torch.Tensor:
        """h(start), ..., h(stop - 1): uint32 ndarray (NumPy backend) or int64 tensor (torch backend)."""
        m = stop - start
        x, tmp = self.x[:m], self.tmp[:m]
        if self.numpy:
            np.add(self.base[:m], np.uint32(start), out=x)  # start + m <= 2**32 - 1: no wrap
            x ^= np.uint32(self.k0)
            _fmix32_numpy_(x, tmp)
            x ^= np.uint32(self.k1)
            return _fmix32_numpy_(x, tmp)
        torch.arange(start, stop, dtype=torch.int64, device=x.device, out=x)
        _fmix32_torch_(x.bitwise_xor_(self.k0), tmp)
        return _fmix32_torch_(x.bitwise_xor_(self.k1), tmp)

    def shifted(self, start: int, stop: int, shift: int) -> torch.Tensor:
        """h(i) >> shift for i in [start, stop) as a torch integer tensor (values < 2**31 as shift >= 1)."""
        x = self.raw(start, stop)
        if self.numpy:
            return torch.from_numpy(np.right_shift(x, shift, out=x).view(np.int32))
        return x.bitwise_right_shift_(shift)


def _spans(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + chunk)) for s in range(0, n, chunk)]


def _shape_numel(shape: ShapeLike) -> tuple[tuple[int, ...], int]:
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    n = math.prod(shape)
    if n > MAX_NUMEL:
        raise ValueError(f"at most 2**32 - 1 elements per stream, got shape {shape} ({n} elements)")
    return shape, n


# --- public API -----------------------------------------------------------------------------------------------

def random_u32(seed: int, stream: int, numel: int, device: DeviceLike = "cpu", *, lane: int = 0) -> torch.Tensor:
    """int64 tensor of the `numel` hash words h(0), ..., h(numel - 1), each in [0, 2**32)."""
    numel = int(numel)
    if not 0 <= numel <= MAX_NUMEL:
        raise ValueError(f"numel must be in [0, 2**32 - 1] per stream, got {numel}")
    device = torch.device(device)
    chunk = max(1, min(numel, _chunk_elems(device)))
    words = _Words(seed, stream, lane, device, chunk)
    out = torch.empty(numel, dtype=torch.int64, device=device)
    for s, e in _spans(numel, chunk):
        h = words.raw(s, e)
        if words.numpy:
            h = torch.from_numpy(h)
        out[s:e].copy_(h)
    return out


def uniform01(seed: int, stream: int, shape: ShapeLike, device: DeviceLike = "cpu", *,
              impl: str | None = None) -> torch.Tensor:
    """float32 uniforms in [0, 1) on a 2**-24 grid: (h >> 8) * 2**-24. `impl`: see `use_triton`."""
    shape, n = _shape_numel(shape)
    device = torch.device(device)
    if use_triton(device, impl):
        from .kernels import launch_uniform01
        return launch_uniform01(torch.empty(n, dtype=torch.float32, device=device), seed, stream).view(shape)
    chunk = max(1, min(n, _chunk_elems(device)))
    words = _Words(seed, stream, 0, device, chunk)
    out = torch.empty(n, dtype=torch.float32, device=device)
    for s, e in _spans(n, chunk):
        out[s:e].copy_(words.shifted(s, e, 8)).mul_(2.0**-24)  # int -> float32 is exact below 2**24
    return out.view(shape)


def zero_guard_(t: torch.Tensor) -> torch.Tensor:
    """In place: entries with |t| < 1e-8 become +1e-8, so u / n stays finite. Returns t."""
    return t.masked_fill_(t.abs() < _ZERO_EPS, _ZERO_EPS)


def _f32(v: float) -> float:
    """`v` rounded to the nearest float32, as a Python float."""
    return float(np.float32(v))


def noise(seed: int, stream: int, shape: ShapeLike, kind: str, sigma: float,
          device: DeviceLike = "cpu", *, impl: str | None = None) -> torch.Tensor:
    """float32 noise of `shape`: uniform U[-sigma, sigma), gaussian N(0, sigma^2) or rademacher +-sigma.

    Deterministic in (seed, stream, shape, kind, sigma), identical on every device; every |n| >= 1e-8.
    `impl`: which implementation runs (see `use_triton`); all give the same values.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS}")
    sigma = float(sigma)
    if not (sigma >= 0.0 and math.isfinite(sigma)):
        raise ValueError(f"noise sigma must be a finite number >= 0, got {sigma}")
    shape, n = _shape_numel(shape)
    device = torch.device(device)
    if use_triton(device, impl):
        from .kernels import launch_noise
        return launch_noise(torch.empty(n, dtype=torch.float32, device=device), seed, stream, kind,
                            sigma).view(shape)
    s32 = _f32(sigma)
    chunk = max(1, min(n, _chunk_elems(device)))
    words = _Words(seed, stream, 0, device, chunk)
    out = torch.empty(n, dtype=torch.float32, device=device)
    if kind == "gaussian":
        words2 = _Words(seed, stream, 1, device, chunk)
        f1, f2 = torch.empty(2, chunk, dtype=torch.float64, device=device).unbind(0)
    guard = not (kind == "rademacher" and s32 >= _ZERO_EPS)  # +-sigma cannot be small then
    for s, e in _spans(n, chunk):
        o = out[s:e]
        if kind == "uniform":
            # (h >> 8) * 2**-23 - 1 is exact in float32; the multiply by sigma is the only rounding.
            o.copy_(words.shifted(s, e, 8)).mul_(2.0**-23).sub_(1.0).mul_(s32)
        elif kind == "rademacher":
            o.copy_(words.shifted(s, e, 31)).mul_(-2.0 * s32).add_(s32)  # both steps exact
        else:
            m = e - s
            u1 = f1[:m].copy_(words.shifted(s, e, 8)).add_(1.0).mul_(2.0**-24)  # (0, 1]: log is finite
            a = f2[:m].copy_(words2.shifted(s, e, 8)).mul_(2.0 * math.pi * 2.0**-24)
            o.copy_(u1.log_().mul_(-2.0).sqrt_().mul_(a.cos_()).mul_(sigma))  # one rounding to float32
        if guard:
            zero_guard_(o)
    return out.view(shape)
