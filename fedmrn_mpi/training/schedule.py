"""Which clients train in a round and which rank trains each (deterministic from the root seed)."""

from __future__ import annotations

import heapq

import numpy as np

from ..rng.seeds import derive_seed


def sample_clients(root_seed: int, round_: int, num_clients: int, per_round: int) -> np.ndarray:
    """The sorted ids of the clients sampled in `round_` (uniform without replacement)."""
    rng = np.random.Generator(np.random.PCG64(derive_seed(root_seed, "sample", round_)))
    return np.sort(rng.choice(num_clients, size=per_round, replace=False)).astype(np.int64)


def assign_clients(clients: np.ndarray, sizes: np.ndarray, ranks: list[int]) -> dict[int, list[int]]:
    """Longest-processing-time assignment of clients to ranks by data size; ties go to the lower id/rank.

    Returns rank -> sorted client ids (every rank present, possibly empty).
    """
    out: dict[int, list[int]] = {r: [] for r in ranks}
    heap = [(0, r) for r in ranks]
    heapq.heapify(heap)
    for c in sorted(clients.tolist(), key=lambda c: (-int(sizes[c]), c)):
        load, r = heapq.heappop(heap)
        out[r].append(c)
        heapq.heappush(heap, (load + int(sizes[c]), r))
    for r in out:
        out[r].sort()
    return out
