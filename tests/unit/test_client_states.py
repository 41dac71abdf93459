"""The per-client state store: serialisation, staging until the round completes, checkpoint round trip."""

import numpy as np
import pytest
import torch

from fedmrn_mpi.comm import Transport
from fedmrn_mpi.run.client_states import ClientStates

SHAPES = {"a.weight": (2, 3), "b.weight": (4,)}


def _arrays(seed):
    g = np.random.default_rng(seed)
    return {n: g.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}


def test_pack_unpack_round_trip_with_absent_clients():
    st = ClientStates(SHAPES)
    assert st.nbytes_per_client == 4 * (6 + 4)
    got = st.unpack(st.pack({7: _arrays(1), 3: None, 11: _arrays(2)}))
    assert list(got) == [7, 3, 11] and got[3] is None
    for cid, seed in ((7, 1), (11, 2)):
        for n in SHAPES:
            assert np.array_equal(got[cid][n], _arrays(seed)[n])


def test_new_states_count_only_when_the_round_completes():
    st, t = ClientStates(SHAPES), Transport(comm=None)
    assert st.send(t, {0: [5, 6]}) == {}  # first participation: nothing to hand over
    st.collect(t, {5: {n: torch.from_numpy(a) for n, a in _arrays(3).items()}})
    assert st.store == {}  # a checkpoint taken now still holds the previous round's states
    st.commit()
    held = st.send(t, {0: [5, 6]})
    assert list(held) == [5] and torch.equal(held[5]["a.weight"], torch.from_numpy(_arrays(3)["a.weight"]))


def test_checkpoint_round_trip():
    st = ClientStates(SHAPES)
    st.store = {2: _arrays(4), 9: _arrays(5)}
    saved = st.as_tensors()
    assert set(saved) == {"2", "9"} and all(isinstance(t, torch.Tensor) for t in saved["2"].values())
    again = ClientStates(SHAPES)
    again.load(saved)
    assert again.store.keys() == st.store.keys()
    assert all(np.array_equal(again.store[c][n], st.store[c][n]) for c in st.store for n in SHAPES)


@pytest.mark.parametrize("name", ["signsgd", "topk"])
def test_error_feedback_state_is_the_masked_tensors(name):
    from fedmrn_mpi.algorithms import make_algorithm, model_spec
    from fedmrn_mpi.config import load_config
    from fedmrn_mpi.models import build_model
    spec = model_spec(build_model("cnn4", 1, 28, 10, seed=0))
    cfg = load_config(None, [f"algorithm.name={name}", "algorithm.error_feedback=true"])
    algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    st = ClientStates(algo.client_state_shapes())
    assert st.nbytes_per_client == 4 * 389_920  # 1.56 MB per client: 1.56 GB on rank 0 at 1,000 clients
    plain = make_algorithm(load_config(None, [f"algorithm.name={name}"]).algorithm.options, spec, cfg.seed)
    assert plain.client_state_shapes() == {}
