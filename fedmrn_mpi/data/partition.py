"""Split a training set over federated clients.

Every partitioner takes the training labels, the number of clients and an explicit integer seed and
returns one sorted int64 array of sample indices per client; no index is used twice and no client is
left empty (a request that cannot satisfy that raises ``ValueError``).

Randomness: ``numpy.random.Generator(numpy.random.PCG64(seed))``, consumed only through
``Generator.random()`` (uniform doubles). Permutations are the stable argsort of uniform draws and the
Dirichlet draws use the gamma sampler below, built on those same uniforms, because NumPy keeps the
PCG64 bit stream and its doubles fixed across releases but reserves the right to change
``shuffle``/``dirichlet``; this way partitions depend only on the seed and the labels.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = [
    "PARTITION_SCHEMES",
    "iid",
    "dirichlet",
    "classes",
    "partition",
    "partition_stats",
]

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "classes")

#: Dirichlet re-draws allowed before giving up on ``min_size``.
DIRICHLET_MAX_TRIES = 100


# --------------------------------------------------------------------------------------------------
# helpers


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"partition seed must be a non-negative integer, got {seed!r}")
    return np.random.Generator(np.random.PCG64(int(seed)))


def _labels(labels: Any) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be non-negative, found {int(y.min())}")
    return y


def _check_clients(num_clients: int, n: int) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if num_clients > n:
        raise ValueError(f"cannot give {num_clients} clients at least one sample each: only {n} training samples")


def _permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """A uniformly random permutation of 0..n-1 (ties among doubles are practically impossible; the
    stable sort makes even those deterministic)."""
    return np.argsort(rng.random(n), kind="stable").astype(np.int64)


def _finish(parts: list[list[np.ndarray]] | list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for p in parts:
        arr = np.concatenate(p) if isinstance(p, list) else p
        out.append(np.sort(arr.astype(np.int64, copy=False)))
    return out


def _std_normal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Box-Muller standard normals from two uniforms each (one output per pair kept: simpler to
    reason about than caching the second value)."""
    u1 = 1.0 - rng.random(n)  # in (0, 1], so the log is finite
    u2 = rng.random(n)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _log_gamma_variates(rng: np.random.Generator, shape: float, n: int) -> np.ndarray:
    """log of n Gamma(shape, 1) variates (Marsaglia & Tsang 2000).

    For shape < 1 it uses Gamma(a) = Gamma(a + 1) * U^(1/a), kept in log space because U^(1/a)
    underflows to 0 for small a (alpha = 0.01 is a common extreme setting).
    """
    a = shape + 1.0 if shape < 1.0 else shape
    d = a - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    out = np.empty(n)
    pending = np.arange(n)
    while pending.size:
        m = pending.size
        x = _std_normal(rng, m)
        u = 1.0 - rng.random(m)
        v = (1.0 + c * x) ** 3
        ok = v > 0
        safe_v = np.where(ok, v, 1.0)
        ok &= np.log(u) < 0.5 * x * x + d - d * safe_v + d * np.log(safe_v)
        out[pending[ok]] = np.log(d * safe_v[ok])
        pending = pending[~ok]
    if shape < 1.0:
        out += np.log(1.0 - rng.random(n)) / shape
    return out


def _dirichlet_row(rng: np.random.Generator, alpha: float, k: int) -> np.ndarray:
    """One draw from the symmetric Dirichlet(alpha, ..., alpha) over k entries."""
    g = _log_gamma_variates(rng, alpha, k)
    p = np.exp(g - g.max())
    return p / p.sum()


# --------------------------------------------------------------------------------------------------
# partitioners


def iid(labels: Any, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle all samples and cut them into ``num_clients`` parts whose sizes differ by at most one."""
    y = _labels(labels)
    _check_clients(num_clients, y.size)
    perm = _permutation(_rng(seed), y.size)
    return _finish(np.array_split(perm, int(num_clients)))


def dirichlet(
    labels: Any,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int | None = None,
    max_tries: int = DIRICHLET_MAX_TRIES,
) -> list[np.ndarray]:
    """Dirichlet label skew, the scheme of NIID-Bench (Li et al., 2022) that FedMRN's experiments use.

    For each class in label order: shuffle its samples, draw client proportions from
    Dirichlet(alpha, ..., alpha), zero the share of clients that already hold N / num_clients samples
    (keeps client sizes from running away), and cut the class at the cumulative proportions. The whole
    draw is repeated, continuing the same random stream, until every client holds at least
    ``min_size`` samples; after ``max_tries`` draws a ValueError says so. Smaller alpha = more skew.

    ``min_size`` defaults to ``min(10, max(1, N // (2 * num_clients)))``: NIID-Bench's 10 on full-size
    datasets, and something attainable on tiny test sets.
    """
    y = _labels(labels)
    n = y.size
    _check_clients(num_clients, n)
    if not (isinstance(alpha, (int, float, np.integer, np.floating)) and not isinstance(alpha, bool) and np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"dirichlet alpha must be a positive number, got {alpha!r}")
    if min_size is None:
        min_size = min(10, max(1, n // (2 * num_clients)))
    if min_size < 1:
        raise ValueError(f"dirichlet min_size must be >= 1 (no client may be empty), got {min_size}")
    if min_size * num_clients > n:
        raise ValueError(
            f"dirichlet: {num_clients} clients x min_size {min_size} = {min_size * num_clients} samples "
            f"needed, only {n} available"
        )
    rng = _rng(seed)
    class_ids = np.unique(y)
    by_class = [np.flatnonzero(y == c) for c in class_ids]
    cap = n / num_clients
    smallest = 0
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx in by_class:
            idx = idx[_permutation(rng, idx.size)]
            p = _dirichlet_row(rng, float(alpha), num_clients)
            p = np.where(sizes < cap, p, 0.0)
            total = p.sum()
            # Every uncapped share can underflow to 0 at tiny alpha; fall back to an even split among them.
            p = p / total if total > 0 else (sizes < cap) / np.count_nonzero(sizes < cap)
            cuts = (np.cumsum(p) * idx.size).astype(np.int64)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
                sizes[k] += chunk.size
        smallest = int(sizes.min())
        if smallest >= min_size:
            return _finish(parts)
    raise ValueError(
        f"dirichlet partition: no draw in {max_tries} gave each of {num_clients} clients at least "
        f"{min_size} samples (alpha={alpha}, {n} samples, smallest client in the last draw: {smallest}); "
        "use a larger alpha, fewer clients or a smaller min_size"
    )


def classes(labels: Any, num_clients: int, classes_per_client: int, seed: int) -> list[np.ndarray]:
    """Each client holds exactly ``classes_per_client`` distinct classes (pathological non-IID).

    Classes are dealt client by client to the least-used classes so far, ties broken at random (a
    shuffled round robin): every class ends up with the same number of holders, give or take one.
    Each class's shuffled samples are then split as evenly as possible among its holders. Raises
    ValueError if a class has fewer samples than holders, since a holder would then lack that class.
    """
    y = _labels(labels)
    _check_clients(num_clients, y.size)
    class_ids = np.unique(y)
    k = classes_per_client
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= class_ids.size:
        raise ValueError(
            f"classes_per_client must be an integer in 1..{class_ids.size} (the classes present), got {k!r}"
        )
    rng = _rng(seed)
    usage = np.zeros(class_ids.size, dtype=np.int64)
    holders: list[list[int]] = [[] for _ in range(class_ids.size)]
    for client in range(num_clients):
        # lexsort: last key is primary, so least-used first, random order among equals.
        chosen = np.lexsort((rng.random(class_ids.size), usage))[:k]
        usage[chosen] += 1
        for c in chosen:
            holders[int(c)].append(client)

    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for ci, clients in enumerate(holders):
        if not clients:
            continue
        idx = np.flatnonzero(y == class_ids[ci])
        if idx.size < len(clients):
            raise ValueError(
                f"classes partition: class {int(class_ids[ci])} has {idx.size} samples but {len(clients)} "
                "clients hold it; use fewer clients or fewer classes_per_client"
            )
        idx = idx[_permutation(rng, idx.size)]
        for client, chunk in zip(clients, np.array_split(idx, len(clients))):
            parts[client].append(chunk)
    return _finish(parts)


_SCHEMES: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": lambda y, n, seed, alpha, cpc: iid(y, n, seed),
    "dirichlet": lambda y, n, seed, alpha, cpc: dirichlet(y, n, alpha, seed),
    "classes": lambda y, n, seed, alpha, cpc: classes(y, n, cpc, seed),
}


def partition(
    labels: Any,
    scheme: str,
    num_clients: int,
    seed: int,
    alpha: float = 0.3,
    classes_per_client: int = 3,
) -> list[np.ndarray]:
    """Dispatch to :func:`iid`, :func:`dirichlet` (uses ``alpha``) or :func:`classes` (uses
    ``classes_per_client``)."""
    fn = _SCHEMES.get(scheme)
    if fn is None:
        raise ValueError(f"unknown partition scheme {scheme!r}; allowed: {'|'.join(PARTITION_SCHEMES)}")
    return fn(labels, num_clients, seed, alpha, classes_per_client)


def partition_stats(parts: list[np.ndarray], labels: Any, num_classes: int) -> np.ndarray:
    """int64 (num_clients, num_classes) matrix of per-client label counts."""
    y = _labels(labels)
    if y.size and y.max() >= num_classes:
        raise ValueError(f"label {int(y.max())} out of range for num_classes={num_classes}")
    out = np.zeros((len(parts), num_classes), dtype=np.int64)
    for k, p in enumerate(parts):
        out[k] = np.bincount(y[np.asarray(p, dtype=np.int64)], minlength=num_classes)
    return out
