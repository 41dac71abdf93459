"""Batched training augmentation (fedmrn_mpi.data.augment) and its use in the shared local loop."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmrn_mpi.data.augment import AUGMENTATIONS, REFERENCE, crop_flip, make_augment, resolve
from fedmrn_mpi.data.readers import normalize_images
from fedmrn_mpi.rng.seeds import derive_seed, torch_generator
from fedmrn_mpi.training import LocalTraining, train_client

from algo_helpers import CPU, algo_setup

P = 4  # the reference padding


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int, c: int = 3, h: int = 10, w: int = 7, seed: int = 0) -> torch.Tensor:
    # values 1..255, so no pixel of the image looks like the zero padding
    return torch.randint(1, 256, (b, c, h, w), generator=_gen(seed), dtype=torch.uint8)


def _reference(images: torch.Tensor, seed: int, padding: int = P, flip_p: float = 0.5) -> np.ndarray:
    """crop_flip image by image with numpy slicing, from the documented draws (offsets first, then flips)."""
    g = _gen(seed)
    offsets = torch.randint(0, 2 * padding + 1, (images.shape[0], 2), generator=g).numpy()
    flips = (torch.rand(images.shape[0], generator=g) < flip_p).numpy()
    x = images.numpy()
    _, c, h, w = x.shape
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        padded = np.zeros((c, h + 2 * padding, w + 2 * padding), x.dtype)
        padded[:, padding: padding + h, padding: padding + w] = x[i]
        top, left = offsets[i]
        crop = padded[:, top: top + h, left: left + w]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out


# --- the augmentation itself -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_dtype_device_kept(dtype):
    x = _images(6).to(dtype)
    y = crop_flip(x, _gen(1))
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert crop_flip(x[:0], _gen(1)).shape == (0, 3, 10, 7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_image_is_a_window_of_the_zero_padded_input(seed):
    x = _images(64, seed=seed)
    np.testing.assert_array_equal(crop_flip(x, _gen(seed)).numpy(), _reference(x, seed))


def test_each_crop_lies_within_the_padded_image_without_knowing_the_draws():
    # Independent of the draw contract: every output is one of the (2p + 1)^2 windows, flipped or not.
    x = _images(32, c=2, h=6, w=6, seed=5)
    y = crop_flip(x, _gen(9)).numpy()
    padded = F.pad(x, (P, P, P, P)).numpy()
    for i in range(x.shape[0]):
        windows = [padded[i, :, t: t + 6, s: s + 6] for t in range(2 * P + 1) for s in range(2 * P + 1)]
        windows += [win[:, :, ::-1] for win in windows]
        assert any(np.array_equal(y[i], win) for win in windows), i


def test_flip_rate_and_offsets_are_uniform():
    # Pixel (r, c) holds 1000 + 100 r + c, so a crop tells its own offset and direction (float32 is exact here).
    n, h, w = 20_000, 12, 12
    r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x = (1000 + 100 * r + c).to(torch.float32).expand(n, 1, h, w)
    y = crop_flip(x, _gen(2024))
    # output row P, columns P and P+1 always come from the image (never the padding)
    v = y[:, 0, P, P: P + 2].to(torch.int64) - 1000
    rows, cols = v // 100, v % 100
    assert torch.all(rows[:, 0] == rows[:, 1])
    flipped = cols[:, 1] == cols[:, 0] - 1
    assert torch.all(flipped | (cols[:, 1] == cols[:, 0] + 1))
    top = rows[:, 0]                                    # output row P = padded row top + P = image row top
    left = torch.where(flipped, cols[:, 0] + P - (w - 1 - P), cols[:, 0])
    rate = flipped.double().mean().item()
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / n)
    p = 1 / (2 * P + 1)
    sigma = math.sqrt(n * p * (1 - p))
    for offsets in (top, left):
        counts = torch.bincount(offsets, minlength=2 * P + 1)
        assert counts.numel() == 2 * P + 1 and int(offsets.min()) == 0
        assert torch.all((counts - n * p).abs() < 4 * sigma), counts.tolist()


def test_same_seed_same_batch_different_seed_different():
    x = _images(16)
    a, b, c = crop_flip(x, _gen(7)), crop_flip(x, _gen(7)), crop_flip(x, _gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # consecutive calls on one generator continue the stream
    g = _gen(7)
    assert torch.equal(crop_flip(x, g), a) and not torch.equal(crop_flip(x, g), a)


def test_float_and_uint8_agree():
    x = _images(16)
    assert torch.equal(crop_flip(x.to(torch.float32), _gen(3)), crop_flip(x, _gen(3)).to(torch.float32))
    assert torch.equal(crop_flip(x.to(torch.float64), _gen(3)), crop_flip(x, _gen(3)).to(torch.float64))


def test_flip_probability_edges_and_fixed_draw_count():
    x = _images(40)
    never, always = crop_flip(x, _gen(4), flip_p=0.0), crop_flip(x, _gen(4), flip_p=1.0)
    np.testing.assert_array_equal(never.numpy(), _reference(x, 4, flip_p=0.0))
    np.testing.assert_array_equal(always.numpy(), _reference(x, 4, flip_p=1.0))
    assert torch.equal(always, never.flip(-1))  # same offsets, only the direction differs
    # the generator advances by the same draws whatever flip_p: the batches after it stay the same
    states = []
    for p in (0.0, 0.5, 1.0):
        g = _gen(4)
        crop_flip(x, g, flip_p=p)
        states.append(g.get_state())
    assert all(torch.equal(s, states[0]) for s in states)
    # no padding and no flips: the identity
    assert torch.equal(crop_flip(x, _gen(4), padding=0, flip_p=0.0), x)


def test_bad_input():
    with pytest.raises(ValueError, match="B, C, H, W"):
        crop_flip(torch.zeros(3, 8, 8), _gen(0))
    with pytest.raises(ValueError, match="padding"):
        crop_flip(torch.zeros(1, 1, 8, 8), _gen(0), padding=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    x = _images(256, h=32, w=32)
    on_gpu = crop_flip(x.cuda(), _gen(11))
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), crop_flip(x, _gen(11)))


def test_resolve_and_make_augment():
    assert AUGMENTATIONS == ("auto", "none", "crop_flip")
    assert REFERENCE == {"cifar10": "crop_flip", "cifar100": "crop_flip"}
    assert resolve("auto", "cifar10") == resolve("auto", "cifar100") == "crop_flip"
    for name in ("fashion_mnist", "mnist", "svhn", "synthetic"):
        assert resolve("auto", name) == "none"
    assert resolve("none", "cifar10") == "none" and resolve("crop_flip", "mnist") == "crop_flip"
    with pytest.raises(ValueError, match="unknown augmentation 'flip'.*auto, none, crop_flip"):
        resolve("flip", "cifar10")
    assert make_augment("none") is None and make_augment("crop_flip") is crop_flip
    with pytest.raises(ValueError, match="resolve"):
        make_augment("auto")
    with pytest.raises(ValueError, match="unknown augmentation"):
        make_augment("rotate")


# --- in the local loop ---------------------------------------------------------------------------------------

ROUND, CLIENT = 1, 5


def _client(seed: int = 123, n: int = 80):
    g = _gen(seed)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _settings(cfg, augment=None) -> LocalTraining:
    transform = functools.partial(normalize_images, mean=(0.2860,), std=(0.3530,))
    return LocalTraining(cfg.seed, cfg.lr, 32, 2, transform=transform, augment=augment)


def _train(augment=None, *overrides, client=CLIENT, data_seed=123):
    cfg, model, spec, algo, state, _ = algo_setup(*overrides)
    settings = _settings(cfg, augment)
    x, y = _client(data_seed)
    ctx = settings.context(ROUND, client, len(y), CPU)
    return train_client(model, algo, state, x, y, ctx, settings)


def _same(a, b) -> bool:
    return np.array_equal(a.payload, b.payload) and a.train_loss == b.train_loss


@pytest.mark.parametrize("algorithm", ["fedmrn", "fedavg", "fedpm"])
def test_an_augmentation_that_draws_nothing_changes_nothing(algorithm):
    # the augment generator is a stream of its own: no other stream (order, draws, noise) is touched
    overrides = (f"algorithm.name={algorithm}",)
    assert _same(_train(lambda images, g: images, *overrides), _train(None, *overrides))


def test_augmented_training_is_reproducible_and_differs_from_plain():
    a, b = _train(crop_flip), _train(crop_flip)
    assert _same(a, b)
    assert not np.array_equal(a.payload, _train(None).payload)
    assert a.train_loss != _train(None).train_loss


def test_augment_generator_is_per_client_not_per_rank_history():
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def recorder(client):
        def aug(images, g):
            before = g.get_state()
            out = crop_flip(images, g)
            seen.setdefault(client, []).append((images.clone(), before, out))
            return out
        return aug

    cfg, model, spec, algo, state, _ = algo_setup()
    x, y = _client()
    # one "rank" trains clients 2 then 5, another trains only 5: client 5 sees the same augmented batches
    for key, clients in ((0, (2, 5)), (1, (5,))):
        for cid in clients:
            settings = _settings(cfg, recorder((key, cid)))
            train_client(model, algo, state, x, y, settings.context(ROUND, cid, len(y), CPU), settings)
    after, alone = seen[(0, 5)], seen[(1, 5)]
    assert len(after) == len(alone) == 6  # 2 epochs of 3 batches
    for (xa, ga, ya), (xb, gb, yb) in zip(after, alone):
        assert torch.equal(xa, xb) and torch.equal(ga, gb) and torch.equal(ya, yb)
    # the first batch starts the documented stream of (root seed, "augment", round, client)
    first_in, first_state, first_out = alone[0]
    g = torch_generator(derive_seed(cfg.seed, "augment", ROUND, 5))
    assert torch.equal(first_state, g.get_state()) and torch.equal(crop_flip(first_in, g), first_out)
    # and another client's stream is another one
    assert not torch.equal(seen[(0, 2)][0][1], first_state)


def test_augmentation_does_not_touch_the_global_rng():
    cfg, model, spec, algo, state, _ = algo_setup()
    settings = _settings(cfg, crop_flip)
    x, y = _client()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    train_client(model, algo, state, x, y, settings.context(ROUND, CLIENT, len(y), CPU), settings)
    assert torch.equal(torch.get_rng_state(), before)
