"""A float32 fused multiply-add that rounds once, in NumPy, for Triton interpreters that round twice.

The kernel tests hold the Triton kernels to bit equality with torch's `acc.add_(d, alpha=a)`, which is
fma(d, float32(a), acc) rounded once, and so is `tl.fma` when the kernel is compiled for a GPU. Triton's CPU
interpreter before 3.9 evaluates `tl.fma(x, y, z)` as `x * y + z` in float32, rounding twice
(fedmrn_mpi.compat.triton_interpreter_fma_rounds_twice; triton-lang/triton#11424, #11641), so under the torch
2.11 stack (Triton 3.6) a weighted sum of several uploads differs from the reference by an ulp here and there.
`patch_interpreter_fma` (called by tests/unit/test_triton_kernels.py) gives such an interpreter the single
rounding the GPU has, so the tests keep their bit-exact claim instead of loosening it to a tolerance.
"""

from __future__ import annotations

import numpy as np


def fma_f32(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """x * y + z for float32 arrays (broadcast), rounded once to float32 (round to nearest, ties to even).

    The float64 product of two float32s is exact. The float64 sum s = p + z is rounded, but TwoSum gives its
    exact error e (p + z == s + e). Rounding s to float32 is then wrong only when s lies exactly halfway
    between two float32 neighbours and e != 0 (a float32 midpoint strictly between s and s + e would be a
    float64 nearer to p + z than s is): the true value is then on e's side of the midpoint."""
    x, y, z = np.broadcast_arrays(np.asarray(x, np.float32), np.asarray(y, np.float32), np.asarray(z, np.float32))
    with np.errstate(over="ignore", invalid="ignore"):
        p = x.astype(np.float64) * y.astype(np.float64)
        z64 = z.astype(np.float64)
        s = p + z64
        bb = s - p
        e = (p - (s - bb)) + (z64 - bb)                                       # TwoSum: p + z == s + e exactly
        r = s.astype(np.float32)
        other = np.nextafter(r, np.where(s > r.astype(np.float64), np.float32(np.inf), np.float32(-np.inf)))
        halfway = (r.astype(np.float64) != s) & ((r.astype(np.float64) + other.astype(np.float64)) / 2 == s)
        toward_e = np.where(e > 0, np.maximum(r, other), np.minimum(r, other))
        return np.where(halfway & (e != 0) & np.isfinite(e), toward_e, r)


def patch_interpreter_fma() -> bool:
    """Make this process's Triton interpreter round `tl.fma` once, where it rounds twice; True if it did.

    Only the interpreter's builder changes (compiled kernels never use it) and only for float32, the type the
    kernels use; other types keep the interpreter's own arithmetic."""
    from fedmrn_mpi.compat import triton_interpreter_fma_rounds_twice
    if not triton_interpreter_fma_rounds_twice():
        return False
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_fma, "_single_rounding", False):
        return True
    twice = builder.create_fma

    def create_fma(self, x, y, z):
        if z.data.dtype != np.float32:
            return twice(self, x, y, z)
        return interpreter.TensorHandle(fma_f32(x.data, y.data, z.data), z.dtype.scalar)

    create_fma._single_rounding = True  # type: ignore[attr-defined]
    builder.create_fma = create_fma
    return True
