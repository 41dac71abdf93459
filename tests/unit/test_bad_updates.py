"""on_bad_update: a client whose training diverged (NaN/inf loss or update) ends the job or is left out of its
round, with the weights renormalised over the others, the same on every rank."""

import math

import numpy as np
import pytest
import torch

from fedmrn_mpi.algorithms import REGISTRY, BadUpdateError, aggregate_round, make_algorithm
from fedmrn_mpi.comm.wire import WireError, decode_messages, encode_message
from fedmrn_mpi.config import load_config
from fedmrn_mpi.run.client_states import ClientStates
from fedmrn_mpi.run.faults import bad_update_fault, poison_state
from fedmrn_mpi.training import LocalTraining, train_client

from algo_helpers import aggregate, algo_setup

CPU = torch.device("cpu")
ROUND = 3


def _client(algo, model, state, cid, local, poisoned=False, samples=48):
    g = torch.Generator().manual_seed(cid)
    x, y = torch.randn(samples, 1, 28, 28, generator=g), torch.randint(0, 10, (samples,), generator=g)
    ctx = local.context(ROUND, cid, samples, CPU)
    return train_client(model, algo, poison_state(state) if poisoned else state, x, y, ctx, local)


def _messages(algo, results, ranks):
    out = []
    for res, rank in zip(results, ranks):
        raw = encode_message(algo.algo_id, ROUND, res.client_id, res.seed, res.weight, res.train_loss, res.payload)
        (m,) = decode_messages(raw, rank=rank, round_=ROUND, algo_id=algo.algo_id)
        out.append((rank, m))
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def trained(request):
    """Three clients of one algorithm; client 5 starts from a NaN model (a diverged client)."""
    cfg, model, spec, algo, state, _ = algo_setup(f"algorithm.name={request.param}", "batch_size=16")
    local = LocalTraining(cfg.seed, cfg.lr, 16, 1)
    results = {cid: _client(algo, model, state, cid, local, poisoned=cid == 5) for cid in (2, 5, 9)}
    return cfg, algo, state, results


def test_a_diverged_client_is_detected_by_every_algorithm(trained) -> None:
    """Its encode does not raise on the client, and the server finds the NaN (loss, values or a scale)."""
    cfg, algo, state, results = trained
    for cid in (2, 5, 9):
        _, skipped = aggregate_round(algo, _messages(algo, [results[cid]], [1]), state, 1.0, ROUND, CPU, "skip")
        assert list(skipped) == ([5] if cid == 5 else []), (cid, skipped)


def test_abort_names_client_rank_and_round(trained) -> None:
    cfg, algo, state, results = trained
    msgs = _messages(algo, [results[c] for c in (2, 5, 9)], [1, 2, 1])
    with pytest.raises(BadUpdateError, match=r"round 3: the update of client 5 \(trained on rank 2\) is not finite"):
        aggregate_round(algo, msgs, state, 1.0, ROUND, CPU, "abort")
    with pytest.raises(BadUpdateError):
        aggregate(algo, msgs, state, 1.0, ROUND, CPU)  # abort is the default


def test_skip_renormalises_over_the_rest_whatever_the_ranks(trained) -> None:
    cfg, algo, state, results = trained
    good = aggregate(algo, _messages(algo, [results[2], results[9]], [1, 1]), state, 1.0, ROUND, CPU)
    for ranks in ([1, 2, 3], [3, 1, 1], [1, 1, 1]):  # which rank trained which client does not matter
        new, skipped = aggregate_round(algo, _messages(algo, [results[c] for c in (9, 5, 2)], ranks), state, 1.0,
                                       ROUND, CPU, "skip")
        assert list(skipped) == [5]
        assert _same(new, good)
        assert all(bool(torch.isfinite(t).all()) for t in new.values())


def test_every_client_skipped_keeps_the_model(trained) -> None:
    cfg, algo, state, results = trained
    new, skipped = aggregate_round(algo, _messages(algo, [results[5]], [1]), state, 1.0, ROUND, CPU, "skip")
    assert list(skipped) == [5] and _same(new, state)


def test_an_infinite_loss_alone_is_a_bad_update() -> None:
    cfg, model, spec, algo, state, _ = algo_setup("algorithm.name=fedavg", "batch_size=16")
    local = LocalTraining(cfg.seed, cfg.lr, 16, 1)
    res = _client(algo, model, state, 4, local)
    res.train_loss = math.inf
    new, skipped = aggregate_round(algo, _messages(algo, [res], [1]), state, 1.0, ROUND, CPU, "skip")
    assert skipped == {4: "training loss inf"} and _same(new, state)


def test_an_infinite_weight_is_a_wire_error() -> None:
    cfg, model, spec, algo, state, _ = algo_setup("algorithm.name=fedavg", "batch_size=16")
    res = _client(algo, model, state, 4, LocalTraining(cfg.seed, cfg.lr, 16, 1))
    res.weight = math.inf
    with pytest.raises(WireError, match="client 4, round 3: weight inf"):
        aggregate(algo, _messages(algo, [res], [1]), state, 1.0, ROUND, CPU)


@pytest.mark.filterwarnings(  # Triton < 3.7's interpreter under NumPy < 2.4, on every launch (fedmrn_mpi.compat)
    "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning:triton.runtime.interpreter")
def test_fused_fedmrn_path_skips_like_the_reference() -> None:
    """FedMRN's fused decode-and-sum (Triton, interpreted on the CPU here) drops a skipped client's bits."""
    pytest.importorskip("triton")
    cfg, model, spec, ref, state, _ = algo_setup("algorithm.name=fedmrn", "batch_size=16")
    fast = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    ref.kernels, fast.kernels = "reference", "triton"
    local = LocalTraining(cfg.seed, cfg.lr, 16, 1)
    results = [_client(ref, model, state, cid, local, poisoned=cid == 5, samples=16) for cid in (2, 5, 9)]
    msgs = _messages(ref, results, [1, 2, 1])
    new_ref, sk_ref = aggregate_round(ref, msgs, state, 1.0, ROUND, CPU, "skip")
    new_fast, sk_fast = aggregate_round(fast, msgs, state, 1.0, ROUND, CPU, "skip")
    assert list(sk_ref) == list(sk_fast) == [5]
    for name in spec.names:  # fused sums equal the reference's to float32 rounding (see test_triton_kernels)
        torch.testing.assert_close(new_fast[name], new_ref[name], rtol=1e-6, atol=1e-9)


def test_skipped_clients_keep_their_previous_state() -> None:
    cs = ClientStates({"r": (2,)})
    cs.store = {1: {"r": np.zeros(2, np.float32)}, 2: {"r": np.zeros(2, np.float32)}}
    cs.staged = {1: {"r": np.ones(2, np.float32)}, 2: {"r": np.full(2, np.nan, np.float32)}}
    cs.commit({2: "training loss nan"})
    assert cs.store[1]["r"].tolist() == [1, 1] and cs.store[2]["r"].tolist() == [0, 0]


def test_fault_spec_poisons_by_rank_round_and_client(monkeypatch) -> None:
    monkeypatch.setenv("FEDMRN_MPI_INJECT_FAULT", "2:3:nan,*:4:inf-loss:7,1:2:raise")
    assert bad_update_fault(2, 3, 11) == "nan" and bad_update_fault(1, 3, 11) is None
    assert bad_update_fault(1, 4, 7) == "inf-loss" and bad_update_fault(3, 4, 7) == "inf-loss"
    assert bad_update_fault(1, 4, 8) is None and bad_update_fault(1, 2, 7) is None


def test_config_policy_key() -> None:
    assert load_config(None, []).on_bad_update == "abort"
    assert load_config(None, ["on_bad_update=skip"]).on_bad_update == "skip"
    with pytest.raises(Exception, match="on_bad_update.*abort|skip"):
        load_config(None, ["on_bad_update=ignore"])
