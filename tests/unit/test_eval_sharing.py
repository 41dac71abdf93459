"""Evaluation shared out over the ranks (run/eval_sharing.py): any split of the test blocks gives the same numbers
as one rank evaluating everything, and the split follows the ranks' measured speed."""

import numpy as np
import pytest
import torch

from fedmrn_mpi.config import load_config
from fedmrn_mpi.run.eval_sharing import Balancer, Shard, split_blocks
from fedmrn_mpi.run.setup import build_setup
from fedmrn_mpi.training.block_scores import block_size_for, evaluate, evaluate_blocks, num_blocks

from conftest import ROOT


class _OneRank:
    """The transport facts build_setup() reads, for one process."""
    rank, size, local_rank, local_size, is_server, runs_clients, client_ranks = 0, 1, 0, 1, True, True, [0]


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["data.synthetic_test=333"])
    return build_setup(cfg, _OneRank())


def _random_state(su, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: (t + 0.05 * torch.randn(t.shape, generator=g)) if t.is_floating_point() else t
            for n, t in su.state.items()}


@pytest.mark.parametrize("bounds", [[0, 4], [0, 0, 4], [0, 1, 2, 3, 4], [0, 3, 3, 4], [0, 4, 4, 4]])
def test_any_split_of_the_blocks_gives_the_numbers_of_one_rank(setup, bounds):
    su = setup
    state = _random_state(su)
    shard = Shard(su, block_size=100)
    assert shard.total == 4  # 333 samples: three blocks of 100 and one of 33
    table = np.stack([shard.evaluate(state, 1, bounds[r], bounds[r + 1]) for r in range(len(bounds) - 1)])
    x, y = su.test_data(0, su.num_test)
    assert shard.combine(table) == evaluate(su.model, state, x, y, 100, su.eval_transform)


def test_blocks_are_independent_forward_passes(setup):
    su = setup
    state = _random_state(su, 1)
    x, y = su.test_data(0, su.num_test)
    loss, correct = evaluate_blocks(su.model, state, x, y, 100, su.eval_transform)
    tail_loss, tail_correct = evaluate_blocks(su.model, state, x[300:], y[300:], 100, su.eval_transform)
    assert loss[3] == tail_loss[0] and correct[3] == tail_correct[0]
    acc, mean = evaluate(su.model, state, x, y, 100, su.eval_transform)
    assert acc == correct.sum() / 333 and 0 <= acc <= 1 and np.isfinite(mean)


def test_block_size_defaults_per_device():
    assert block_size_for(0, torch.device("cpu")) == 100 and block_size_for(0, torch.device("cuda")) == 1000
    assert block_size_for(250, torch.device("cpu")) == 250
    assert num_blocks(10_000, 100) == 100 and num_blocks(1, 100) == 1 and num_blocks(101, 100) == 2


@pytest.mark.parametrize("total, loads, per_block", [
    (100, [0, 0, 0], [1, 1, 1]), (7, [0, 5, 5], [1, 1, 1]), (100, [0, 50, 50], [1, 2, 1]), (3, [0, 0, 0, 0, 0], [1] * 5),
    (0, [0, 0], [1, 1]), (10, [100, 0], [1, 1])])
def test_split_covers_every_block_once_in_order(total, loads, per_block):
    b = split_blocks(total, np.array(loads, float), np.array(per_block, float))
    assert b[0] == 0 and b[-1] == total and len(b) == len(loads) + 1 and np.all(np.diff(b) >= 0)


def test_split_gives_busy_and_slow_ranks_fewer_blocks():
    even = np.diff(split_blocks(99, np.zeros(3), np.ones(3)))
    assert sorted(even) == [33, 33, 33]
    busy = np.diff(split_blocks(100, np.array([0.0, 30.0, 30.0]), np.ones(3)))
    assert busy[0] > busy[1] and busy[0] + busy[1] + busy[2] == 100 and abs(busy[1] - busy[2]) <= 1
    # the ranks finish together: rank 0 takes 30 more blocks than each busy rank
    assert busy[0] - busy[1] in (29, 30, 31)
    slow = np.diff(split_blocks(90, np.zeros(2), np.array([1.0, 2.0])))
    assert list(slow) == [60, 30]


def test_balancer_learns_the_ranks_speeds():
    bal = Balancer(world=3, total_blocks=100, block_size=100)
    first = np.diff(bal.plan(np.array([0.0, 600, 600]), np.array([False, True, True])))
    assert first.sum() == 100 and first[0] >= first[1]  # before any measurement: a forward-pass guess
    # rank 2 trained as fast but evaluates 3x slower than rank 1
    bal.measured(np.array([0, 40, 70, 100]), np.array([4.0, 3.0, 9.0]), np.array([0, 600, 600]),
                 np.array([0.0, 6.0, 6.0]))
    later = np.diff(bal.plan(np.array([0.0, 600, 600]), np.array([False, True, True])))
    assert later.sum() == 100 and later[2] < later[1] <= later[0]
