"""FedBAT (docs/baselines.md §6): warm-up, switch, stochastic binarisation and its gradients, wire format."""

import math

import numpy as np
import pytest
import torch

from fedmrn_mpi.algorithms import REGISTRY, BadUpdateError
from fedmrn_mpi.algorithms.fedbat import (ALPHA_MAX, ALPHA_MIN, FedBAT, binarize, log_scale_key, scale)
from fedmrn_mpi.algorithms.spec import ModelSpec
from fedmrn_mpi.comm.wire import WireError, decode_messages, encode_message
from fedmrn_mpi.config import load_config
from fedmrn_mpi.rng.noise import make_stream, uniform01
from fedmrn_mpi.training import LocalTraining, train_client

from algo_helpers import aggregate, algo_setup  # noqa: E402

CPU = torch.device("cpu")
REGISTRY.setdefault(FedBAT.name, FedBAT)  # the owner registers it in algorithms/__init__.py


def setup(*overrides, total_steps=10):
    return algo_setup("algorithm.name=fedbat", *overrides, total_steps=total_steps)


def set_latent(prob, spec, seed=0, scale_=0.01):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in spec.masked:
            prob.trainables[name].copy_(torch.randn(prob.trainables[name].shape, generator=g) * scale_)


def linear_loss(params, spec, seed=1):
    """sum(c ⊙ param) over masked tensors: dL/dparam = c, a known upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    cs = {n: torch.randn(params[n].shape, generator=g) for n in spec.masked}
    return sum((cs[n] * params[n]).sum() for n in spec.masked), cs


def test_warmup_forward_is_w_plus_u_and_s_gets_no_gradient():
    cfg, model, spec, algo, state, ctx = setup("algorithm.rho=6", total_steps=10)  # warm-up: steps 1..5
    prob = algo.begin(state, ctx)
    set_latent(prob, spec)
    for step in (1, 3, 5):
        params = algo.materialize(prob, step, ctx)
        for name in spec.masked:
            assert torch.equal(params[name], state[name] + prob.trainables[name])
        assert "alpha0" not in prob.extra
        assert not any(k.startswith("fedbat.") for k in params)  # s is not a model parameter
    loss, cs = linear_loss(params, spec)
    keys = [*spec.masked, *(log_scale_key(n) for n in spec.masked)]
    grads = dict(zip(keys, torch.autograd.grad(loss, [prob.trainables[k] for k in keys])))
    for name in spec.masked:
        assert torch.equal(grads[name], cs[name])  # full-precision: identity gradient, no clipping
        assert grads[log_scale_key(name)].item() == 0.0


def test_switch_sets_alpha0_and_forward_is_exactly_plus_minus_alpha():
    cfg, model, spec, algo, state, ctx = setup(total_steps=10)
    prob = algo.begin(state, ctx)
    set_latent(prob, spec)
    mean_abs = {n: prob.trainables[n].detach().abs().mean() for n in spec.masked}
    params = algo.materialize(prob, 6, ctx)  # first step past 0.5 * 10
    assert prob.extra["switch_step"] == 6
    for name in spec.masked:
        assert torch.equal(prob.extra["alpha0"][name], mean_abs[name])
        a = algo.alpha(prob, name).detach()
        w, u, p = state[name], prob.trainables[name].detach(), params[name].detach()
        plus, minus = p == w + a, p == w - a
        assert torch.all(plus | minus)
        assert plus.any() and minus.any()
        assert torch.all(plus[u > a]) and torch.all(minus[u < -a])  # saturated entries are deterministic
    # alpha0 is taken once: changing u afterwards does not move it; the step draws are fresh per step
    name = spec.masked[3]
    with torch.no_grad():
        prob.trainables[name].mul_(3.0)
    bits6 = params[name].detach() > state[name]
    bits7 = algo.materialize(prob, 7, ctx)[name].detach() > state[name]
    assert torch.equal(prob.extra["alpha0"][name], mean_abs[name])
    assert prob.extra["switch_step"] == 6
    assert not torch.equal(bits6, bits7)


@pytest.mark.parametrize("phi,first_binary", [(0.0, 1), (0.25, 3), (0.7, 8)])
def test_switch_step_follows_warmup_fraction(phi, first_binary):
    cfg, model, spec, algo, state, ctx = setup(f"algorithm.warmup_fraction={phi}", total_steps=10)
    prob = algo.begin(state, ctx)
    for step in range(1, 11):
        algo.materialize(prob, step, ctx)
        if step < first_binary:
            assert "alpha0" not in prob.extra
    assert prob.extra["switch_step"] == first_binary


def test_binarisation_is_unbiased_inside_the_scale():
    n, draws = 400, 1000
    alpha = torch.tensor(0.01)
    u = torch.linspace(-1.5, 1.5, n) * alpha  # inside and beyond [-alpha, alpha]
    samples = torch.stack([binarize(u, alpha, uniform01(seed, make_stream(0, 2, 5), (n,)))
                           for seed in range(draws)])
    assert torch.all((samples == alpha) | (samples == -alpha))
    mean = samples.mean(0)
    inside = u.abs() <= alpha
    # per-element std of the mean <= alpha / sqrt(draws); 5 sigma over the 267 inside
    assert (mean - u)[inside].abs().max() < 5 * alpha / math.sqrt(draws)
    assert torch.all(samples[:, ~inside] == alpha * torch.sign(u[~inside]))  # saturated: deterministic sign


def test_gradients_match_the_reference_formula_on_a_hand_example():
    rho, alpha0 = 2.0, torch.tensor(0.01)
    s = torch.tensor(0.1, requires_grad=True)
    u = torch.tensor([0.03, -0.02, 0.005, 0.0, -0.004], requires_grad=True)
    uniform = torch.tensor([0.5, 0.5, 0.9, 0.1, 0.2])
    alpha = scale(alpha0, s, rho)
    a = 0.01 * math.exp(0.2)
    assert abs(alpha.item() - a) < 1e-9
    out = binarize(u, alpha, uniform)
    x = [ui / a for ui in (0.03, -0.02, 0.005, 0.0, -0.004)]   # 2.46, -1.64, 0.41, 0, -0.33
    # p = (x + 1) / 2 = 1, 0, 0.70, 0.5, 0.34; b = [uniform < p] = 1, 0, 0, 1, 1
    b = [1, 0, 0, 1, 1]
    torch.testing.assert_close(out, alpha.detach() * torch.tensor([2.0 * bi - 1 for bi in b]), rtol=0, atol=0)
    c = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    gu, gs = torch.autograd.grad((c * out).sum(), [u, s])
    torch.testing.assert_close(gu, torch.tensor([0.0, 0.0, 3.0, 4.0, 5.0]), rtol=0, atol=0)  # |x| <= 1 only
    dalpha = 1 * 1 + 2 * (-1) + 3 * ((2 * 0 - 1) - x[2]) + 4 * ((2 * 1 - 1) - x[3]) + 5 * ((2 * 1 - 1) - x[4])
    assert abs(gs.item() - dalpha * rho * a) < 1e-6 * abs(dalpha * rho * a)
    # clamped alpha: no gradient reaches s
    s2 = torch.tensor(3.0, requires_grad=True)
    (g2,) = torch.autograd.grad((c * binarize(u, scale(alpha0, s2, rho), uniform)).sum(), [s2])
    assert g2.item() == 0.0 and scale(alpha0, s2, rho).item() == pytest.approx(ALPHA_MAX)


@pytest.mark.parametrize("rho", [0.0, 6.0])
def test_rho_zero_keeps_alpha_at_clamped_alpha0(rho):
    cfg, model, spec, algo, state, ctx = setup(f"algorithm.rho={rho}", total_steps=10)
    prob = algo.begin(state, ctx)
    set_latent(prob, spec, scale_=0.004)
    params = algo.materialize(prob, 6, ctx)
    loss, _ = linear_loss(params, spec)
    names = [log_scale_key(n) for n in spec.masked]
    grads = torch.autograd.grad(loss, [prob.trainables[k] for k in names])
    if rho == 0.0:
        assert all(g.item() == 0.0 for g in grads)
    else:
        assert all(g.item() != 0.0 for g in grads)
    with torch.no_grad():
        for k in names:
            prob.trainables[k].fill_(0.3)
    for name in spec.masked:
        want = prob.extra["alpha0"][name].clamp(ALPHA_MIN, ALPHA_MAX)
        got = algo.alpha(prob, name).detach()
        assert torch.equal(got, want) == (rho == 0.0)
    # tiny alpha0 is clamped from below
    name = spec.masked[0]
    prob.extra["alpha0"][name] = torch.tensor(1e-7)
    assert algo.alpha(prob, name).item() == pytest.approx(ALPHA_MIN)


def test_payload_size_and_decode_equal_the_client_upload():
    cfg, model, spec, algo, state, ctx = setup("algorithm.rho=6")
    assert spec.num_masked == 389_920 and spec.num_unmasked == 1920 and len(spec.masked) == 5
    assert algo.payload_nbytes() == 48_740 + 5 * 4 + 1920 * 4 == 56_440
    prob = algo.begin(state, ctx)
    set_latent(prob, spec)
    for step in range(1, ctx.total_steps + 1):
        algo.materialize(prob, step, ctx)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name in spec.masked:
            prob.trainables[log_scale_key(name)].fill_(0.05)
        for name in spec.buffers:
            prob.buffers[name].add_(torch.randn(prob.buffers[name].shape, generator=g))
    payload = algo.encode(prob, ctx)
    assert payload.dtype == np.uint8 and payload.nbytes == algo.payload_nbytes()
    alphas = np.frombuffer(payload[48_740: 48_760].tobytes(), "<f4")
    for j, name in enumerate(spec.masked):
        assert alphas[j] == algo.alpha(prob, name).item()
    upd = algo.decode(memoryview(payload), ctx.noise_seed, state, CPU)
    for name, d in prob.extra["final_delta"].items():
        assert torch.equal(upd.deltas[name], d)
        assert torch.all(d.abs() == d.abs().max())
    for name in spec.buffers:
        assert torch.equal(upd.buffers[name], prob.buffers[name])
    # the upload is a fresh draw, not the last step's binarisation
    name = spec.masked[3]
    last = algo.materialize(prob, ctx.total_steps, ctx)[name].detach() > state[name]
    assert not torch.equal(last, prob.extra["final_delta"][name] > 0)


def test_warmup_covering_every_step_switches_after_the_last_step():
    cfg, model, spec, algo, state, ctx = setup(total_steps=4)
    prob = algo.begin(state, ctx)
    set_latent(prob, spec, scale_=0.003)
    for step in (1, 2):  # the caller never reaches the binarised phase
        algo.materialize(prob, step, ctx)
    algo.encode(prob, ctx)
    assert prob.extra["switch_step"] == ctx.total_steps + 1
    for name in spec.masked:
        a = prob.trainables[name].detach().abs().mean().clamp(ALPHA_MIN, ALPHA_MAX)
        d = prob.extra["final_delta"][name]
        assert torch.all((d == a) | (d == -a))


def _message(algo, payload, client=4, round_=3, weight=2.0):
    (m,) = decode_messages(encode_message(algo.algo_id, round_, client, 0, weight, 0.0, payload), rank=2,
                           round_=round_, algo_id=algo.algo_id)
    return m


def test_corrupted_or_truncated_payloads_are_rejected():
    cfg, model, spec, algo, state, ctx = setup()
    prob = algo.begin(state, ctx)
    set_latent(prob, spec)
    good = algo.encode(prob, ctx)
    aggregate(algo, [(2, _message(algo, good))], state, 1.0, 3, CPU)  # the intact payload is accepted
    nan = good.copy()
    nan[48_740 + 4: 48_740 + 8] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    big = good.copy()
    big[48_740: 48_744] = np.frombuffer(np.float32(0.5).tobytes(), np.uint8)
    zero = good.copy()
    zero[48_740 + 16: 48_740 + 20] = 0
    cases = [(good[:-1], "56439 bytes, expected 56440"), (np.concatenate([good, good[:4]]), "expected 56440"),
             (nan, "nan"), (big, "0.5"), (zero, "0.0")]
    for bad, text in cases:
        # a NaN scale is a diverged client's update (on_bad_update; abort: BadUpdateError), the rest malformed
        err_type, where = ((BadUpdateError, r"client 4 \(trained on rank 2\)") if text == "nan"
                           else (WireError, "rank 2, client 4, round 3"))
        with pytest.raises(err_type, match=where) as err:
            aggregate(algo, [(2, _message(algo, bad))], state, 1.0, 3, CPU)
        assert text in str(err.value)


def test_padding_bits_must_be_zero():
    cfg = load_config(None, ["algorithm.name=fedbat"])
    spec = ModelSpec(names=("a",), shapes={"a": (5,)}, params=("a",), buffers=(), masked=("a",))
    algo = FedBAT(cfg.algorithm.options, spec, cfg.seed)
    assert algo.payload_nbytes() == 1 + 4
    payload = np.concatenate([np.array([0b10110], np.uint8), np.frombuffer(np.float32(0.01).tobytes(), np.uint8)])
    upd = algo.decode(memoryview(payload), 0, {"a": torch.zeros(5)}, CPU)
    a = np.float32(0.01).item()
    assert upd.deltas["a"].tolist() == [-a, a, a, -a, a]
    payload[0] |= 0b1000_0000
    with pytest.raises(ValueError, match="padding"):
        algo.decode(memoryview(payload), 0, {"a": torch.zeros(5)}, CPU)


def test_train_clients_encode_decode_aggregate():
    cfg, model, spec, algo, state, ctx = setup("algorithm.rho=6", total_steps=4)
    settings = LocalTraining(cfg.seed, cfg.lr, 64, 1)
    msgs = []
    for cid in (5, 2):
        ctx = settings.context(3, cid, 64 * 4 - 10, CPU)
        g = torch.Generator().manual_seed(cid)
        x = torch.randn(ctx.num_samples, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (ctx.num_samples,), generator=g)
        res = train_client(model, algo, state, x, y, ctx, settings)
        assert res.payload.nbytes == algo.payload_nbytes() == 56_440
        assert math.isfinite(res.train_loss)
        buf = encode_message(algo.algo_id, 3, cid, res.seed, res.weight, res.train_loss, res.payload)
        (m,) = decode_messages(buf, rank=1, round_=3, algo_id=algo.algo_id)
        msgs.append((1, m))
    new = aggregate(algo, msgs, state, cfg.server_lr, 3, CPU)
    for name in spec.names:
        assert torch.isfinite(new[name]).all()
    for name in spec.masked:
        assert not torch.equal(new[name], state[name])
        # every client moves each entry by exactly ±alpha_k, so the mean step is bounded by the largest scale
        assert (new[name] - state[name]).abs().max() <= ALPHA_MAX * 1.0001
    assert any(not torch.equal(new[n], state[n]) for n in spec.unmasked)
