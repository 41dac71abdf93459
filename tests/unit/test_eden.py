"""EDEN (1 bit per coordinate) and its Hadamard transform: algebra, block rule, unbiasedness, wire, end to end."""

import math

import numpy as np
import pytest
import torch

from fedmrn_mpi.algorithms import REGISTRY, BadUpdateError, make_algorithm, model_spec
from algo_helpers import aggregate
from fedmrn_mpi.algorithms.eden import EDEN, MIN_BLOCK, block_sizes, eden_decode, eden_encode
from fedmrn_mpi.algorithms.hadamard import (fwht, fwht_, inverse_randomized_hadamard, rademacher_diagonal,
                                            randomized_hadamard)
from fedmrn_mpi.comm.wire import WireError, decode_messages, encode_message
from fedmrn_mpi.config import load_config
from fedmrn_mpi.models import build_model, global_state
from fedmrn_mpi.rng.bits import pack_bits
from fedmrn_mpi.rng.noise import make_stream
from fedmrn_mpi.training import LocalTraining, train_client

CPU = torch.device("cpu")
CNN4_MASKED = [288, 18432, 73728, 294912, 2560]                                           # FashionMNIST
CNN8_MASKED = [864, 9216, 18432, 36864, 73728, 147456, 294912, 589824, 10240]             # CIFAR-10


@pytest.fixture(scope="module", autouse=True)
def _registered():
    REGISTRY.setdefault(EDEN.name, EDEN)
    yield


def setup(total_steps=4, model="cnn4"):
    cfg = load_config(None, ["algorithm.name=eden"])
    net = build_model(model, 1, 28, 10, seed=0) if model == "cnn4" else build_model(model, 3, 32, 10, seed=0)
    spec = model_spec(net)
    algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    state = {k: v.detach().clone() for k, v in global_state(net).items()}
    ctx = LocalTraining(cfg.seed, cfg.lr, 64, 1).context(3, 7, 64 * total_steps, CPU)
    return cfg, net, spec, algo, state, ctx


def sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(h, torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64))
    return h


# --- the transform --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [0, 1, 3, 6])
def test_fwht_is_the_orthonormal_sylvester_matrix(m):
    n = 2 ** m
    x = torch.randn(5, n, generator=torch.Generator().manual_seed(m))
    want = x.double() @ sylvester(n).T / math.sqrt(n)
    torch.testing.assert_close(fwht(x).double(), want, rtol=1e-6, atol=1e-6)
    # H H = I: the transform of the identity is H/sqrt(n), and applying it again gives I back
    h = fwht(torch.eye(n))
    torch.testing.assert_close(h @ h, torch.eye(n), rtol=0, atol=1e-6)
    torch.testing.assert_close(fwht(h), torch.eye(n), rtol=0, atol=1e-6)
    assert fwht(x).dtype == torch.float32


def test_fwht_preserves_norm_and_is_its_own_inverse_at_scale():
    x = torch.randn(3, 2 ** 16, generator=torch.Generator().manual_seed(1))
    y = fwht(x)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), rtol=1e-6, atol=0)
    back = fwht(y)
    assert ((back - x).norm() / x.norm()).item() < 1e-6
    assert not torch.allclose(y, x)  # it did transform


def test_fwht_is_exact_on_sign_vectors_and_rejects_bad_shapes():
    s = torch.randint(0, 2, (2, 1024), generator=torch.Generator().manual_seed(2)).float() * 2 - 1
    raw = fwht_(s.clone())
    assert torch.equal(raw, torch.round(raw)) and torch.equal(fwht_(raw.clone()), s * 1024)
    for bad in (torch.zeros(12), torch.zeros(2, 12), torch.zeros(2, 0)):
        with pytest.raises(ValueError):
            fwht(bad)


def test_randomized_hadamard_inverse_recovers_x_and_depends_on_seed_and_stream():
    x = torch.randn(2, 512, generator=torch.Generator().manual_seed(3))
    streams = [make_stream(0, 4, 0), make_stream(0, 4, 1)]
    y = randomized_hadamard(x, 99, streams)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), rtol=1e-6, atol=0)
    torch.testing.assert_close(inverse_randomized_hadamard(y, 99, streams), x, rtol=0, atol=1e-6)
    # the wrong seed does not invert it; the diagonal is +-1, fair, and differs between streams
    assert (inverse_randomized_hadamard(y, 98, streams) - x).norm() > 0.5 * x.norm()
    d = rademacher_diagonal(99, streams, 4096, CPU)
    assert set(d.unique().tolist()) == {-1.0, 1.0}
    assert abs(d.mean().item()) < 0.05 and (d[0] != d[1]).any()
    assert torch.equal(d, rademacher_diagonal(99, streams, 4096, CPU))


# --- block rule -----------------------------------------------------------------------------------------------

def test_block_rule_properties():
    for d in range(1, 3000):
        sizes = block_sizes(d)
        assert all(s & (s - 1) == 0 for s in sizes) and sizes == sorted(sizes, reverse=True)
        pad = sum(sizes) - d
        assert 0 <= pad < MIN_BLOCK // 2 and pad < max(1, d % MIN_BLOCK)
        assert sum(1 for s in sizes if s < MIN_BLOCK) <= 1
    assert block_sizes(0) == [] and block_sizes(864) == [512, 256, 128] and block_sizes(257) == [256, 1]


@pytest.mark.parametrize("model,want,expected_pad", [("cnn4", CNN4_MASKED, 0), ("cnn8", CNN8_MASKED, 32)])
def test_padding_overhead_under_five_percent(model, want, expected_pad):
    spec = setup(model=model)[2]
    sizes = [spec.numel(n) for n in spec.masked]
    assert sizes == want
    sent_bits = sum(sum(block_sizes(d)) for d in sizes)
    pad_bits = sent_bits - sum(sizes)
    assert pad_bits == expected_pad
    assert pad_bits / sent_bits < 0.05
    # scales included, EDEN stays within 5 % of 1 bit per masked weight
    scale_bits = 32 * sum(len(block_sizes(d)) for d in sizes)
    assert (sent_bits + scale_bits) / sum(sizes) < 1.05


# --- the estimator --------------------------------------------------------------------------------------------

def test_eden_is_unbiased_over_header_seeds():
    """Monte-Carlo mean over 600 header seeds on a dense 300-entry vector (blocks 256 + 64, 44 padded).

    Per coordinate z = (mean - x) / (sd / sqrt(N)); without bias mean(z^2) ~ 1 with sd sqrt(2/d). The same
    statistic rejects a 10 % shrinkage (DRIVE's biased scale shrinks by ~2/pi), so the check has power.
    EDEN with one randomised Hadamard rotation is only approximately unbiased (see eden.py): this vector is
    dense, as model updates are."""
    d, n_seeds = 300, 600
    x = torch.randn(d, generator=torch.Generator().manual_seed(5))
    draws = torch.stack([eden_decode(*eden_encode(x, 2, seed), 2, d, seed) for seed in range(1, n_seeds + 1)])
    draws = draws.double()
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(n_seeds)
    limit = 1 + 5 * math.sqrt(2 / d)
    assert ((mean - x.double()) / se).square().mean().item() < limit
    assert ((0.9 * mean - x.double()) / se).square().mean().item() > limit
    # per-draw error: 1-bit EDEN has normalised MSE ~ pi/2 - 1 = 0.57 for a random rotation
    nmse = ((draws - x.double()).square().sum(1) / x.double().square().sum()).mean().item()
    assert 0.4 < nmse < 0.8


def test_zero_block_and_nonfinite_update():
    scales, bits = eden_encode(torch.zeros(300), 0, 1)
    assert np.all(scales == 0) and bool(bits.all())  # y = 0 -> sign +1, scale 0
    assert torch.equal(eden_decode(scales, bits, 0, 300, 1), torch.zeros(300))
    x = torch.zeros(300)
    x[:256] = 1.0  # first block nonzero, second (the 44 entries + padding) all zero
    scales, _ = eden_encode(x, 0, 1)
    assert scales[0] > 0 and scales[1] == 0
    x[7] = float("nan")  # a diverged update is sent with a NaN scale (the server's on_bad_update decides)
    scales, _ = eden_encode(x, 0, 1)
    assert np.isnan(scales[0]) and scales[1] == 0


# --- wire -----------------------------------------------------------------------------------------------------

def test_exact_byte_counts_cnn4_and_cnn8():
    _, _, spec, algo, _, _ = setup()
    assert [algo.tensor_nbytes(j, spec.numel(n)) for j, n in enumerate(spec.masked)] == [
        8 + 36, 8 + 2304, 8 + 9216, 8 + 36864, 8 + 320]
    assert spec.num_unmasked == 1920
    assert algo.payload_nbytes() == 48_780 + 4 * 1920 == 56_460
    _, _, spec8, algo8, _, _ = setup(model="cnn8")
    masked8 = sum(4 * len(block_sizes(d)) + sum(block_sizes(d)) // 8 for d in CNN8_MASKED)
    assert algo8.payload_nbytes() == masked8 + 4 * spec8.num_unmasked
    assert algo.tensor_nbytes(0, 257) == 8 + 33  # blocks 256 + 1: 257 bits in 33 bytes


def test_decode_matches_client_view_and_approximates_delta():
    _, _, spec, algo, state, ctx = setup()
    prob = algo.begin(state, ctx)
    g = torch.Generator().manual_seed(6)
    want = {}
    with torch.no_grad():
        for j, name in enumerate(spec.masked):
            prob.trainables[name].add_(0.01 * torch.randn(prob.trainables[name].shape, generator=g))
            want[name] = algo.encode_tensor(prob.trainables[name] - state[name], j, ctx)[1]
    payload = algo.encode(prob, ctx)
    assert payload.nbytes == algo.payload_nbytes()
    upd = algo.decode(memoryview(payload), ctx.noise_seed, state, CPU)
    for name in spec.masked:
        assert torch.equal(upd.deltas[name], want[name])
        delta = (prob.trainables[name] - state[name]).detach()
        cos = torch.nn.functional.cosine_similarity(upd.deltas[name].reshape(-1), delta.reshape(-1), dim=0)
        assert cos > 0.7, (name, cos)
    for name in spec.buffers:
        assert torch.equal(upd.buffers[name], prob.buffers[name])


def _message(algo, ctx, payload, client_id=7):
    return encode_message(algo.algo_id, ctx.round, client_id, ctx.noise_seed, 64.0, 0.5, payload)


def _aggregate_one(algo, state, ctx, payload):
    (msg,) = decode_messages(_message(algo, ctx, payload), rank=2, round_=ctx.round, algo_id=algo.algo_id)
    return aggregate(algo, [(2, msg)], state, 1.0, ctx.round, CPU)


@pytest.mark.parametrize("bad", ["truncated", "long", "nan", "inf", "negative"])
def test_corrupt_payload_is_a_wire_error_naming_rank_client_round(bad):
    _, _, spec, algo, state, ctx = setup()
    payload = algo.encode(algo.begin(state, ctx), ctx).copy()
    _aggregate_one(algo, state, ctx, payload)  # the intact payload aggregates
    if bad == "truncated":
        payload = payload[:-1]
    elif bad == "long":
        payload = np.concatenate([payload, np.zeros(4, np.uint8)])
    else:
        # second scale of the third masked tensor
        off = algo.tensor_nbytes(0, 288) + algo.tensor_nbytes(1, 18432) + 4
        payload[off: off + 4] = np.array([{"nan": np.nan, "inf": np.inf, "negative": -1.0}[bad]], "<f4").view(np.uint8)
    # NaN/inf: a well-formed upload of a diverged client, handled by on_bad_update (abort: BadUpdateError)
    err_type, where = ((BadUpdateError, rf"round {ctx.round}: the update of client 7 \(trained on rank 2\)")
                       if bad in ("nan", "inf") else (WireError, rf"rank 2, client 7, round {ctx.round}:"))
    with pytest.raises(err_type, match=where) as err:
        _aggregate_one(algo, state, ctx, payload)
    assert ("bytes, expected" in str(err.value)) if bad in ("truncated", "long") else ("tensor 2, block 1" in str(err.value))


def test_decode_tensor_rejects_stray_bits_and_wrong_length():
    algo = setup()[3]
    scales, bits = eden_encode(torch.randn(257), 0, 11)
    code = np.concatenate([scales.view(np.uint8), pack_bits(bits).numpy()])
    algo.decode_tensor(code, 0, (257,), 11, CPU)
    bad = code.copy()
    bad[-1] |= 0x80  # bit 263 of a 257-bit code
    with pytest.raises(ValueError, match="unused bits"):
        algo.decode_tensor(bad, 0, (257,), 11, CPU)
    with pytest.raises(ValueError, match="bytes, expected"):
        algo.decode_tensor(code[:-1], 0, (257,), 11, CPU)


# --- end to end -----------------------------------------------------------------------------------------------

def test_train_client_encode_aggregate_two_clients():
    cfg, net, spec, algo, state, _ = setup()
    training = LocalTraining(cfg.seed, cfg.lr, 64, 1)
    msgs = []
    for cid in (4, 1):
        ctx = training.context(2, cid, 96, CPU)
        g = torch.Generator().manual_seed(cid)
        x = torch.randn(ctx.num_samples, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (ctx.num_samples,), generator=g)
        res = train_client(net, algo, state, x, y, ctx, training)
        assert res.payload.nbytes == algo.payload_nbytes() == 56_460
        buf = encode_message(algo.algo_id, 2, cid, res.seed, res.weight, res.train_loss, res.payload)
        (msg,) = decode_messages(buf, rank=1, round_=2, algo_id=algo.algo_id)
        msgs.append((1, msg))
    new = aggregate(algo, msgs, state, 1.0, 2, CPU)
    assert all(torch.isfinite(t).all() for t in new.values())
    assert any(not torch.equal(new[n], state[n]) for n in spec.masked)
    assert any(not torch.equal(new[n], state[n]) for n in spec.unmasked)
