"""fedmrn_mpi.rng.bits: round trips, equality with numpy.packbits(bitorder="little"), errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedmrn_mpi.rng.bits as B
from fedmrn_mpi.rng.bits import pack_bits, packed_nbytes, unpack_bits

LENGTHS = [0, 1, 7, 8, 9, 63, 64, 65, 1000, 1000003]


@pytest.fixture(autouse=True, params=["numpy", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the CPU's NumPy path and with the torch path (the one CUDA uses)."""
    monkeypatch.setattr(B, "_CPU_NUMPY", request.param == "numpy")
    return request.param


def _np_pack(mask: torch.Tensor) -> np.ndarray:
    return np.packbits(mask.reshape(-1).numpy().astype(bool), bitorder="little")


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("p", [0.5, 0.03])
def test_round_trip_and_numpy_equality(n: int, p: float) -> None:
    g = torch.Generator().manual_seed(n * 7 + int(p * 100))
    mask = torch.rand(n, generator=g) < p
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.dim() == 1 and packed.numel() == packed_nbytes(n)
    np.testing.assert_array_equal(packed.numpy(), _np_pack(mask))
    back = unpack_bits(packed, n)
    assert back.dtype == torch.bool and back.shape == (n,)
    assert torch.equal(back, mask)
    np.testing.assert_array_equal(back.numpy(), np.unpackbits(packed.numpy(), count=n, bitorder="little"))


def test_all_byte_patterns() -> None:
    # Every possible byte in every position of an 8-byte word: checks the shift folding exhaustively.
    values = torch.arange(256, dtype=torch.uint8).roll(3)
    mask = torch.from_numpy(np.unpackbits(values.numpy(), bitorder="little").astype(bool))
    assert torch.equal(pack_bits(mask), values)
    assert torch.equal(unpack_bits(values, 2048), mask)
    assert torch.equal(unpack_bits(values[:255].clone(), 2040), mask[:2040])


def test_padding_is_zero() -> None:
    assert pack_bits(torch.ones(9, dtype=torch.bool)).tolist() == [255, 1]
    assert pack_bits(torch.ones(3, dtype=torch.bool)).tolist() == [7]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.float32])
def test_numeric_and_multidim_input(dtype: torch.dtype) -> None:
    mask = torch.rand(4, 5, 3, generator=torch.Generator().manual_seed(1)) < 0.5
    packed = pack_bits(mask.to(dtype))
    np.testing.assert_array_equal(packed.numpy(), _np_pack(mask))
    assert torch.equal(unpack_bits(packed, mask.numel()).view(4, 5, 3), mask)


def test_non_contiguous_and_offset_input() -> None:
    big = torch.rand(17, 64, generator=torch.Generator().manual_seed(2)) < 0.5
    for view in (big.t(), big[:, 3:], big.reshape(-1)[1:1025], big[::2]):
        np.testing.assert_array_equal(pack_bits(view).numpy(), _np_pack(view.contiguous()))
    before = big.clone()
    pack_bits(big)  # reads the caller's memory without a copy: must not modify it
    assert torch.equal(big, before)


def test_packed_nbytes() -> None:
    assert [packed_nbytes(n) for n in (0, 1, 7, 8, 9, 16, 17)] == [0, 1, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError):
        packed_nbytes(-1)


def test_errors() -> None:
    packed = pack_bits(torch.ones(20, dtype=torch.bool))
    with pytest.raises(ValueError, match="4 bytes, got 3 bytes"):
        unpack_bits(packed, 30)
    with pytest.raises(ValueError):
        unpack_bits(packed, 16)
    with pytest.raises(ValueError):
        unpack_bits(packed[:2], 20)
    with pytest.raises(ValueError, match="uint8"):
        unpack_bits(packed.to(torch.int32), 20)
    with pytest.raises(ValueError):
        unpack_bits(packed.view(1, 3), 20)
    with pytest.raises(ValueError):
        unpack_bits(packed, -1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", LENGTHS)
def test_cuda_matches_cpu(n: int) -> None:
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.5
    packed = pack_bits(mask.cuda())
    assert packed.device.type == "cuda"
    assert torch.equal(packed.cpu(), pack_bits(mask))
    back = unpack_bits(packed, n)
    assert back.device.type == "cuda" and torch.equal(back.cpu(), mask)
