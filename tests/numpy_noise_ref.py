"""Independent NumPy implementation of the fedmrn_mpi.rng.noise generator, used only by the tests.

Written from the algorithm in fedmrn_mpi/noise.py's docstring with NumPy's wrapping uint64/uint32 array
arithmetic (no Python big-int tricks, no signed-constant trick, no import of fedmrn_mpi), so that an error
in either implementation shows up as a mismatch.
"""

from __future__ import annotations

import math

import numpy as np

U64 = np.uint64
U32 = np.uint32
G = 0x9E3779B97F4A7C15


def _a64(v: int) -> np.ndarray:
    # 1-element arrays: array arithmetic wraps silently, scalar arithmetic would warn.
    return np.array([v], dtype=U64)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 arrays (wrapping)."""
    z = z ^ (z >> U64(30))
    z = z * U64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> U64(27))
    z = z * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


def fmix32(x: np.ndarray) -> np.ndarray:
    """murmur3 fmix32 on uint32 arrays (wrapping)."""
    x = x ^ (x >> U32(16))
    x = x * U32(0x85EBCA6B)
    x = x ^ (x >> U32(13))
    x = x * U32(0xC2B2AE35)
    return x ^ (x >> U32(16))


def stream_key(seed: int, stream: int, lane: int = 0) -> tuple[int, int]:
    state = mix64(_a64(seed) ^ mix64(_a64(stream) + _a64(G)))
    k = mix64(state + _a64(lane + 1) * _a64(G))
    k = int(k[0])
    return k & 0xFFFFFFFF, k >> 32


def random_u32(seed: int, stream: int, numel: int, lane: int = 0) -> np.ndarray:
    k0, k1 = stream_key(seed, stream, lane)
    i = np.arange(numel, dtype=U32)
    return fmix32(fmix32(i ^ U32(k0)) ^ U32(k1))


def _numel(shape) -> int:
    return int(shape) if isinstance(shape, int) else math.prod(int(s) for s in shape)


def uniform01(seed: int, stream: int, shape) -> np.ndarray:
    h = random_u32(seed, stream, _numel(shape))
    return ((h >> U32(8)).astype(np.float32) * np.float32(2.0**-24)).reshape(shape)


def noise(seed: int, stream: int, shape, kind: str, sigma: float) -> np.ndarray:
    n = _numel(shape)
    s32 = np.float32(sigma)
    h = random_u32(seed, stream, n)
    if kind == "uniform":
        v = (h >> U32(8)).astype(np.float32) * np.float32(2.0**-23) - np.float32(1.0)
        out = v * s32
    elif kind == "rademacher":
        out = np.where((h >> U32(31)) == 1, -s32, s32).astype(np.float32)
    elif kind == "gaussian":
        m1 = (h >> U32(8)).astype(np.float64)
        m2 = (random_u32(seed, stream, n, lane=1) >> U32(8)).astype(np.float64)
        u1 = (m1 + 1.0) * 2.0**-24
        u2 = m2 * 2.0**-24
        out = (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2) * float(sigma)).astype(np.float32)
    else:
        raise ValueError(kind)
    eps = np.float32(1e-8)
    out = np.where(np.abs(out) < eps, eps, out).astype(np.float32)
    return out.reshape(shape)


def make_stream(*parts: int) -> int:
    s = mix64(_a64(len(parts)) + _a64(G))
    for p in parts:
        s = mix64((s + _a64(G)) ^ _a64(p))
    return int(s[0])
