"""Scaling groups: runs of one config at different world sizes, with speed-up and efficiency."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..results import Run


@dataclass
class ScalingGroup:
    """Runs with the same config_yaml at different world sizes."""

    label: str
    world_sizes: list[int]
    seconds_per_round: list[float]  # mean over the group's runs at that world size

    @property
    def speedup(self) -> list[float]:
        """Relative to the smallest world size, by mean seconds per round."""
        return [self.seconds_per_round[0] / s for s in self.seconds_per_round]

    @property
    def efficiency(self) -> list[float]:
        """speed-up / (world size / smallest world size)."""
        p0 = self.world_sizes[0]
        return [sp * p0 / p for sp, p in zip(self.speedup, self.world_sizes)]


def scaling_groups(runs: Sequence[Run]) -> list[ScalingGroup]:
    """Group runs whose config_yaml is identical (world size is not part of the config); keep the groups
    that cover two or more world sizes."""
    by_cfg: dict[str, list[Run]] = {}
    for r in runs:
        if r.rounds_done and r.world_size and r.config_yaml:
            by_cfg.setdefault(r.config_yaml, []).append(r)
    groups: list[ScalingGroup] = []
    for members in by_cfg.values():
        sizes = sorted({r.world_size for r in members if r.world_size})
        if len(sizes) < 2:
            continue
        spr = [float(np.mean([r.seconds_per_round for r in members if r.world_size == p])) for p in sizes]
        groups.append(ScalingGroup(f"{members[0].name} ({members[0].algorithm_label})", sizes, spr))
    labels = [g.label for g in groups]
    for i, g in enumerate(groups):
        if labels.count(g.label) > 1:
            g.label = f"{g.label} #{labels[:i + 1].count(g.label)}"
    return groups
