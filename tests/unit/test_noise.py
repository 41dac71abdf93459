"""fedmrn_mpi.rng.noise: agreement with the independent NumPy generator, statistics, determinism, errors."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy_noise_ref as ref  # noqa: E402
import fedmrn_mpi.rng.noise as N  # noqa: E402

U64MAX = 2**64 - 1
SEEDS = [0, 1, 12345, 2**63, U64MAX - 1, U64MAX]
STREAMS = [0, 1, 2**32, U64MAX]
SHAPES = [(), (0,), (1,), (7,), (3, 5, 7), (64, 3, 3, 3)]
BIG = (1000003,)  # several CPU chunks, odd length


def _ulp_diff(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in float32 ulps (ordered-integer view, correct across zero)."""
    def key(x: np.ndarray) -> np.ndarray:
        i = x.astype(np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return int(np.max(np.abs(key(a) - key(b)), initial=0))


@pytest.fixture(params=["numpy", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the CPU's NumPy uint32 words and with the torch int64 words (the CUDA code path)."""
    monkeypatch.setattr(N, "_CPU_NUMPY", request.param == "numpy")
    return request.param


# --- agreement with the NumPy reference -------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("stream", STREAMS)
def test_stream_key_matches_reference(seed: int, stream: int) -> None:
    for lane in (0, 1):
        k0, k1 = N.stream_key(seed, stream, lane)
        assert (k0, k1) == ref.stream_key(seed, stream, lane)
        assert 0 <= k0 < 2**32 and 0 <= k1 < 2**32


@pytest.mark.parametrize("seed,stream,numel", [
    *[(sd, st, n) for sd, st in [(0, 0), (U64MAX, U64MAX), (2**63, 0)] for n in (0, 1, 2, 255, 65537)],
    (42, N.make_stream(3, 1, 7), 1000003)])
def test_random_u32_matches_reference(backend: str, seed: int, stream: int, numel: int) -> None:
    got = N.random_u32(seed, stream, numel)
    assert got.dtype == torch.int64 and got.shape == (numel,)
    np.testing.assert_array_equal(got.numpy(), ref.random_u32(seed, stream, numel).astype(np.int64))
    if numel:
        assert int(got.min()) >= 0 and int(got.max()) < 2**32


@pytest.mark.parametrize("seed,stream,shape", [
    *[(sd, st, sh) for sd in (0, 987654321, U64MAX) for st in (0, 5, U64MAX) for sh in SHAPES],
    (U64MAX - 1, 0, BIG), (31, U64MAX, BIG)])
def test_bit_identical_to_reference(backend: str, seed: int, stream: int, shape: tuple[int, ...]) -> None:
    u = N.uniform01(seed, stream, shape)
    assert u.dtype == torch.float32 and tuple(u.shape) == shape
    np.testing.assert_array_equal(u.numpy(), ref.uniform01(seed, stream, shape))
    for kind, sigma in [("uniform", 0.01), ("uniform", 0.37), ("rademacher", 0.005), ("rademacher", 1e-9)]:
        got = N.noise(seed, stream, shape, kind, sigma)
        assert got.dtype == torch.float32 and tuple(got.shape) == shape
        want = ref.noise(seed, stream, shape, kind, sigma)
        assert got.numpy().tobytes() == want.tobytes(), (kind, sigma)


@pytest.mark.parametrize("seed,stream,shape,sigma", [
    (0, 0, (3, 5, 7), 0.01), (U64MAX, 3, (1,), 1.0), (777, U64MAX, BIG, 0.01), (1, 2**40, (300007,), 2.5)])
def test_gaussian_within_2_ulp_of_reference(backend: str, seed: int, stream: int, shape: tuple[int, ...],
                                            sigma: float) -> None:
    got = N.noise(seed, stream, shape, "gaussian", sigma).numpy()
    assert _ulp_diff(got, ref.noise(seed, stream, shape, "gaussian", sigma)) <= 2


def test_independent_of_thread_count(backend: str) -> None:
    # The CPU path works in chunks whose size follows the thread count; values must not.
    old = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 3):
            torch.set_num_threads(t)
            outs.append([N.noise(9, 4, (700001,), k, 0.01) for k in N.NOISE_KINDS])
        for a, b in zip(*outs):
            assert torch.equal(a, b)
    finally:
        torch.set_num_threads(old)


# --- statistics ----------------------------------------------------------------------------------------

N_STAT = 1 << 20
TOL = 6.0 / math.sqrt(N_STAT)  # ~6 standard errors of a unit-variance mean


def test_uniform01_range_and_moments() -> None:
    u = N.uniform01(3, 1, (N_STAT,)).double()
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert torch.equal(u * 2**24, torch.floor(u * 2**24))  # on the 2**-24 grid
    assert abs(float(u.mean()) - 0.5) < TOL * math.sqrt(1 / 12)
    assert abs(float(u.var()) - 1 / 12) < 0.01 / 12


@pytest.mark.parametrize("sigma", [0.01, 0.005, 2.0])
def test_uniform_moments_and_range(sigma: float) -> None:
    s32 = float(np.float32(sigma))
    n = N.noise(11, 2, (N_STAT,), "uniform", sigma)
    assert float(n.min()) >= -s32 and float(n.max()) < s32
    d = n.double()
    assert abs(float(d.mean())) < TOL * sigma / math.sqrt(3)
    assert abs(float(d.var()) / (sigma**2 / 3) - 1) < 0.01
    assert float(d.abs().min()) >= float(np.float32(1e-8))


@pytest.mark.parametrize("sigma", [0.01, 3.0])
def test_gaussian_moments(sigma: float) -> None:
    d = N.noise(5, 6, (N_STAT,), "gaussian", sigma).double() / sigma
    assert torch.isfinite(d).all()
    assert abs(float(d.mean())) < TOL
    assert abs(float(d.std()) - 1) < 0.005
    assert abs(float((d**4).mean()) - 3) < 0.05  # kurtosis of a normal
    assert abs(float((d.abs() < 1).double().mean()) - 0.682689) < 0.003


def test_rademacher_values() -> None:
    sigma = 0.01
    s32 = float(np.float32(sigma))
    n = N.noise(8, 0, (N_STAT,), "rademacher", sigma)
    assert bool(((n == s32) | (n == -s32)).all())
    assert abs(float((n > 0).double().mean()) - 0.5) < TOL * 0.5


def test_streams_and_seeds_uncorrelated() -> None:
    base = N.noise(1, 0, (N_STAT,), "uniform", 1.0).double()
    others = [N.noise(1, 1, (N_STAT,), "uniform", 1.0), N.noise(2, 0, (N_STAT,), "uniform", 1.0),
              N.noise(1, N.make_stream(0, 1), (N_STAT,), "gaussian", 1.0),
              N.noise(2**63, U64MAX, (N_STAT,), "rademacher", 1.0)]
    for o in others:
        c = float(torch.corrcoef(torch.stack([base, o.double()]))[0, 1])
        assert abs(c) < TOL
    # gaussian's two uniforms (lanes 0 and 1) are independent of each other
    a = N.random_u32(1, 0, N_STAT, lane=0).double()
    b = N.random_u32(1, 0, N_STAT, lane=1).double()
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < TOL
    # neighbours inside one stream are uncorrelated too
    assert abs(float(torch.corrcoef(torch.stack([base[:-1], base[1:]]))[0, 1])) < TOL


def test_backends_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    def all_outputs() -> list[torch.Tensor]:
        return [N.random_u32(5, 6, 300001, lane=1), N.uniform01(5, 6, 300001)] + [
            N.noise(5, 6, 300001, k, 0.01) for k in N.NOISE_KINDS]
    monkeypatch.setattr(N, "_CPU_NUMPY", True)
    a = all_outputs()
    monkeypatch.setattr(N, "_CPU_NUMPY", False)
    for x, y in zip(a, all_outputs()):
        assert torch.equal(x, y)


def test_deterministic_and_prefix_stable() -> None:
    for kind in N.NOISE_KINDS:
        a = N.noise(123, 45, (4096, 7), kind, 0.01)
        assert torch.equal(a, N.noise(123, 45, (4096, 7), kind, 0.01))
        # element i depends only on (seed, stream, i), not on the shape
        assert torch.equal(a.reshape(-1)[:1000], N.noise(123, 45, 1000, kind, 0.01))


# --- zero guard -------------------------------------------------------------------------------------------

def test_zero_guard_function() -> None:
    t = torch.tensor([0.0, -0.0, 5e-9, -5e-9, 1e-8, -1e-8, 2e-8, -1.0, 1.0])
    out = N.zero_guard_(t)
    assert out is t
    e = float(np.float32(1e-8))
    assert t.tolist() == pytest.approx([e, e, e, e, e, -e, 2e-8, -1.0, 1.0], rel=1e-6)
    assert bool((t.abs() >= e).all())


def test_zero_guard_on_an_exact_zero() -> None:
    # Found by search with the NumPy reference: (h >> 8) == 2**23 here, so 2u - 1 is exactly 0.
    seed, stream, i = 7, 95, 885114
    assert float(N.uniform01(seed, stream, i + 1)[i]) == 0.5
    n = N.noise(seed, stream, i + 1, "uniform", 0.01)
    assert float(n[i]) == float(np.float32(1e-8))
    assert float(n.abs().min()) >= float(np.float32(1e-8))


@pytest.mark.parametrize("kind", N.NOISE_KINDS)
def test_zero_guard_inside_noise(kind: str) -> None:
    e = float(np.float32(1e-8))
    assert bool((N.noise(1, 2, 10000, kind, 0.0) == e).all())
    assert bool((N.noise(1, 2, 10000, kind, 1e-9) == e).all())
    assert float(N.noise(1, 2, 100000, kind, 1e-7).abs().min()) >= e


# --- streams, keys and errors ------------------------------------------------------------------------

def test_known_answers() -> None:
    # Freezes the algorithm: a change here changes every run's noise (and breaks resumed/compared runs).
    assert N.stream_key(0, 0) == (439092716, 1451924235)
    assert N.stream_key(0, 0, lane=1) == (1206874507, 1155905713)
    assert N.make_stream(1, 2, 3) == 521210073636171204
    assert N.random_u32(0, 0, 4).tolist() == [3028819837, 1225574859, 2101942459, 3790630850]
    assert N.random_u32(U64MAX, U64MAX, 4, lane=1).tolist() == [488673706, 1847318006, 1482395574, 2957690224]


@pytest.mark.parametrize("parts", [(), (0,), (1, 2), (2, 1), (U64MAX, 5, 0), (7, 0, 3, 12, 99)])
def test_make_stream_matches_reference(parts: tuple[int, ...]) -> None:
    assert N.make_stream(*parts) == ref.make_stream(*parts)


def test_make_stream() -> None:
    ids = {N.make_stream(a, b, c) for a in range(12) for b in range(12) for c in range(12)}
    assert len(ids) == 12**3
    assert all(0 <= s < 2**64 for s in ids)
    assert N.make_stream(1, 2) == N.make_stream(1, 2)
    assert len({N.make_stream(1, 2), N.make_stream(2, 1), N.make_stream(1, 2, 0), N.make_stream(1),
                N.make_stream()}) == 5
    assert N.make_stream(U64MAX, 0) != N.make_stream(0, U64MAX)
    with pytest.raises(ValueError):
        N.make_stream(-1)
    with pytest.raises(ValueError):
        N.make_stream(2**64)


def test_keys_differ() -> None:
    keys = {N.stream_key(s, t, lane) for s in range(20) for t in range(20) for lane in (0, 1)}
    assert len(keys) == 800


def test_errors() -> None:
    with pytest.raises(ValueError, match="triangular"):
        N.noise(0, 0, 10, "triangular", 0.01)
    with pytest.raises(ValueError, match="-0.5"):
        N.noise(0, 0, 10, "uniform", -0.5)
    with pytest.raises(ValueError, match="sigma"):
        N.noise(0, 0, 10, "gaussian", float("nan"))
    with pytest.raises(ValueError, match="seed"):
        N.noise(-1, 0, 10, "uniform", 0.01)
    with pytest.raises(ValueError, match="stream"):
        N.uniform01(0, 2**64, 10)
    with pytest.raises(ValueError):
        N.random_u32(0, 0, 2**32)
    with pytest.raises(ValueError):
        N.uniform01(0, 0, (2**16, 2**16))  # 2**32 elements: one too many, caught before allocating
    with pytest.raises(ValueError):
        N.noise(0, 0, (3, -1), "uniform", 0.01)
    with pytest.raises(ValueError):
        N.stream_key(0, 0, lane=2)


def test_device_argument() -> None:
    for dev in ("cpu", torch.device("cpu")):
        assert N.noise(1, 1, (4, 4), "uniform", 0.01, device=dev).device.type == "cpu"
        assert N.uniform01(1, 1, 8, device=dev).device.type == "cpu"


# --- CUDA ---------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seed,stream", [(0, 0), (U64MAX, 17), (31337, N.make_stream(4, 2, 9))])
def test_cuda_matches_cpu(seed: int, stream: int) -> None:
    for numel in (1, 1000003, (1 << 24) + 5):  # the last one spans two CUDA chunks
        assert torch.equal(N.random_u32(seed, stream, numel, "cuda").cpu(), N.random_u32(seed, stream, numel))
        assert torch.equal(N.uniform01(seed, stream, numel, "cuda").cpu(), N.uniform01(seed, stream, numel))
        for kind in ("uniform", "rademacher"):
            assert torch.equal(N.noise(seed, stream, numel, kind, 0.01, "cuda").cpu(),
                               N.noise(seed, stream, numel, kind, 0.01)), kind
        g_gpu = N.noise(seed, stream, numel, "gaussian", 0.01, "cuda").cpu().numpy()
        g_cpu = N.noise(seed, stream, numel, "gaussian", 0.01).numpy()
        assert _ulp_diff(g_gpu, g_cpu) <= 2
