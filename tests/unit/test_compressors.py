"""Post-training codecs (signsgd, qsgd, topk): exact coding, error feedback, unbiasedness, sizes, corruption."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedmrn_mpi.algorithms import REGISTRY, BadUpdateError
from fedmrn_mpi.algorithms.qsgd import QSGD
from fedmrn_mpi.rng.bits import pack_planes, unpack_planes
from fedmrn_mpi.algorithms.signsgd import SignSGD
from fedmrn_mpi.algorithms.topk import TopK, index_bits, select_topk, topk_count, uses_bitmap
from fedmrn_mpi.comm.wire import WireError, decode_messages, encode_message
from fedmrn_mpi.config import ConfigError, load_config
from fedmrn_mpi.training import LocalTraining, train_client

from algo_helpers import aggregate, algo_setup  # noqa: E402

CPU = torch.device("cpu")
CODECS = (SignSGD, QSGD, TopK)
CNN4_SIZES = (288, 18432, 73728, 294912, 2560)


@pytest.fixture(autouse=True, scope="module")
def registered():
    """The owner registers the codecs in algorithms/__init__.py; until then the tests do it themselves."""
    added = [cls.name for cls in CODECS if cls.name not in REGISTRY]
    for cls in CODECS:
        REGISTRY.setdefault(cls.name, cls)
    yield
    for name in added:
        REGISTRY.pop(name, None)


def setup(*overrides, total_steps=2):
    return algo_setup(*overrides, total_steps=total_steps)


def perturbed_problem(algo, state, ctx, seed=1, scale=0.01):
    """A local problem whose trainables and buffers moved by random amounts (as if trained)."""
    prob = algo.begin(state, ctx)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (*prob.trainables.values(), *prob.buffers.values()):
            t.add_(torch.randn(t.shape, generator=g) * scale)
    return prob


def deltas_of(algo, prob):
    return {n: (prob.trainables[n] - prob.extra["w"][n]).detach() for n in algo.spec.masked}


def message(algo, payload, client=7, round_=3, rank=1):
    (m,) = decode_messages(encode_message(algo.algo_id, round_, client, 11, 2.0, 0.5, payload), rank=rank,
                           round_=round_, algo_id=algo.algo_id)
    return rank, m


# ------------------------------------------------------------------------------------------------ signsgd

def test_signsgd_hand_example_scale_signs_and_bytes():
    *_, algo, state, ctx = setup("algorithm.name=signsgd")
    v = torch.tensor([0.5, -1.5, 0.0, 2.0, -0.25, 0.25, -3.0, 1.0, 0.5])  # mean|v| = 9/9 = 1
    code, decoded = algo.encode_tensor(v, 0, ctx)
    # bits (v >= 0) LSB first: 1,0,1,1,0,1,0,1 -> 0b10101101 = 173; then bit 8 = 1; then float32 1.0
    assert code.tolist() == [173, 1, 0x00, 0x00, 0x80, 0x3F]
    want = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    assert torch.equal(decoded, want)
    assert torch.equal(algo.decode_tensor(code, 0, (9,), 0, CPU), want)
    assert algo.tensor_nbytes(0, 9) == code.size
    bad = code.copy()
    bad[1] |= 0b10  # a padding bit
    with pytest.raises(ValueError, match="padding"):
        algo.decode_tensor(bad, 0, (9,), 0, CPU)


def test_signsgd_scale_is_mean_abs_in_float32():
    *_, algo, state, ctx = setup("algorithm.name=signsgd")
    v = torch.randn(1000, generator=torch.Generator().manual_seed(2)) * 0.01
    code, decoded = algo.encode_tensor(v, 1, ctx)
    alpha = code[-4:].view("<f4")[0]
    assert alpha == np.float32(v.double().abs().mean().item())
    assert torch.equal(decoded, torch.where(v >= 0, torch.tensor(alpha), torch.tensor(-alpha)))


# ---------------------------------------------------------------------------------------- error feedback

@pytest.mark.parametrize("name", ["signsgd", "topk"])
def test_error_feedback_residual_and_second_participation(name):
    *_, spec, algo, state, ctx = setup(f"algorithm.name={name}", "algorithm.error_feedback=true")
    assert algo.client_state_shapes() == {n: spec.shapes[n] for n in spec.masked}
    prob = perturbed_problem(algo, state, ctx)
    delta = deltas_of(algo, prob)
    assert ctx.state == {}  # first participation: nothing to add
    first = algo.encode(prob, ctx)
    upd = algo.decode(memoryview(first), ctx.noise_seed, state, CPU)
    e1 = {n: t.clone() for n, t in ctx.state.items()}
    assert set(e1) == set(spec.masked)
    for n in spec.masked:
        back = e1[n] + upd.deltas[n]
        if name == "topk":  # disjoint supports: exact
            assert torch.equal(back, delta[n])
        else:
            torch.testing.assert_close(back, delta[n], rtol=0, atol=4e-7 * delta[n].abs().max().item())
        assert e1[n].abs().sum() > 0
    # second participation with the same Δ: the codec sees Δ + e1, and the new residual is (Δ + e1) − decoded
    second = algo.encode(prob, ctx)
    codes, decoded = [], {}
    for j, n in enumerate(spec.masked):
        code, decoded[n] = algo.encode_tensor(delta[n] + e1[n], j, ctx)
        codes.append(code)
    unmasked = algo._float_payload([{**prob.trainables, **prob.buffers}[n] for n in spec.unmasked])
    assert np.array_equal(second, np.concatenate([*codes, unmasked]))
    assert not np.array_equal(second, first)
    for n in spec.masked:
        assert torch.equal(ctx.state[n], delta[n] + e1[n] - decoded[n])


@pytest.mark.parametrize("name", ["signsgd", "topk", "qsgd"])
def test_without_error_feedback_no_state_is_kept(name):
    *_, algo, state, ctx = setup(f"algorithm.name={name}")
    assert algo.client_state_shapes() == {}
    prob = perturbed_problem(algo, state, ctx)
    ctx.state = {n: torch.ones(algo.spec.shapes[n]) for n in algo.spec.masked}  # ignored without EF
    payload = algo.encode(prob, ctx)
    assert all(torch.equal(t, torch.ones_like(t)) for t in ctx.state.values())
    assert np.array_equal(payload, algo.encode(prob, dataclasses.replace(ctx, state={})))


def test_config_refuses_options_an_algorithm_does_not_read():
    with pytest.raises(ConfigError, match="algorithm.levels"):
        load_config(None, ["algorithm.name=signsgd", "algorithm.levels=3"])
    with pytest.raises(ConfigError, match="algorithm.error_feedback"):
        load_config(None, ["algorithm.name=qsgd", "algorithm.error_feedback=true"])
    load_config(None, ["algorithm.name=topk", "algorithm.fraction=0.1", "algorithm.error_feedback=true"])


# ---------------------------------------------------------------------------------------------------- qsgd

@pytest.mark.parametrize("levels", [1, 3])
def test_qsgd_is_unbiased_with_levels_in_range(levels):
    # the fixed-width wire with one norm per tensor (buckets and the Elias coding: test_qsgd.py)
    *_, algo, state, ctx = setup("algorithm.name=qsgd", f"algorithm.levels={levels}", "algorithm.coding=fixed", "algorithm.bucket_size=0")
    d, draws = 64, 2000
    v = torch.randn(d, generator=torch.Generator().manual_seed(5))
    v[:4] = 0.0
    norm = float(np.float32(torch.linalg.vector_norm(v.double()).item()))
    unit = norm / levels
    r = v.double().abs() * levels / norm
    out = torch.empty(draws, d, dtype=torch.float64)
    for t in range(draws):
        code, dec = algo.encode_tensor(v, 2, dataclasses.replace(ctx, draw_seed=1000 + t))
        out[t] = dec.double()
        if t < 5:  # the server reads the same values from the bytes
            assert code[-4:].view("<f4")[0] == np.float32(norm)
            assert torch.equal(algo.decode_tensor(code, 2, (d,), 0, CPU), dec)
    level = out.abs() / unit
    assert torch.allclose(level, level.round(), atol=1e-5)
    level = level.round()
    assert level.min() >= 0 and level.max() <= levels
    assert torch.all((level == r.floor()) | (level == r.floor() + 1))   # only the two neighbours
    assert torch.all((out == 0) | (out.sign() == v.double().sign()))
    # per entry the value lies in an interval of width norm/s: Var <= (norm/s)^2 / 4, so the mean of `draws`
    # independent draws is within 5 standard deviations (plus the 2^-24 grid of the uniforms)
    tol = 5 * unit / (2 * math.sqrt(draws)) + unit * 2.0**-24
    assert (out.mean(0) - v.double()).abs().max() <= tol
    # variance: empirical MSE matches Σ (norm/s)^2 p(1-p) and respects Lemma 3.1's bound
    p = r - r.floor()
    want = (unit**2 * p * (1 - p)).sum().item()
    mse = ((out - v.double()) ** 2).sum(1).mean().item()
    assert abs(mse - want) <= 0.1 * want
    assert mse <= min(d / levels**2, math.sqrt(d) / levels) * norm**2


def test_qsgd_draws_follow_the_draw_seed_only():
    *_, algo, state, ctx = setup("algorithm.name=qsgd", "algorithm.levels=3")
    v = torch.randn(500, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    a, _ = algo.encode_tensor(v, 1, ctx)
    torch.manual_seed(1)  # torch's global RNG plays no part
    b, _ = algo.encode_tensor(v, 1, ctx)
    c, _ = algo.encode_tensor(v, 1, dataclasses.replace(ctx, draw_seed=ctx.draw_seed + 1))
    d, _ = algo.encode_tensor(v, 2, ctx)  # another tensor index: another stream
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)


def test_qsgd_zero_tensor_and_plane_layout():
    *_, algo, state, ctx = setup("algorithm.name=qsgd", "algorithm.levels=2", "algorithm.coding=fixed", "algorithm.bucket_size=0")
    code, dec = algo.encode_tensor(torch.zeros(10), 0, ctx)
    assert code.size == math.ceil(3 * 10 / 8) + 4 and not code.any() and torch.equal(dec, torch.zeros(10))
    # plane-major: bit p*n + i is bit p of value i
    vals = torch.tensor([5, 0, 7, 2])
    packed = pack_planes(vals, 3)
    bits = np.unpackbits(packed.numpy(), bitorder="little")[:12].reshape(3, 4)
    assert bits.tolist() == [[1, 0, 1, 0], [0, 0, 1, 1], [1, 0, 1, 0]]
    assert torch.equal(unpack_planes(packed, 4, 3), vals)


# ---------------------------------------------------------------------------------------------------- topk

def test_topk_keeps_the_k_largest_with_ties_to_the_lower_index():
    *_, algo, state, ctx = setup("algorithm.name=topk", "algorithm.fraction=0.05")
    d = 300
    k = topk_count(0.05, d)
    assert k == 15
    v = torch.randn(d, generator=torch.Generator().manual_seed(7)) * 0.1
    tied = [250, 7, 120, 3, 199, 60]  # equal magnitudes straddling the cut, some negative
    big = [11, 290, 42, 100, 5, 77, 150, 230, 31, 64, 12]  # 11 clearly larger entries
    v[big] = torch.linspace(2.0, 3.0, len(big))
    v[tied] = torch.tensor([1.5, -1.5, 1.5, -1.5, 1.5, 1.5])
    want = sorted(sorted(range(d), key=lambda i: (-abs(v[i].item()), i))[:k])
    assert want == sorted(big + [3, 7, 60, 120])  # the four lowest tied indices
    code, dec = algo.encode_tensor(v, 1, ctx)
    sent = torch.nonzero(dec).reshape(-1).tolist()
    assert sent == want
    assert torch.equal(dec[want], v[want])  # bit-exact values
    assert torch.count_nonzero(dec) == k
    assert torch.equal(algo.decode_tensor(code, 1, (d,), 0, CPU), dec)
    assert code.size == algo.tensor_nbytes(1, d) == math.ceil(k * index_bits(d) / 8) + 4 * k


def test_topk_selection_equals_a_stable_descending_sort():
    g = torch.Generator().manual_seed(10)
    for trial in range(60):
        d = int(torch.randint(1, 200, (1,), generator=g))
        k = int(torch.randint(1, d + 1, (1,), generator=g))
        v = torch.randint(-3, 4, (d,), generator=g).float() * 0.5 if trial % 2 else torch.randn(d, generator=g)
        if trial % 5 == 0:
            v[torch.randint(0, d, (2,), generator=g)] = float("nan")
        if trial % 7 == 0:
            v[0], v[-1] = float("inf"), -float("inf")
        want = torch.sort(torch.sort(v.abs(), descending=True, stable=True).indices[:k]).values
        assert torch.equal(select_topk(v, k), want), (trial, d, k)


def test_topk_chooses_bitmap_or_indices_from_d_and_k():
    assert index_bits(288) == 9 and index_bits(256) == 8 and index_bits(257) == 9 and index_bits(1) == 0
    assert not uses_bitmap(288, 32) and uses_bitmap(288, 33)  # 288 = 32·9: a tie goes to the indices
    assert topk_count(0.07, 100) == 7 and topk_count(0.001, 10) == 1 and topk_count(0.999, 10) == 10
    for fraction, bitmap in ((0.01, False), (0.2, True)):
        *_, spec, algo, state, ctx = setup("algorithm.name=topk", f"algorithm.fraction={fraction}")
        d = 288
        k = topk_count(fraction, d)
        assert algo.plan(d)[1] is bitmap
        v = torch.randn(d, generator=torch.Generator().manual_seed(8))
        code, dec = algo.encode_tensor(v, 0, ctx)
        field = math.ceil(d / 8) if bitmap else math.ceil(k * 9 / 8)
        assert code.size == field + 4 * k
        if bitmap:
            assert np.array_equal(np.unpackbits(code[:field], bitorder="little").astype(bool), (dec != 0).numpy())
        assert torch.equal(algo.decode_tensor(code, 0, (d,), 0, CPU), dec)
        assert np.array_equal(code[field:].view("<f4"), v[dec != 0].numpy())
    # CNN4 at fraction 0.01 (documented in topk.py): indices for every tensor
    *_, spec, algo, state, ctx = setup("algorithm.name=topk")
    assert [spec.numel(n) for n in spec.masked] == list(CNN4_SIZES)
    assert [algo.plan(d)[1] for d in CNN4_SIZES] == [False] * 5
    assert [algo.tensor_nbytes(j, d) for j, d in enumerate(CNN4_SIZES)] == [16, 1087, 4521, 18807, 143]


# ------------------------------------------------------------------------------------------- sizes, wire

@pytest.mark.parametrize("overrides,nbytes", [
    (("algorithm.name=signsgd",), 48_740 + 20 + 7_680),
    (("algorithm.name=qsgd", "algorithm.coding=fixed", "algorithm.bucket_size=0"), 2 * 48_740 + 20 + 7_680),
    (("algorithm.name=qsgd", "algorithm.levels=3", "algorithm.coding=fixed", "algorithm.bucket_size=0"), 3 * 48_740 + 20 + 7_680),
    (("algorithm.name=qsgd", "algorithm.levels=4", "algorithm.coding=fixed", "algorithm.bucket_size=0"), 4 * 48_740 + 20 + 7_680),
    (("algorithm.name=qsgd", "algorithm.coding=fixed"), 2 * 48_740 + 4 * 762 + 7_680),  # a norm per 512 entries
    (("algorithm.name=topk",), 32_254),
    (("algorithm.name=topk", "algorithm.fraction=0.3"), None),
])
def test_payload_nbytes_is_exact(overrides, nbytes):
    *_, algo, state, ctx = setup(*overrides)
    payload = algo.encode(perturbed_problem(algo, state, ctx), ctx)
    assert payload.dtype == np.uint8 and payload.ndim == 1
    assert not algo.variable_payload and payload.nbytes == algo.payload_nbytes()
    if nbytes is not None:
        assert algo.payload_nbytes() == nbytes


def _set(payload, offset, raw):
    out = payload.copy()
    out[offset: offset + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def _nan_at(offset):
    return lambda p: _set(p, offset, np.array([np.nan], dtype="<f4").tobytes())


def _flip_bits(*positions):
    def corrupt(p):
        p = p.copy()
        for b in positions:
            p[b // 8] |= 1 << (b % 8)
        return p
    return corrupt


def _topk_indices(*idx):
    return lambda p: _set(p, 0, pack_planes(torch.tensor(idx), 9).numpy().tobytes())  # tensor 0: d=288, k=3


@pytest.mark.parametrize("overrides,corrupt,match", [
    (("algorithm.name=signsgd",), lambda p: p[:-1], "is 56439 bytes, expected 56440"),
    (("algorithm.name=signsgd",), _nan_at(36), "scale of features.0.weight is nan"),
    (("algorithm.name=qsgd", "algorithm.coding=fixed", "algorithm.bucket_size=0"), lambda p: np.concatenate([p, p[:1]]), "bytes, expected"),
    (("algorithm.name=qsgd", "algorithm.levels=2", "algorithm.coding=fixed", "algorithm.bucket_size=0"), _nan_at(108), "norm of features.0.weight is nan"),
    # entry 0 of tensor 0 (d=288, 3 bits): level bits are planes 1 and 2 -> level 3 > 2
    (("algorithm.name=qsgd", "algorithm.levels=2", "algorithm.coding=fixed", "algorithm.bucket_size=0"), _flip_bits(288, 576), "level 3 in features.0.weight"),
    # the Elias coding (more cases in test_qsgd.py)
    (("algorithm.name=qsgd",), lambda p: np.concatenate([p, p[:1]]), r"byte\(s\) after the end-of-vector code"),
    (("algorithm.name=topk",), lambda p: p[:100], "bytes, expected"),
    (("algorithm.name=topk",), _topk_indices(5, 290, 300), "index 300 of features.0.weight is out of range"),
    (("algorithm.name=topk",), _topk_indices(20, 10, 30), "not strictly increasing"),
    (("algorithm.name=topk",), _nan_at(4), "values of features.0.weight are not all finite"),
])
def test_bad_payload_is_a_wire_error_naming_rank_client_round(overrides, corrupt, match):
    """A malformed payload is a WireError; a well-formed one carrying NaN/inf is a diverged client's update, which
    the on_bad_update policy handles (abort: BadUpdateError); both name rank, client and round."""
    *_, algo, state, ctx = setup(*overrides)
    payload = algo.encode(perturbed_problem(algo, state, ctx), ctx)
    aggregate(algo, [message(algo, payload)], state, 1.0, 3, CPU)  # the intact payload is accepted
    err, where = ((BadUpdateError, r"round 3: the update of client 7 \(trained on rank 1\) is not finite: ")
                  if "nan" in match or "finite" in match else (WireError, "message from rank 1, client 7, round 3: "))
    with pytest.raises(err, match=f"{where}.*{match}"):
        aggregate(algo, [message(algo, corrupt(payload))], state, 1.0, 3, CPU)


@pytest.mark.parametrize("overrides", [("algorithm.name=signsgd",), ("algorithm.name=qsgd", "algorithm.levels=3"),
                                       ("algorithm.name=topk", "algorithm.fraction=0.2")])
def test_torch_path_gives_the_same_bytes(overrides, monkeypatch):
    """The int64 torch code paths of pack_bits/uniform01 (what CUDA runs) encode and decode identically."""
    import fedmrn_mpi.rng.bits as bits
    import fedmrn_mpi.rng.noise as noise
    *_, algo, state, ctx = setup(*overrides)
    prob = perturbed_problem(algo, state, ctx)
    want = algo.encode(prob, ctx)
    upd = algo.decode(memoryview(want), 0, state, CPU)
    monkeypatch.setattr(bits, "_CPU_NUMPY", False)
    monkeypatch.setattr(noise, "_CPU_NUMPY", False)
    assert np.array_equal(algo.encode(prob, ctx), want)
    again = algo.decode(memoryview(want), 0, state, CPU)
    assert all(torch.equal(again.deltas[n], upd.deltas[n]) for n in algo.spec.masked)


# ----------------------------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("overrides", [
    ("algorithm.name=signsgd", "algorithm.error_feedback=true"),
    ("algorithm.name=qsgd", "algorithm.levels=3"),
    ("algorithm.name=topk", "algorithm.error_feedback=true"),
])
def test_train_client_encode_wire_aggregate(overrides):
    cfg, model, spec, algo, state, _ = setup(*overrides)
    local = LocalTraining(cfg.seed, cfg.lr, 64, 1)
    g = torch.Generator().manual_seed(9)
    msgs = []
    for cid in (4, 2):
        ctx = local.context(3, cid, 96, CPU)  # two steps: a full batch and a short one
        x = torch.randn(ctx.num_samples, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (ctx.num_samples,), generator=g)
        res = train_client(model, algo, state, x, y, ctx, local)
        # qsgd's Elias coding varies in size: payload_nbytes is then the bound the decoder enforces
        assert (res.payload.nbytes <= algo.payload_nbytes() if algo.variable_payload
                else res.payload.nbytes == algo.payload_nbytes())
        assert set(ctx.state) == set(algo.client_state_shapes())
        msgs += [(1, m) for m in decode_messages(
            encode_message(algo.algo_id, 3, cid, res.seed, res.weight, res.train_loss, res.payload),
            rank=1, round_=3, algo_id=algo.algo_id)]
    new = aggregate(algo, msgs, state, 1.0, 3, CPU)
    assert all(torch.isfinite(new[n]).all() for n in spec.names)
    for n in spec.masked:
        assert not torch.equal(new[n], state[n]), n
