import numpy as np

from fedmrn_mpi.training.schedule import assign_clients, sample_clients


def test_sampling_is_deterministic_sorted_and_varies_by_round():
    a = sample_clients(1234, 3, 100, 10)
    assert np.array_equal(a, sample_clients(1234, 3, 100, 10))
    assert np.array_equal(a, np.sort(a)) and len(set(a.tolist())) == 10
    assert not np.array_equal(a, sample_clients(1234, 4, 100, 10))
    assert not np.array_equal(a, sample_clients(1235, 3, 100, 10))


def test_lpt_assignment_covers_every_client_once_and_balances():
    rng = np.random.default_rng(0)
    sizes = rng.integers(50, 1000, size=1000)
    clients = sample_clients(7, 1, 1000, 50)
    for ranks in ([0], [1, 2], list(range(1, 9)), list(range(1, 60))):
        out = assign_clients(clients, sizes, ranks)
        flat = sorted(c for cs in out.values() for c in cs)
        assert flat == clients.tolist() and set(out) == set(ranks)
        loads = [sizes[cs].sum() if cs else 0 for cs in out.values()]
        if len(ranks) <= len(clients):
            assert max(loads) <= sum(loads) / len(ranks) + sizes.max()
    assert assign_clients(clients, sizes, [1, 2, 3]) == assign_clients(clients, sizes, [1, 2, 3])
