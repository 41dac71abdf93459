"""The clients' data partition as `report` shows it: summary numbers for the table and the heat-map file names.
Free of matplotlib (the heat map itself is drawn in plots.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..results import Run
from ..results.partition_summary import PartitionSummary, summarize_partition

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 100


def partition_summary(run: Run) -> PartitionSummary | None:
    """The run's partition in numbers, or None where the file records none or no clients.

    Sizes come from partition/sizes, else from the label counts' row sums."""
    return summarize_partition(run.partition_sizes, run.label_counts)


def partition_file_names(names: Sequence[str]) -> list[str]:
    """`partition_<name>.png` per run name: characters other than letters, digits, `.`, `_`, `-` become `_`,
    and names that would clash (also ignoring case) get `_2`, `_3`, ... appended."""
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        stem = _UNSAFE.sub("_", name).strip("._-")[:_MAX_STEM] or "run"
        candidate, k = stem, 2
        while candidate.lower() in seen:
            candidate, k = f"{stem}_{k}", k + 1
        seen.add(candidate.lower())
        out.append(f"partition_{candidate}.png")
    return out
