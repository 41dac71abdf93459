"""The reproducibility check of `report`: do the compared runs differ in settings that decide bit-exact
results?"""

from __future__ import annotations

from collections.abc import Sequence

from ..results import REPRO_ATTRS, Run
from ..results.schema import UNKNOWN
from .table import display_names

REPRO_WARNING = ('warning: these runs differ in settings that decide bit-exact results '
                 '(see docs/design.md, "Reproducibility"): ')


def repro_differences(runs: Sequence[Run]) -> list[tuple[str, list[tuple[str, str]]]]:
    """For each REPRO_ATTRS attribute on which two runs have different known values: (attribute,
    [(display name, value), ...] for every run). A missing attribute reads "unknown" and alone is no
    difference."""
    names = display_names(runs)
    diffs = []
    for key in REPRO_ATTRS:
        values = [r.setting(key) for r in runs]
        if len(set(values) - {UNKNOWN}) > 1:
            diffs.append((key, list(zip(names, values))))
    return diffs


def precision_warning(runs: Sequence[Run]) -> str | None:
    """A warning when the compared runs trained in different precisions (their accuracy and speed then differ
    for that reason too), or None."""
    if len({r.precision for r in runs}) < 2:
        return None
    return ("warning: these runs differ in precision (docs/precision.md): "
            + ", ".join(f"{n}={r.precision}" for n, r in zip(display_names(runs), runs)))


def repro_warning(runs: Sequence[Run]) -> str | None:
    """The warning line for `runs`, or None when they agree (or fewer than two runs are compared)."""
    if len(runs) < 2:
        return None
    diffs = repro_differences(runs)
    if not diffs:
        return None
    return REPRO_WARNING + "; ".join(f"{key}: " + ", ".join(f"{n}={v}" for n, v in pairs) for key, pairs in diffs)
