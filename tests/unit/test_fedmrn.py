"""FedMRN mask-training properties a test can check (docs/design.md, The method), plus encode/decode."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedmrn_mpi.algorithms.fedmrn import hard_share, soft_value
from fedmrn_mpi.training import LocalTraining, train_client
from fedmrn_mpi.comm.wire import decode_messages, encode_message

from algo_helpers import aggregate, algo_setup  # noqa: E402

CPU = torch.device("cpu")


def setup(*overrides, total_steps=10):
    return algo_setup(*overrides, total_steps=total_steps)


@pytest.mark.parametrize("training", ["psm", "sm", "deterministic"])
def test_binary_zero_latent_gives_exactly_zero_update(training):
    cfg, model, spec, algo, state, ctx = setup(f"algorithm.training={training}")
    prob = algo.begin(state, ctx)
    for step in (1, 5, ctx.total_steps):
        params = algo.materialize(prob, step, ctx)
        for name in spec.masked:
            assert torch.equal(params[name], state[name])
    algo.encode(prob, ctx)
    for d in prob.extra["final_delta"].values():
        assert torch.count_nonzero(d) == 0


@pytest.mark.parametrize("mask", ["binary", "signed"])
def test_hard_sample_is_unbiased(mask):
    cfg, model, spec, algo, state, ctx = setup(f"algorithm.mask={mask}", "algorithm.training=sm")
    prob = algo.begin(state, ctx)
    name = spec.masked[1]
    n = prob.extra["noise"][name]
    u = (torch.rand(n.shape, generator=torch.Generator().manual_seed(0)) * 3 - 1.5) * n  # r in [-1.5, 1.5]
    soft = soft_value(u, n, mask)
    draws = torch.stack([algo.sample_delta(u, n, 1, s, ctx) for s in range(1, 401)])
    mean = draws.mean(0)
    # per-element std of the mean <= |n|/sqrt(400) = |n|/20; check the aggregate error is tiny
    assert ((mean - soft).abs() / n.abs()).mean() < 0.05
    assert torch.all(draws.abs() <= n.abs() + 1e-12)
    if mask == "binary":
        assert torch.all((draws == 0) | (draws == n))
    else:
        assert torch.all((draws == n) | (draws == -n))


@pytest.mark.parametrize("training,expect", [("psm", None), ("sm", 1.0), ("deterministic", 0.0)])
def test_hard_branch_share_follows_schedule(training, expect):
    cfg, model, spec, algo, state, ctx = setup(f"algorithm.training={training}", total_steps=8)
    prob = algo.begin(state, ctx)
    name = spec.masked[3]
    n = prob.extra["noise"][name]
    u = 0.5 * n  # binary: soft = n/2, hard in {0, n}: hard elements are recognisable
    for s in (1, 4, 8):
        delta = algo.sample_delta(u, n, 3, s, ctx)
        share = ((delta == 0) | (delta == n)).float().mean().item()
        want = s / 8 if expect is None else expect
        assert abs(share - want) < 0.01, (s, share, want)
        assert hard_share(s, 8, training) == (s / 8 if expect is None else expect)


def test_gradient_reaching_u_equals_gradient_at_effective_weight():
    cfg, model, spec, algo, state, ctx = setup()
    prob = algo.begin(state, ctx)
    with torch.no_grad():
        for name in spec.masked:
            prob.trainables[name].copy_(0.3 * prob.extra["noise"][name])
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    params = algo.materialize(prob, 4, ctx)
    loss = F.cross_entropy(functional_call(model, {**params, **prob.buffers}, (x,)), y)
    grads_u = torch.autograd.grad(loss, [prob.trainables[n] for n in spec.masked])
    # same forward with the effective weights as leaves (buffers reset: BN updated them in place)
    eff = {n: params[n].detach().clone().requires_grad_(True) for n in spec.masked}
    other = {n: p for n, p in params.items() if n not in eff}
    bufs = {n: state[n].clone() for n in spec.buffers}
    loss2 = F.cross_entropy(functional_call(model, {**other, **eff, **bufs}, (x,)), y)
    grads_w = torch.autograd.grad(loss2, [eff[n] for n in spec.masked])
    assert torch.isclose(loss, loss2)
    for gu, gw in zip(grads_u, grads_w):
        torch.testing.assert_close(gu, gw, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mask", ["binary", "signed"])
@pytest.mark.parametrize("noise", ["uniform", "gaussian", "rademacher"])
def test_server_decode_equals_client_delta_and_is_bounded(mask, noise):
    cfg, model, spec, algo, state, ctx = setup(f"algorithm.mask={mask}", f"algorithm.noise={noise}")
    x = torch.randn(ctx.num_samples, 1, 28, 28)
    y = torch.randint(0, 10, (ctx.num_samples,))
    res = train_client(model, algo, state, x, y, ctx, LocalTraining(cfg.seed, cfg.lr, 64, 1))
    assert res.payload.nbytes == algo.payload_nbytes() == (389_920 + 7) // 8 + 4 * 1920
    msg_bytes = encode_message(algo.algo_id, ctx.round, ctx.client_id, res.seed, res.weight, res.train_loss,
                               res.payload)
    (msg,) = decode_messages(msg_bytes, rank=1, round_=ctx.round, algo_id=algo.algo_id)
    upd = algo.decode(msg.payload, msg.header.seed, state, CPU)
    # rebuild the client's own Δ the same way the client did
    prob = algo.begin(state, ctx)
    nz = 0
    for j, name in enumerate(spec.masked):
        n = algo.noise_for(res.seed, j, name, CPU)
        assert torch.all(upd.deltas[name].abs() <= n.abs())
        nz += torch.count_nonzero(upd.deltas[name]).item()
        torch.testing.assert_close(prob.extra["noise"][name], n, rtol=0, atol=0)
    assert nz > 0  # training moved some mask bits
    # unmasked tensors arrive as float32 values: deltas for BN affine, values for running stats
    for name in spec.buffers:
        assert upd.buffers[name].shape == state[name].shape


def test_decode_matches_encode_exactly():
    cfg, model, spec, algo, state, ctx = setup("algorithm.mask=signed")
    prob = algo.begin(state, ctx)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in spec.masked:
            prob.trainables[name].copy_((torch.rand(prob.trainables[name].shape, generator=g) * 2 - 1)
                                        * prob.extra["noise"][name])
        for name in spec.buffers:
            prob.buffers[name].add_(torch.randn(prob.buffers[name].shape, generator=g))
    payload = algo.encode(prob, ctx)
    upd = algo.decode(memoryview(payload), ctx.noise_seed, state, CPU)
    for name, d in prob.extra["final_delta"].items():
        assert torch.equal(upd.deltas[name], d)
    for name in spec.buffers:
        assert torch.equal(upd.buffers[name], prob.buffers[name])


def test_final_mask_is_a_fresh_draw_from_q():
    cfg, model, spec, algo, state, ctx = setup()
    prob = algo.begin(state, ctx)
    name = spec.masked[3]
    with torch.no_grad():
        prob.trainables[name].copy_(0.25 * prob.extra["noise"][name])  # q = 0.25 everywhere
    last_step = algo.sample_delta(prob.trainables[name], prob.extra["noise"][name], 3, ctx.total_steps, ctx)
    bits = algo.final_bits(prob, ctx)[name]
    assert abs(bits.float().mean().item() - 0.25) < 0.01
    # not the hard sample of the last step: the two draws agree only as often as independent ones would
    agree = ((last_step != 0) == bits).float().mean().item()
    assert abs(agree - (0.25 ** 2 + 0.75 ** 2)) < 0.01


def test_aggregate_weighted_mean_in_client_order():
    cfg, model, spec, algo, state, _ = setup("algorithm.name=fedavg")
    msgs = []
    rng = torch.Generator().manual_seed(3)
    client_states = {}
    for cid, weight in ((5, 1.0), (2, 3.0)):
        values = {n: t + torch.randn(t.shape, generator=rng) for n, t in state.items()}
        client_states[cid] = (weight, values)
        payload = algo._float_payload([values[n] for n in spec.names])
        (m,) = decode_messages(encode_message(algo.algo_id, 1, cid, 0, weight, 0.0, payload), rank=1, round_=1,
                               algo_id=algo.algo_id)
        msgs.append((1, m))
    new = aggregate(algo, msgs, state, 1.0, 1, CPU)
    for n in spec.names:
        want = (client_states[5][1][n] * 1.0 + client_states[2][1][n] * 3.0) / 4.0
        torch.testing.assert_close(new[n], want, rtol=1e-5, atol=1e-6)
    # order of arrival does not matter: the sum runs in client-id order
    new_rev = aggregate(algo, msgs[::-1], state, 1.0, 1, CPU)
    for n in spec.names:
        assert torch.equal(new[n], new_rev[n])


def test_post_training_ablation_trains_the_dense_update_and_masks_it_only_at_the_end():
    cfg, model, spec, algo, state, ctx = setup("algorithm.training=post")
    prob = algo.begin(state, ctx)
    name = spec.masked[1]
    with torch.no_grad():
        prob.trainables[name].normal_(0.0, 0.02)  # a dense update, mostly outside the noise's range
    for step in (1, ctx.total_steps):
        params = algo.materialize(prob, step, ctx)
        # the forward sees w + u itself: no clipping, no sampling
        assert torch.equal(params[name], state[name] + prob.trainables[name])
    bits = algo.final_bits(prob, ctx)[name]
    n = prob.extra["noise"][name]
    q = (prob.trainables[name] / n).clamp(0, 1)
    # the final draw follows q = clip(u/n, 0, 1): certain where q is 0 or 1
    assert not bits[q == 0].any() and bits[q == 1].all()
