"""tests/triton_fma.py: its float32 fma rounds once, exactly, as a GPU's and Triton 3.9's interpreter do."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from triton_fma import fma_f32


def _round_f32(v: Fraction) -> np.float32:
    """The float32 nearest to the exact value v, ties to an even significand (float(Fraction) is exact RN to
    float64, but going on to float32 from there would round twice; the neighbours are compared exactly)."""
    guess = np.float32(float(v))
    cands = {guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(-np.inf))}
    cands = sorted((c for c in cands if np.isfinite(c)), key=float)
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - v), int(np.array(c).view(np.uint32)) & 1))
    return np.float32(best)


def _exact(x: np.float32, y: np.float32, z: np.float32) -> np.float32:
    v = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
    if v == 0:  # IEEE: an exact zero is -0 only as (-0) + (-0); a cancellation gives +0 when rounding to nearest
        negative = bool(np.signbit(x) ^ np.signbit(y)) and (x == 0 or y == 0) and bool(np.signbit(z)) and z == 0
        return np.float32(-0.0 if negative else 0.0)
    return _round_f32(v)


HARD = [  # (x, y, z): the cases where rounding twice goes wrong
    (4097.0, 4097.0, 2.0 ** -30),                 # product on a float32 midpoint, z tips it up (triton#11610)
    (4097.0, 4097.0, -(2.0 ** -30)),              # ... and down
    (4097.0, 4097.0, 0.0),                        # exactly on the midpoint: ties to even
    (1.4142135, 1.7320508, -float(np.float32(1.4142135) * np.float32(1.7320508))),  # cancellation (triton#11424)
    (1.0 + 2.0 ** -23, 1.0 - 2.0 ** -23, -1.0),   # the residual -2**-46 only a fused op keeps
    (3.0, 1e-45, 0.0),                            # subnormals
    (-0.0, 5.0, 0.0), (-0.0, 5.0, -0.0),          # signed zeros
]


@pytest.mark.parametrize("x, y, z", HARD)
def test_hard_cases_round_once(x: float, y: float, z: float) -> None:
    x32, y32, z32 = np.float32(x), np.float32(y), np.float32(z)
    got = fma_f32(np.array([x32]), np.array([y32]), np.array([z32]))[0]
    want = _exact(x32, y32, z32)
    assert got.tobytes() == want.tobytes(), (got, want)


def test_the_hard_cases_are_hard() -> None:
    """Rounding twice gets at least the tie and cancellation cases wrong, so the cases above can catch it."""
    wrong = [(x, y, z) for x, y, z in HARD
             if (np.float32(x) * np.float32(y) + np.float32(z)).tobytes()
             != _exact(np.float32(x), np.float32(y), np.float32(z)).tobytes()]
    assert len(wrong) >= 3, wrong


def test_random_values_round_once() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    # the kernels' case: noise * weight + a running sum, over several magnitudes, with near-cancellations
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)).astype(np.float32)
    y = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(np.float32)
    z = np.where(rng.random(n) < 0.3, -(x * y), rng.standard_normal(n) * 10.0 ** rng.integers(-4, 4, n))
    z = z.astype(np.float32)
    got = fma_f32(x, y, z)
    want = np.array([_exact(a, b, c) for a, b, c in zip(x, y, z)], dtype=np.float32)
    assert got.tobytes() == want.tobytes()
    assert (x * y + z).tobytes() != want.tobytes()  # rounding twice would not have passed


def test_equals_tritons_own_single_rounding_fma_where_it_has_one() -> None:
    """Triton >= 3.9 ships fma_fp32 (C) for its interpreter: the NumPy version agrees with it bit for bit."""
    try:
        from triton._C.libtriton import interpreter as native
        fma_fp32 = native.fma_fp32
    except (ImportError, AttributeError):
        pytest.skip("this Triton has no native fma_fp32 (before 3.9); the exact checks above still ran")
    rng = np.random.default_rng(11)
    x, y = (rng.standard_normal((2, 200_000)) * 37).astype(np.float32)
    z = np.where(rng.random(200_000) < 0.5, -(x * y), rng.standard_normal(200_000)).astype(np.float32)
    assert fma_f32(x, y, z).tobytes() == np.asarray(fma_fp32(x, y, z), dtype=np.float32).tobytes()
