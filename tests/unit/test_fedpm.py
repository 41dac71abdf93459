"""FedPM (docs/baselines.md §5): frozen random network, Bernoulli mask training, 1-bit upload, Beta posterior."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedmrn_mpi.algorithms import REGISTRY, make_algorithm, model_spec
from algo_helpers import aggregate
from fedmrn_mpi.algorithms.fedpm import FedPM, bernoulli_sample, beta_posterior, signed_constant
from fedmrn_mpi.algorithms.spec import ModelSpec
from fedmrn_mpi.comm.wire import WireError, decode_messages, encode_message
from fedmrn_mpi.config import load_config
from fedmrn_mpi.models import build_model, global_state
from fedmrn_mpi.training import LocalTraining, train_client

CPU = torch.device("cpu")
REGISTRY.setdefault(FedPM.name, FedPM)  # the owner registers it in algorithms/__init__.py

CNN4_MASKED = (288, 18432, 73728, 294912, 2560)


def setup(*overrides, total_steps=4, round_=3, client=7):
    cfg = load_config(None, ["algorithm.name=fedpm", *overrides])
    model = build_model("cnn4", 1, 28, 10, seed=0)
    spec = model_spec(model)
    algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    state = {k: v.detach().clone() for k, v in global_state(model).items()}
    ctx = LocalTraining(cfg.seed, cfg.lr, 64, 1).context(round_, client, 64 * total_steps, CPU)
    return cfg, model, spec, algo, state, ctx


def message(algo, round_, client, payload, weight=1.0):
    (m,) = decode_messages(encode_message(algo.algo_id, round_, client, 0, weight, 0.0, payload), rank=1,
                           round_=round_, algo_id=algo.algo_id)
    return 1, m


def test_beta_posterior_hand_computed():
    # 3 clients, v in {0.01, 0.99}: entry with masks (1, 1, 0) -> Σv = 1.99
    a, b, mode = beta_posterior(1.99, 3)
    assert (a, b) == pytest.approx((2.99, 2.01)) and mode == pytest.approx(1.99 / 3)
    # prior 1: (mean, 1) has the same mode as (Σv, K), which server_step relies on
    assert beta_posterior(1.99 / 3, 1.0)[2] == pytest.approx(1.99 / 3)
    a, b, mode = beta_posterior(1.99, 3, prior=2.0)
    assert (a, b) == pytest.approx((3.99, 3.01)) and mode == pytest.approx(2.99 / 5.0)
    # elementwise on tensors: masks (0,0,0), (1,0,0), (1,1,0), (1,1,1) of three clients
    _, _, modes = beta_posterior(torch.tensor([0.03, 1.01, 1.99, 2.97], dtype=torch.float64), 3)
    torch.testing.assert_close(modes, torch.tensor([0.01, 1.01 / 3, 1.99 / 3, 0.99], dtype=torch.float64))


def test_aggregate_is_the_unweighted_posterior_mode_in_logits():
    cfg, model, spec, algo, state, ctx = setup()
    first = spec.masked[0]
    patterns = {4: [1, 0, 1, 1], 9: [1, 0, 0, 1], 2: [0, 0, 1, 1]}  # client id -> mask of the first 4 entries
    weights = {4: 1.0, 9: 5.0, 2: 100.0}  # header weights must not matter (weighted = False)
    g = torch.Generator().manual_seed(5)
    msgs, values = [], {}
    for cid, pat in patterns.items():
        c = LocalTraining(cfg.seed, cfg.lr, 64, 1).context(3, cid, 64, CPU)
        prob = algo.begin(state, c)
        with torch.no_grad():
            for name in spec.masked:  # sigmoid(±1000) is exactly 1 / 0 in float32: the sample is certain
                prob.trainables[name].fill_(-1000.0)
            prob.trainables[first].view(-1)[:4] = torch.tensor(pat, dtype=torch.float32) * 2000 - 1000
            for name in spec.unmasked:
                t = prob.trainables if name in prob.trainables else prob.buffers
                t[name].add_(torch.randn(t[name].shape, generator=g))
        values[cid] = {n: {**prob.trainables, **prob.buffers}[n].detach().clone() for n in spec.unmasked}
        msgs.append(message(algo, 3, cid, algo.encode(prob, c), weights[cid]))
    new = aggregate(algo, msgs, state, 0.5, 3, CPU)
    # counts of ones (2, 0, 2, 3) out of K = 3: mode = (0.99 k + 0.01 (3 - k)) / 3, score = logit(mode)
    want = torch.tensor([0.678184307883233, -4.595119850134589, 0.678184307883233, 4.595119850134578])
    torch.testing.assert_close(new[first].view(-1)[:4], want, rtol=0, atol=2e-6)
    for name in spec.masked:
        rest = new[name].view(-1)[4:] if name == first else new[name].view(-1)
        torch.testing.assert_close(rest, torch.full_like(rest, -4.595119850134589), rtol=0, atol=2e-6)
    for name in spec.unmasked:
        mean = sum(values[c][name] for c in sorted(values)) / 3
        want_u = state[name] + 0.5 * (mean - state[name]) if name in spec.params else mean
        torch.testing.assert_close(new[name], want_u, rtol=1e-5, atol=1e-6)


def test_frozen_weights_are_rank_independent_signed_constants():
    cfg, model, spec, algo, state, ctx = setup()
    other = make_algorithm(cfg.algorithm.options, model_spec(build_model("cnn4", 1, 28, 10, 1)), cfg.seed)
    w1, w2 = algo.frozen_weights(CPU), other.frozen_weights("cpu")
    assert algo.frozen_weights(CPU) is w1  # cached
    assert [t.numel() for t in w1.values()] == list(CNN4_MASKED)
    for j, name in enumerate(spec.masked):
        assert torch.equal(w1[name], w2[name])
        c = np.float32(math.e * math.sqrt(1.0 / (w1[name].numel() // w1[name].shape[0])))
        assert torch.all(w1[name].abs() == torch.tensor(c)), name
        assert abs((w1[name] > 0).float().mean().item() - 0.5) < (0.05 if w1[name].numel() < 1000 else 0.01)
    assert signed_constant((32, 1, 3, 3)) == pytest.approx(0.9060939428196817)
    assert signed_constant((10, 2560)) == pytest.approx(math.e / math.sqrt(2560))
    # the signs differ between tensors (own stream) and depend on the root seed
    a, b = w1[spec.masked[1]].view(-1)[:288], w1[spec.masked[0]].view(-1)
    assert not torch.equal(torch.sign(a), torch.sign(b))
    w3 = make_algorithm(cfg.algorithm.options, spec, 99).frozen_weights(CPU)
    assert not torch.equal(w3[spec.masked[2]], w1[spec.masked[2]])


def test_bernoulli_gradient_is_theta_times_upstream():
    s = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5, 4.0], requires_grad=True)
    u = torch.tensor([0.05, 0.9, 0.2, 0.99, 0.5, 0.1])
    w = torch.tensor([0.5, -0.5, 0.5, -0.5, 0.5, 0.5])
    g = torch.tensor([1.0, 2.0, -3.0, 0.5, -1.0, 4.0])
    theta = torch.sigmoid(s)
    m = bernoulli_sample(theta, u)
    assert m.tolist() == (u < theta).float().tolist()
    (grad,) = torch.autograd.grad((g * (w * m)).sum(), s)
    t = theta.detach()
    torch.testing.assert_close(grad, t * t * (1 - t) * g * w)  # ∂L/∂s = θ²(1−θ) ∂L/∂m, ∂L/∂m = g ⊙ w


def test_materialize_samples_fresh_masks_and_gradient_reaches_scores():
    cfg, model, spec, algo, state, ctx = setup()
    prob = algo.begin(state, ctx)
    name = spec.masked[3]
    w = prob.extra["w"][name]
    with torch.no_grad():
        prob.trainables[name].fill_(math.log(0.3 / 0.7))  # θ = 0.3
    p1, p2 = algo.materialize(prob, 1, ctx), algo.materialize(prob, 2, ctx)
    k1, k2 = p1[name] != 0, p2[name] != 0
    assert torch.all((p1[name] == w) | ~k1)
    assert abs(k1.float().mean().item() - 0.3) < 0.01
    assert abs((k1 & k2).float().mean().item() - 0.09) < 0.01  # independent per step
    assert torch.equal(algo.materialize(prob, 1, ctx)[name], p1[name])  # counter-based, reproducible
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    params = algo.materialize(prob, 3, ctx)
    eff = params[name].detach().clone().requires_grad_(True)
    loss = F.cross_entropy(functional_call(model, {**params, **prob.buffers}, (x,)), y)
    (gs,) = torch.autograd.grad(loss, prob.trainables[name])
    bufs = {n: state[n].clone() for n in spec.buffers}  # BN updated the first copies in place
    loss2 = F.cross_entropy(functional_call(model, {**params, name: eff, **bufs}, (x,)), y)
    (gw,) = torch.autograd.grad(loss2, eff)
    torch.testing.assert_close(gs, 0.3 * 0.3 * 0.7 * w * gw, rtol=1e-4, atol=1e-10)
    assert gs.abs().sum() > 0


def test_upload_is_one_bit_per_masked_entry_and_decodes_to_clipped_samples():
    cfg, model, spec, algo, state, ctx = setup()
    assert spec.num_masked == sum(CNN4_MASKED) == 389_920 and spec.num_unmasked == 1920
    assert algo.payload_nbytes() == 389_920 // 8 + 4 * 1920 == 56_420
    prob = algo.begin(state, ctx)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name in spec.masked:
            prob.trainables[name].copy_(torch.randn(prob.trainables[name].shape, generator=g) * 2)
        for name in spec.buffers:
            prob.buffers[name].add_(torch.rand(prob.buffers[name].shape, generator=g))
    payload = algo.encode(prob, ctx)
    assert payload.dtype == np.uint8 and payload.nbytes == 56_420
    upd = algo.decode(memoryview(payload), ctx.noise_seed, state, CPU)
    lo, hi = np.float32(0.01), np.float32(0.99)
    for name, m in prob.extra["upload_mask"].items():
        assert torch.equal(upd.deltas[name], torch.where(m, torch.tensor(hi), torch.tensor(lo)))
        q = torch.sigmoid(prob.trainables[name]).detach()
        if m.numel() > 10_000:  # a fresh Bernoulli(θ) sample: E[m - θ] = 0
            assert abs((m.float() - q).mean().item()) < 0.01
    for name in spec.buffers:
        assert torch.equal(upd.buffers[name], prob.buffers[name])
    for name in spec.unmasked:
        if name in spec.params:
            torch.testing.assert_close(upd.deltas[name], prob.trainables[name].detach() - state[name])


def test_eval_state_is_deterministic_per_round_with_values_in_0_and_pm_c():
    cfg, model, spec, algo, state, ctx = setup()
    e1, e1b, e2 = algo.eval_state(state, 5), algo.eval_state(state, 5), algo.eval_state(state, 6)
    frozen = algo.frozen_weights(CPU)
    for name in spec.masked:
        assert torch.equal(e1[name], e1b[name])
        v = e1[name]
        assert torch.all((v == 0) | (v == frozen[name]))
        kept = (v != 0).float().mean().item()
        assert abs(kept - 0.5) < (0.1 if v.numel() < 1000 else 0.01)  # scores ≈ 0 -> θ ≈ 0.5
    assert not torch.equal(e1[spec.masked[2]], e2[spec.masked[2]])
    for name in spec.unmasked:
        assert e1[name] is state[name]
    # the scores decide the mask: θ = 1 keeps every weight
    sure = {n: (torch.full_like(t, 1000.0) if n in spec.masked else t) for n, t in state.items()}
    assert all(torch.equal(algo.eval_state(sure, 1)[n], frozen[n]) for n in spec.masked)


def test_corrupted_or_truncated_payloads_are_rejected():
    cfg, model, spec, algo, state, ctx = setup()
    payload = algo.encode(algo.begin(state, ctx), ctx)
    for bad in (payload[:-1], np.concatenate([payload, np.zeros(4, np.uint8)])):
        with pytest.raises(WireError, match=r"rank 1, client 7, round 3: FedPM payload is \d+ bytes, expected 56420"):
            aggregate(algo, [message(algo, 3, 7, bad)], state, 1.0, 3, CPU)
    # nonzero padding bits after the last mask bit (5 mask entries -> 3 pad bits)
    tiny = ModelSpec(names=("fc.weight", "bn.weight"), shapes={"fc.weight": (5, 1), "bn.weight": (2,)},
                     params=("fc.weight", "bn.weight"), buffers=(), masked=("fc.weight",))
    small = FedPM(cfg.algorithm.options, tiny, cfg.seed)
    tstate = {"fc.weight": torch.zeros(5, 1), "bn.weight": torch.ones(2)}
    good = np.concatenate([np.array([0b00010110], np.uint8), np.ones(2, np.float32).view(np.uint8)])
    assert small.payload_nbytes() == good.nbytes == 9
    new = aggregate(small, [message(small, 3, 7, good)], tstate, 1.0, 3, CPU)
    assert (new["fc.weight"].view(-1) > 0).tolist() == [False, True, True, False, True]
    corrupt = good.copy()
    corrupt[0] |= 0b10000000
    with pytest.raises(WireError, match="rank 1, client 7, round 3: FedPM mask padding bits are not zero"):
        aggregate(small, [message(small, 3, 7, corrupt)], tstate, 1.0, 3, CPU)


def test_train_two_clients_then_aggregate():
    cfg, model, spec, algo, state, _ = setup()
    settings = LocalTraining(cfg.seed, cfg.lr, 64, 1)
    msgs = []
    g = torch.Generator().manual_seed(0)
    for cid, n in ((3, 128), (8, 192)):
        ctx = settings.context(2, cid, n, CPU)
        x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
        res = train_client(model, algo, state, x, y, ctx, settings)
        assert res.payload.nbytes == algo.payload_nbytes() == 56_420
        assert math.isfinite(res.train_loss)
        (m,) = decode_messages(encode_message(algo.algo_id, 2, cid, res.seed, res.weight, res.train_loss,
                                              res.payload), rank=1, round_=2, algo_id=algo.algo_id)
        msgs.append((1, m))
    new = aggregate(algo, msgs, state, cfg.server_lr, 2, CPU)
    assert set(new) == set(spec.names)
    for name in spec.names:
        assert torch.isfinite(new[name]).all(), name
        assert not torch.equal(new[name], state[name]), name
    for name in spec.masked:  # two clients: θ ∈ {0.01, 0.5, 0.99} -> scores ∈ {−4.595, 0, 4.595}
        a = new[name].abs()
        agree = (a - 4.595119850134589).abs() < 1e-5
        assert torch.all(agree | (a < 1e-5)), name
        if a.numel() > 1000:  # θ ≈ 0.5 after a short round: the two samples disagree about half the time
            assert 0.4 < agree.float().mean().item() < 0.6, name


def test_upload_mask_is_a_fresh_draw_not_a_training_sample():
    cfg, model, spec, algo, state, ctx = setup()
    prob = algo.begin(state, ctx)
    name = spec.masked[3]
    with torch.no_grad():
        prob.trainables[name].fill_(math.log(0.25 / 0.75))  # θ = 0.25
    up = algo.upload_masks(prob, ctx)[name]
    assert abs(up.float().mean().item() - 0.25) < 0.01
    for step in (1, ctx.total_steps):  # agree only as often as independent draws would
        trained = algo.materialize(prob, step, ctx)[name] != 0
        assert abs((trained == up).float().mean().item() - (0.25 ** 2 + 0.75 ** 2)) < 0.01
