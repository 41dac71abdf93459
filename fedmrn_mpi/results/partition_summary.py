"""The clients' data partition in numbers (samples per client, classes per client), from the arrays every
results file and prepared data file store; shared by `report` and `fedmrn-mpi data check`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PartitionSummary:
    """Samples per client (min, median, max over clients) and how many classes a client holds."""

    clients: int
    classes: int | None  # None where there are no label counts
    min_size: int
    median_size: float
    max_size: int
    mean_classes_per_client: float | None  # classes with at least one sample, averaged over clients


def summarize_partition(sizes: np.ndarray | None, counts: np.ndarray | None) -> PartitionSummary | None:
    """The summary of per-client `sizes` and clients x classes label `counts` (sizes default to the counts'
    row sums; counts that do not match the sizes are ignored); None when there are no clients."""
    if sizes is None and counts is not None:
        sizes = counts.sum(axis=1)
    if sizes is None or sizes.size == 0:
        return None
    has_counts = counts is not None and counts.ndim == 2 and counts.shape[0] == sizes.shape[0]
    return PartitionSummary(
        clients=int(sizes.size), classes=int(counts.shape[1]) if has_counts else None,
        min_size=int(sizes.min()), median_size=float(np.median(sizes)), max_size=int(sizes.max()),
        mean_classes_per_client=float(np.count_nonzero(counts > 0, axis=1).mean()) if has_counts else None,
    )
