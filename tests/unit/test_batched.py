"""Many clients in one vectorised step (training.batched.train_clients_batched) against the sequential
train_client, for every algorithm of the registry.

How the comparison is made. The batched path runs the same per-client computation as the sequential one
(same `begin`, batch order, augmentation and materialize draws, SGD/Adam steps, BatchNorm statistics); only the
summation order inside vmapped (grouped) convolutions differs. In float32 those rounding differences (~1e-6 per
step) do not stay small over a round at the paper's settings: with N(0, 0.01^2) weights under BatchNorm the
effective step size is huge, and a 1e-6 perturbation that moves one ReLU or max-pool decision can change a
gradient by ~1 % (measured: one step, two parameter points 4e-6 apart, float64 gradients 1.4 % apart), so no
float32 tolerance tells rounding from a bug at lr 0.01. Hence three kinds of checks:

- float64 (model, state and transformed inputs), lr 0.01, every algorithm: rounding differences are ~1e-16,
  far below the float32 payload's resolution, so the uploads agree essentially bit for bit. Required: decoded
  updates within 1e-6 relative L2, for the whole model and per tensor; train losses within 1e-12 relative; at
  least 99.999 % of all payload bits equal (a mask bit of FedMRN/FedPM/FedBAT could only flip where a
  probability sits within ~1e-16 of its uniform draw; measured: every bit equal).
- float32 (the production dtype) at lr 1e-3, where the trajectories stay close: the whole model's decoded
  update within 1e-2 relative L2 (measured <= 3e-6, except EDEN at 1.3e-3: one flipped sign bit of a rotated
  coordinate moves its whole block), train losses within 1e-5, and at least 99.9 % of the code bits equal
  (payload without the trailing float32 tensors, whose last mantissa bits differ; measured >= 99.997 %). A
  FedMRN mask bit flips where its probability sits at the draw threshold; each flip moves the update by one
  noise value, ~2/sqrt(390k) of its norm.
- a group of one client runs exactly the sequential code: with clients whose batches never share a size, the
  batched function is bit-identical to the sequential one in float32.

Clients have unequal sizes (one with fewer batches and a short last batch of its own size), local_epochs 2.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

from fedmrn_mpi.algorithms import REGISTRY, make_algorithm, model_spec
from fedmrn_mpi.config import load_config
from fedmrn_mpi.data.augment import crop_flip
from fedmrn_mpi.models import build_model, global_state
from fedmrn_mpi.training import LocalTraining, train_client, train_clients_batched

CPU = torch.device("cpu")

# every algorithm of the registry, FedMRN with both masks, the error-feedback codecs with a prior residual
CASES = {
    "fedmrn-binary": ["algorithm.name=fedmrn", "algorithm.mask=binary", "algorithm.training=psm"],
    "fedmrn-signed": ["algorithm.name=fedmrn", "algorithm.mask=signed", "algorithm.training=psm"],
    "fedavg": ["algorithm.name=fedavg"],
    "signsgd-ef": ["algorithm.name=signsgd", "algorithm.error_feedback=true"],
    "qsgd": ["algorithm.name=qsgd"],
    "topk-ef": ["algorithm.name=topk", "algorithm.fraction=0.05", "algorithm.error_feedback=true"],
    "eden": ["algorithm.name=eden"],
    "fedpm": ["algorithm.name=fedpm"],
    "fedbat": ["algorithm.name=fedbat", "algorithm.rho=6"],  # 6 steps: 3 at full precision, 3 binarised
}

# batch 8: clients 0 and 2 have 3 batches per epoch (8, 8, 4: they share a group at every step, the short last
# one included); client 1 has fewer batches (8, 3) and a short last batch of its own size
SIZES = (20, 11, 20)


def test_cases_cover_the_registry():
    assert {load_config(None, o).algorithm.name for o in CASES.values()} == set(REGISTRY)


class World:
    """A CNN4, a configured algorithm, its initial global state, client data and the local-training settings."""

    def __init__(self, overrides, dtype=torch.float64, channels=1, size=16, sizes=SIZES, batch=8, epochs=2,
                 lr=0.01, augment=False, seed=0):
        self.cfg = load_config(None, list(overrides))
        self.model = build_model("cnn4", channels, size, 10, seed=0).to(dtype)
        self.spec = model_spec(self.model)
        self.algo = make_algorithm(self.cfg.algorithm.options, self.spec, self.cfg.seed)
        self.state = {k: v.detach().clone() for k, v in global_state(self.model).items()}
        g = torch.Generator().manual_seed(seed)
        self.data = [(torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8),
                      torch.randint(0, 10, (n,), generator=g)) for n in sizes]
        # uint8 -> normalised `dtype`, image by image (as data.readers.normalize_images, in any dtype)
        self.settings = LocalTraining(self.cfg.seed, lr, batch, epochs,
                                      transform=lambda x: x.to(dtype).div_(255.0).sub_(0.5).div_(0.25),
                                      augment=crop_flip if augment else None)

    def contexts(self, round_=3, first_id=5):
        ctxs = []
        for i, (x, _) in enumerate(self.data):
            ctx = self.settings.context(round_, first_id + i, len(x), CPU)
            # a prior error-feedback residual, so that encode reads and replaces a non-trivial state
            g = torch.Generator().manual_seed(100 + i)
            ctx.state = {n: 1e-3 * torch.randn(shape, generator=g)
                         for n, shape in self.algo.client_state_shapes().items()}
            ctxs.append(ctx)
        return ctxs

    def sequential(self):
        ctxs = self.contexts()
        return [train_client(self.model, self.algo, self.state, x, y, c, self.settings)
                for (x, y), c in zip(self.data, ctxs)], ctxs

    def batched(self):
        ctxs = self.contexts()
        return train_clients_batched(self.model, self.algo, self.state, self.data, ctxs, self.settings), ctxs

    def decoded(self, res):
        return self.algo.decode(memoryview(res.payload), res.seed, self.state, CPU)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.mean(np.unpackbits(a) == np.unpackbits(b))) if a.size else 1.0


def _codes(w: World, payload: np.ndarray) -> np.ndarray:
    """The payload without its trailing float32 unmasked tensors (every layout but FedAvg's ends with them):
    the masked tensors' codes (mask bits, sign bits, levels, indices, with their float32 scales). FedAvg sends
    only float32 values: nothing is left."""
    if w.algo.name == "fedavg":
        return payload[:0]
    return payload[: payload.size - 4 * w.spec.num_unmasked]


def _rel(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """||a - b|| / max(||a||, floor), in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / max(float(a.norm()), floor, 1e-300))


def _flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tensors.values()]) if tensors else torch.zeros(0)


def _compare(w: World, seq, bat, seq_ctxs, bat_ctxs, *, rel_tol, bits_min, loss_tol, per_tensor):
    """Same ids, seeds, weights and payload sizes; train losses within `loss_tol` (relative); at least
    `bits_min` of the code bits equal (see `_codes`; with `per_tensor`, of all payload bits); the decoded
    update within `rel_tol` in relative L2 for the whole model at once (all parameter deltas as one vector, all
    buffers as one vector, the per-client state as one vector) and, with `per_tensor`, for every tensor too;
    there a tensor whose update is tiny next to its weights (BN scales of ~1 that moved by ~1e-4: their float32
    values carry ~1e-7 absolute rounding) is judged against 1e-3 * ||w|| instead of ||Δ||."""
    assert [r.client_id for r in bat] == [r.client_id for r in seq] == [c.client_id for c in seq_ctxs]
    for a, b, ca, cb in zip(seq, bat, seq_ctxs, bat_ctxs):
        assert (a.seed, a.weight) == (b.seed, b.weight)
        assert a.payload.dtype == b.payload.dtype == np.uint8 and a.payload.shape == b.payload.shape
        if per_tensor:
            assert _bits_equal(a.payload, b.payload) >= bits_min
        else:
            assert _bits_equal(_codes(w, a.payload), _codes(w, b.payload)) >= bits_min
        assert abs(a.train_loss - b.train_loss) <= loss_tol * abs(a.train_loss)
        ua, ub = w.decoded(a), w.decoded(b)
        assert ua.deltas.keys() == ub.deltas.keys() and ua.buffers.keys() == ub.buffers.keys()
        assert ca.state.keys() == cb.state.keys()
        for da, db in ((ua.deltas, ub.deltas), (ua.buffers, ub.buffers), (ca.state, cb.state)):
            assert _rel(_flat(da), _flat(db)) <= rel_tol, a.client_id
            if per_tensor:
                for name in da:
                    floor = 1e-3 * float(w.state[name].double().norm()) if name in w.state else 0.0
                    assert _rel(da[name], db[name], floor) <= rel_tol, (a.client_id, name)


@pytest.mark.parametrize("case", list(CASES))
def test_batched_matches_sequential_in_float64(case):
    w = World(CASES[case])
    seq, seq_ctxs = w.sequential()
    bat, bat_ctxs = w.batched()
    _compare(w, seq, bat, seq_ctxs, bat_ctxs, rel_tol=1e-6, bits_min=1 - 1e-5, loss_tol=1e-12,
             per_tensor=True)
    # the error-feedback residual was read and replaced
    if w.algo.client_state_shapes():
        assert all(c.state and not torch.equal(c.state[n], d.state[n])
                   for c, d in zip(bat_ctxs, w.contexts()) for n in c.state)


@pytest.mark.parametrize("case", ["fedmrn-binary", "fedavg"])
def test_batched_matches_sequential_with_augmentation(case):
    """crop_flip on uint8 3x32x32 images: each client keeps its own "augment" generator."""
    w = World(CASES[case], channels=3, size=32, sizes=(12, 7, 12), augment=True)
    seq, seq_ctxs = w.sequential()
    bat, bat_ctxs = w.batched()
    _compare(w, seq, bat, seq_ctxs, bat_ctxs, rel_tol=1e-6, bits_min=1 - 1e-5, loss_tol=1e-12,
             per_tensor=True)
    plain = World(CASES[case], channels=3, size=32, sizes=(12, 7, 12), augment=False).batched()[0]
    assert all(abs(a.train_loss - b.train_loss) > 1e-9 for a, b in zip(bat, plain))


@pytest.mark.parametrize("case", ["fedmrn-binary", "fedmrn-signed", "fedavg", "fedpm", "eden"])
def test_batched_matches_sequential_in_float32(case):
    w = World(CASES[case], dtype=torch.float32, lr=1e-3)
    seq, seq_ctxs = w.sequential()
    bat, bat_ctxs = w.batched()
    _compare(w, seq, bat, seq_ctxs, bat_ctxs, rel_tol=1e-2, bits_min=0.999, loss_tol=1e-5,
             per_tensor=False)


def test_groups_of_one_client_are_bit_identical_to_sequential():
    """No two clients share a batch shape at any step: every step runs the sequential code."""
    w = World(CASES["fedmrn-signed"], dtype=torch.float32, sizes=(9, 6, 3), batch=8)
    seq, seq_ctxs = w.sequential()
    bat, bat_ctxs = w.batched()
    for a, b in zip(seq, bat):
        assert np.array_equal(a.payload, b.payload) and a.train_loss == b.train_loss


def test_one_client_is_bit_identical_to_train_client():
    w = World(CASES["fedavg"], dtype=torch.float32, sizes=(20,))
    (a,), _ = w.sequential()
    (b,), _ = w.batched()
    assert np.array_equal(a.payload, b.payload) and a.train_loss == b.train_loss


def test_poll_once_per_step_timer_phases_and_model_counters():
    w = World(CASES["fedavg"], dtype=torch.float32)
    polls, booked = [], []

    def timer(phase):
        booked.append(phase)
        return nullcontext()

    counters = lambda: [b.clone() for n, b in w.model.named_buffers() if not b.is_floating_point()]  # noqa: E731
    start = counters()
    settings = LocalTraining(w.settings.root_seed, w.settings.lr, w.settings.batch_size, w.settings.local_epochs,
                             transform=w.settings.transform, poll=lambda: polls.append(1))
    ctxs = w.contexts()
    train_clients_batched(w.model, w.algo, w.state, w.data, ctxs, settings, timer=timer)
    assert len(polls) == max(c.total_steps for c in ctxs)  # once per step, not per client
    assert booked == ["local_train"] + ["encode"] * len(ctxs)
    # BN's num_batches_tracked (not part of the state) advanced once per client and step, as sequentially
    total = sum(c.total_steps for c in ctxs)
    assert all(int(b - s) == total for b, s in zip(counters(), start))


def test_poll_may_abandon_the_round():
    w = World(CASES["fedavg"], dtype=torch.float32)

    def poll():
        raise KeyboardInterrupt

    settings = LocalTraining(w.settings.root_seed, w.settings.lr, 8, 1, transform=w.settings.transform, poll=poll)
    with pytest.raises(KeyboardInterrupt):
        train_clients_batched(w.model, w.algo, w.state, w.data, w.contexts(), settings)


def test_no_clients_and_mismatched_inputs():
    w = World(CASES["fedavg"], dtype=torch.float32)
    assert train_clients_batched(w.model, w.algo, w.state, [], [], w.settings) == []
    with pytest.raises(ValueError, match="client data sets"):
        train_clients_batched(w.model, w.algo, w.state, w.data, w.contexts()[:2], w.settings)
