"""`bn_recalibrate`: the uploaded BatchNorm statistics are those of the model the server rebuilds from the upload
(training/bn_recalibrate.py).

The reference for every check is a plain `nn.Module` (channels-last, as `models.forward` runs CNN4 on the CPU)
loaded with global + decoded update, `reset_running_stats()`, `momentum = None`, train mode, no gradient, run
over the client's first-epoch batches, regenerated here from its "order" seed: it must give the uploaded
statistics bit for bit.
"""

import copy

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from fedmrn_mpi.algorithms import REGISTRY, make_algorithm, model_spec
from fedmrn_mpi.config import load_config
from fedmrn_mpi.models import build_model, global_state
from fedmrn_mpi.rng.seeds import derive_seed, torch_generator
from fedmrn_mpi.training import LocalTraining, train_client, train_clients_batched
from fedmrn_mpi.training.bn_recalibrate import estimate_bn_stats, write_values

CPU = torch.device("cpu")
ROUND, CLIENT, N, BATCH, EPOCHS, SIZE = 3, 7, 40, 16, 2, 16   # 3 batches per epoch, the last one short

# one algorithm of each kind the issue names, then every other one
KINDS = {
    "mask (fedmrn)": ("algorithm.name=fedmrn",),
    "sign (signsgd+ef)": ("algorithm.name=signsgd", "algorithm.error_feedback=true"),
    "sparse (topk+ef)": ("algorithm.name=topk", "algorithm.error_feedback=true", "algorithm.fraction=0.05"),
    "quantised (qsgd)": ("algorithm.name=qsgd", "algorithm.levels=2"),
    "qsgd fixed": ("algorithm.name=qsgd", "algorithm.coding=fixed", "algorithm.bucket_size=64"),
    "fedmrn post": ("algorithm.name=fedmrn", "algorithm.training=post"),
    "fedmrn signed sm": ("algorithm.name=fedmrn", "algorithm.mask=signed", "algorithm.training=sm"),
    "fedavg": ("algorithm.name=fedavg",),
    "eden": ("algorithm.name=eden",),
    "fedbat": ("algorithm.name=fedbat",),
}


def world(*overrides, image=SIZE):
    cfg = load_config(None, list(overrides))
    model = build_model("cnn4", 1, image, 10, seed=0)
    spec = model_spec(model)
    algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    state = {k: v.detach().clone() for k, v in global_state(model).items()}
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, 1, image, image, generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    return cfg, model, spec, algo, state, x, y


def settings(cfg, recal, **kw):
    return LocalTraining(cfg.seed, cfg.lr, BATCH, EPOCHS, bn_recalibrate=recal, server_lr=cfg.server_lr, **kw)


def run_client(cfg, model, algo, state, x, y, recal, client=CLIENT, **kw):
    lt = settings(cfg, recal, **kw)
    ctx = lt.context(ROUND, client, len(x), CPU)
    return train_client(model, algo, state, x, y, ctx, lt), ctx


def first_epoch(cfg, x, client=CLIENT, augment=None):
    """The client's first-epoch batches, from its "order" (and "augment") seeds."""
    perm = torch.randperm(len(x), generator=torch_generator(derive_seed(cfg.seed, "order", ROUND, client)))
    gen = torch_generator(derive_seed(cfg.seed, "augment", ROUND, client)) if augment else None
    for b in range(0, len(x), BATCH):
        xb = x[perm[b: b + BATCH]]
        yield augment(xb, gen) if augment else xb


def direct_estimate(model, params, batches):
    """BN statistics of `model` with `params`, re-estimated by a plain module (the textbook recipe)."""
    m = copy.deepcopy(model).to(memory_format=torch.channels_last)
    m.load_state_dict(params, strict=False)
    for layer in m.modules():
        if isinstance(layer, _BatchNorm):
            layer.momentum = None
            layer.reset_running_stats()
    m.train()
    with torch.no_grad():
        for xb in batches:
            m(xb.to(memory_format=torch.channels_last))
    return {n: t for n, t in m.state_dict().items() if "running_" in n}


def decoded(algo, res, state):
    return algo.decode(memoryview(res.payload), res.seed, state, CPU)


def assert_same(got, want):
    assert set(got) == set(want)
    for n in want:
        assert torch.equal(got[n], want[n]), (n, float((got[n] - want[n]).abs().max()))


@pytest.mark.parametrize("overrides", list(KINDS.values()), ids=list(KINDS))
def test_uploaded_statistics_equal_a_direct_re_estimate_on_the_decoded_model(overrides):
    cfg, model, spec, algo, state, x, y = world(*overrides)
    dense, ctx0 = run_client(cfg, model, algo, state, x, y, recal=False)
    res, ctx = run_client(cfg, model, algo, state, x, y, recal=True)
    upd = decoded(algo, res, state)
    # global + decoded update: the weights the server applies from this upload (server_lr 1)
    served = {n: state[n] + upd.deltas[n] for n in spec.params}
    want = direct_estimate(model, served, first_epoch(cfg, x))
    assert_same(upd.buffers, want)
    # ... and they are not the dense model's statistics
    before = decoded(algo, dense, state).buffers
    assert all(not torch.equal(before[n], want[n]) for n in want)
    # only the running statistics' bytes changed: weights' code, BN affine parameters, seed and size are as sent
    offsets = algo.value_offsets(res.payload.nbytes)
    stats = np.zeros(res.payload.nbytes, dtype=bool)
    for n in spec.buffers:
        stats[offsets[n]: offsets[n] + 4 * spec.numel(n)] = True
    assert res.payload.nbytes == dense.payload.nbytes and res.seed == dense.seed
    assert np.array_equal(res.payload[~stats], dense.payload[~stats])
    # decoding on the client left the per-client state (error-feedback residuals) as encode wrote it
    assert set(ctx.state) == set(ctx0.state) == set(algo.client_state_shapes())
    assert all(torch.equal(ctx.state[n], ctx0.state[n]) for n in ctx0.state)
    assert res.train_loss == dense.train_loss


def test_every_registered_algorithm_is_covered():
    names = {load_config(None, list(o)).algorithm.name for o in KINDS.values()} | {"fedpm"}
    assert names == set(REGISTRY)


def test_fedpm_statistics_are_those_of_the_model_it_evaluates():
    """FedPM's global state holds scores, not weights: the rebuilt model is the evaluated one, w ⊙ m with the
    round's mask drawn from the scores the server forms from this upload alone (`eval_state`)."""
    cfg, model, spec, algo, state, x, y = world("algorithm.name=fedpm")
    res, _ = run_client(cfg, model, algo, state, x, y, recal=True)
    upd = decoded(algo, res, state)
    served = algo.eval_state(algo.server_step(state, {**upd.deltas, **upd.buffers}, 1.0), ROUND)
    assert served[spec.masked[0]].abs().max() > 0.1  # frozen ±c weights, not scores
    assert_same(upd.buffers, direct_estimate(model, {n: served[n] for n in spec.params}, first_epoch(cfg, x)))


def test_server_lr_rebuilds_global_plus_eta_times_the_update():
    cfg, model, spec, algo, state, x, y = world("algorithm.name=signsgd", "server_lr=0.5")
    res, _ = run_client(cfg, model, algo, state, x, y, recal=True)
    upd = decoded(algo, res, state)
    eta = {n: state[n] + 0.5 * upd.deltas[n] for n in spec.params}
    assert_same(upd.buffers, direct_estimate(model, eta, first_epoch(cfg, x)))
    one = direct_estimate(model, {n: state[n] + upd.deltas[n] for n in spec.params}, first_epoch(cfg, x))
    assert not torch.equal(one["features.1.running_var"], upd.buffers["features.1.running_var"])


def test_the_pass_replays_the_first_epochs_augmentation():
    def augment(xb, gen):  # stands in for crop+flip: all its randomness from the client's generator
        return xb + torch.rand(xb.shape[0], 1, 1, 1, generator=gen)

    cfg, model, spec, algo, state, x, y = world("algorithm.name=fedmrn", "algorithm.training=post")
    res, _ = run_client(cfg, model, algo, state, x, y, recal=True, augment=augment)
    upd = decoded(algo, res, state)
    served = {n: state[n] + upd.deltas[n] for n in spec.params}
    assert_same(upd.buffers, direct_estimate(model, served, first_epoch(cfg, x, augment=augment)))


def test_batched_clients_upload_the_same_statistics_as_one_after_another():
    # fedavg: its upload is continuous in the weights, so vmap's float differences stay small in the statistics
    cfg, model, spec, algo, state, x, y = world("algorithm.name=fedavg")
    xs = [x[:N // 2], x[N // 2:]]
    ys = [y[:N // 2], y[N // 2:]]
    lt = settings(cfg, True)
    seq = [train_client(model, algo, state, xi, yi, lt.context(ROUND, c, len(xi), CPU), lt)
           for c, xi, yi in zip((2, 5), xs, ys)]
    ctxs = [lt.context(ROUND, c, len(xi), CPU) for c, xi in zip((2, 5), xs)]
    bat = train_clients_batched(model, algo, state, list(zip(xs, ys)), ctxs, lt)
    for c, xi, s, b in zip((2, 5), xs, seq, bat):
        us, ub = decoded(algo, s, state), decoded(algo, b, state)
        for n in spec.buffers:   # vmap's training differs in the last bits, and the statistics follow it
            scale = float(us.buffers[n].abs().max())
            assert float((ub.buffers[n] - us.buffers[n]).abs().max()) <= 1e-2 * scale, n
        served = {n: state[n] + ub.deltas[n] for n in spec.params}
        assert_same(ub.buffers, direct_estimate(model, served, first_epoch(cfg, xi, client=c)))


def test_model_settings_are_restored_and_state_untouched():
    cfg, model, spec, _, state, x, _ = world("algorithm.name=fedavg")
    model.eval()
    momenta = [m.momentum for m in model.modules() if isinstance(m, _BatchNorm)]
    before = {n: t.clone() for n, t in state.items()}
    stats = estimate_bn_stats(model, state, first_epoch(cfg, x))
    assert set(stats) == {n for n in spec.buffers if "running_" in n}
    assert not model.training
    assert [m.momentum for m in model.modules() if isinstance(m, _BatchNorm)] == momenta
    assert_same(state, before)
    assert estimate_bn_stats(model, state, []) == {}


def test_a_non_finite_upload_is_left_as_encoded():
    """A diverged client's upload reaches the server as `encode` wrote it (its on_bad_update decision)."""
    cfg, model, _, algo, state, x, y = world("algorithm.name=fedmrn")
    nan = {n: torch.full_like(t, float("nan")) for n, t in state.items()}
    dense, _ = run_client(cfg, model, algo, nan, x, y, recal=False)
    res, _ = run_client(cfg, model, algo, nan, x, y, recal=True)
    assert np.array_equal(res.payload, dense.payload)


def test_a_layout_that_does_not_match_value_offsets_is_an_error():
    cfg, model, spec, algo, state, x, y = world("algorithm.name=fedmrn")
    res, _ = run_client(cfg, model, algo, state, x, y, recal=False)
    upd = decoded(algo, res, state)
    name = spec.buffers[0]
    wrong = {name: upd.buffers[name] + 1}
    with pytest.raises(RuntimeError, match="do not hold"):
        write_values(algo, res.payload.copy(), wrong, upd.buffers)
    with pytest.raises(RuntimeError, match="does not carry"):
        write_values(algo, res.payload.copy(), {"nope": upd.buffers[name]}, {"nope": upd.buffers[name]})
