"""Seed groups of `report`: runs of one config that differ only in `seed` (and in where their results go), with
mean, sample standard deviation and n of their final accuracy, best accuracy, rounds and uplink to a target.

The rules (docs/design.md, "Seed groups"):

- Configs are compared as recorded: each file's `config_yaml` parsed and flattened to dotted keys, then every key
  but `FREE_KEYS` (`seed`, `run_name`, `results_dir`) must be present in both with equal values. A key recorded by
  one file and absent from the other (files of different versions) is a difference: the reader cannot know what
  the older version did (a default that is new today need not be what the older code did), so such runs are never
  merged, and the report says so in a note.
- The world size is not part of the config and does not split a group (results do not depend on it).
- A run joins a group only if its config records an integer seed and it has at least one evaluated round. A group
  needs two or more distinct seeds. Where several runs have the same seed (the same config run again, e.g. at
  another world size), the first on the command line counts and the others stay single runs, with a note: n
  counts distinct seeds.
- Statistics: mean and sample standard deviation (ddof=1) over the runs that have the value; none for n = 1.
  Rounds and uplink to a target are taken over the runs that reached it (`reached` k/n alongside).
"""

from __future__ import annotations

import os.path
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..results import Run

# the config keys that may differ inside a group: the seed and where the results go
FREE_KEYS = ("seed", "run_name", "results_dir")
_SEP = "-_.+ "


def flat_config(cfg: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as {dotted key: value}; a non-empty mapping is a section, anything else a value."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flat_config(v, key + "."))
        else:
            out[key] = v
    return out


def _compared(run: Run) -> dict[str, str]:
    """The run's recorded config without FREE_KEYS, values as their repr (1, 1.0 and True stay distinct)."""
    return {k: repr(v) for k, v in flat_config(run.config).items() if k not in FREE_KEYS}


@dataclass(frozen=True)
class Stat:
    """Per-run values of one quantity (group order, runs without the value left out) and their summary."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation (ddof=1); None for fewer than two values."""
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else None


def rounds_to_target(run: Run, target: float) -> tuple[int, int] | None:
    """(first evaluated round with test accuracy >= target, uplink bytes of all clients up to it), or None."""
    hit = np.flatnonzero(np.isfinite(run.test_accuracy) & (run.test_accuracy >= target))
    if hit.size == 0:
        return None
    i = int(hit[0])
    return int(run.rounds[i]), int(run.uplink_bytes[: i + 1].sum())


@dataclass
class SeedGroup:
    """Runs of one config with distinct seeds, by seed."""

    name: str
    runs: list[Run]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int]:
        return [int(r.seed) for r in self.runs]  # type: ignore[arg-type]

    @property
    def algorithm_label(self) -> str:
        return self.runs[0].algorithm_label

    @property
    def final_accuracy(self) -> Stat:
        return Stat(tuple(e[1] for e in (r.final_eval for r in self.runs) if e))

    @property
    def final_rounds(self) -> list[int]:
        """The round of each run's final evaluation."""
        return [e[0] for e in (r.final_eval for r in self.runs) if e]

    @property
    def best_accuracy(self) -> Stat:
        return Stat(tuple(e[1] for e in (r.best_eval for r in self.runs) if e))

    def to_target(self, target: float) -> tuple[Stat, Stat]:
        """(rounds, uplink bytes) to `target` over the runs that reached it; their n is how many did."""
        hits = [h for h in (rounds_to_target(r, target) for r in self.runs) if h]
        return Stat(tuple(float(h[0]) for h in hits)), Stat(tuple(float(h[1]) for h in hits))

    def accuracy_curve(self, uplink: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, mean, min, max) of the test accuracy over the rounds every run evaluated; x is the round, or with
        `uplink` the runs' mean cumulative uplink bytes (all clients) at that round."""
        per_run = []
        for r in self.runs:
            ok = np.isfinite(r.test_accuracy)
            up = np.cumsum(r.uplink_bytes, dtype=np.float64)
            per_run.append({int(k): (float(a), float(u)) for k, a, u, o in zip(r.rounds, r.test_accuracy, up, ok)
                            if o})
        common = sorted(set.intersection(*(set(d) for d in per_run)))
        acc = np.array([[d[k][0] for k in common] for d in per_run]).reshape(len(per_run), len(common))
        x = (np.array([[d[k][1] for k in common] for d in per_run]).reshape(acc.shape).mean(axis=0) if uplink
             else np.array(common, dtype=np.float64))
        return x, acc.mean(axis=0), acc.min(axis=0), acc.max(axis=0)


@dataclass
class SeedGrouping:
    """The groups (in the order of their first run on the command line; each group's runs by seed) and the notes on
    runs not merged."""

    groups: list[SeedGroup]
    notes: list[str]

    def group_of(self, run: Run) -> SeedGroup | None:
        for g in self.groups:
            if any(m is run for m in g.runs):
                return g
        return None


def _strip_seed(name: str, seed: int) -> str:
    """`name` without its seed token (the last one found): `x-s1`, `x_seed1`, `x-seed=1`, `s1-x`, `x-s1-y`; the
    config generators name a config at seed S `<name>-sS` (scripts/config_grid.py)."""
    pat = re.compile(rf"(^|[{re.escape(_SEP)}])(?:seed[-_=]?|s){seed}(?=$|[{re.escape(_SEP)}])", re.IGNORECASE)
    found = list(pat.finditer(name))
    if not found:
        return name
    m = found[-1]
    return (name[: m.start()] + name[m.end():]).strip(_SEP) or name


def _common_name(runs: Sequence[Run], of: Any) -> str | None:
    names = {_strip_seed(of(r), int(r.seed)) for r in runs}  # type: ignore[arg-type]
    return names.pop() if len(names) == 1 else None


def _group_name(runs: Sequence[Run]) -> str:
    """The members' common name without the seed, else their common file stem without it, else the longest
    common prefix of their names, else the first name."""
    name = _common_name(runs, lambda r: r.name) or _common_name(runs, lambda r: r.path.stem)
    if name:
        return name
    prefix = os.path.commonprefix([r.name for r in runs]).rstrip(_SEP)
    return prefix or runs[0].name


def seed_groups(runs: Sequence[Run], names: Sequence[str] | None = None) -> SeedGrouping:
    """Group `runs` (see the module's rules). `names`: the runs' display names, used in the notes."""
    names = list(names) if names is not None else [r.name for r in runs]
    label = {id(r): n for r, n in zip(runs, names)}
    buckets: dict[tuple[tuple[str, str], ...], list[Run]] = {}
    for r in runs:
        if r.seed is None or r.final_eval is None:
            continue
        buckets.setdefault(tuple(sorted(_compared(r).items())), []).append(r)
    groups: list[SeedGroup] = []
    notes: list[str] = []
    for members in buckets.values():
        first: dict[int, Run] = {}
        for r in members:
            first.setdefault(int(r.seed), r)  # type: ignore[arg-type]
        if len(first) < 2:
            continue
        kept = [first[seed] for seed in sorted(first)]
        groups.append(SeedGroup(_group_name(kept), kept))
        for r in members:
            if first[int(r.seed)] is not r:  # type: ignore[arg-type]
                notes.append(f"{label[id(r)]} not counted in its group: seed {r.seed} again, as in "
                             f"{label[id(first[int(r.seed)])]} (n counts distinct seeds)")  # type: ignore[arg-type]
    order = {id(r): i for i, r in enumerate(runs)}
    groups.sort(key=lambda g: min(order[id(r)] for r in g.runs))
    _unique_names(groups)
    notes += _version_notes(list(buckets.values()), label)
    return SeedGrouping(groups, notes)


def _unique_names(groups: list[SeedGroup]) -> None:
    """Clashing group names: each group's common file stem, then `#2`, `#3`, ... on the later ones."""
    def clashes() -> set[str]:
        seen = [g.name for g in groups]
        return {n for n in seen if seen.count(n) > 1}

    for g in groups:
        if g.name in clashes():
            g.name = _common_name(g.runs, lambda r: r.path.stem) or g.name
    dup = clashes()
    count: dict[str, int] = {}
    for g in groups:
        if g.name in dup:
            count[g.name] = count.get(g.name, 0) + 1
            if count[g.name] > 1:
                g.name = f"{g.name} #{count[g.name]}"


def _version_notes(buckets: list[list[Run]], label: dict[int, str]) -> list[str]:
    """A note for runs that would be seeds of one config if the keys only some of them record were ignored:
    files of different versions, never merged."""
    configs = [_compared(b[0]) for b in buckets]
    parent = list(range(len(buckets)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(buckets)):
        for j in range(i + 1, len(buckets)):
            a, b = configs[i], configs[j]
            if a.keys() != b.keys() and all(a[k] == b[k] for k in a.keys() & b.keys()):
                parent[root(j)] = root(i)
    notes = []
    for i in range(len(buckets)):
        part = [j for j in range(len(buckets)) if root(j) == i]
        if len(part) < 2:
            continue
        runs = [r for j in part for r in buckets[j]]
        if len({r.seed for r in runs}) < 2:
            continue
        keys = set().union(*(configs[j].keys() for j in part)) - set.intersection(*(set(configs[j]) for j in part))
        notes.append("not merged: " + ", ".join(f"{label[id(r)]} (seed {r.seed})" for r in runs)
                     + " differ only in seed and in config keys some of their files do not record (written by "
                       "different versions): " + ", ".join(sorted(keys)))
    return notes
