"""Text tables of the `report` command: the summary of every run, the seed groups, the partition and the scaling
table."""

from __future__ import annotations

from collections.abc import Sequence

from ..results import Run, format_bytes
from .partition_display import partition_summary
from .scaling import ScalingGroup
from .seeds import SeedGrouping, Stat, rounds_to_target

SUMMARY_HEADERS = ("name", "algorithm", "ranks", "rounds", "final acc", "best acc", "uplink", "downlink",
                   "up bits/param", "s/round")

SUMMARY_NOTES = (
    "rounds: done/planned.  final acc: last evaluated round (@r).  uplink, downlink: totals over the rounds done.",
    "up bits/param: 8 x mean upload message per client per round (the whole message, header included) /",
    "  every value of the model state (num_masked_params + num_unmasked_values); float32 FedAvg is about 32.",
    "s/round: mean wall seconds per round.",
)


def display_names(runs: Sequence[Run]) -> list[str]:
    """Run names, falling back to file stems (then paths) where two runs would share a label."""
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [r.name if names.count(r.name) == 1 else r.path.stem for r in runs]
    if len(set(names)) < len(names):
        names = [n if names.count(n) == 1 else str(r.path) for n, r in zip(names, runs)]
    return names


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> str:
    """Aligned text columns: those in `left` left-aligned, the others right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def summary_row(run: Run, name: str) -> list[str]:
    """One table row for `run`."""
    planned = "?" if run.planned_rounds is None else str(run.planned_rounds)
    final, best = run.final_eval, run.best_eval
    bits, spr = run.uplink_bits_per_param, run.seconds_per_round
    if run.rounds_done == 0:
        return [name, run.algorithm_label, str(run.world_size or "?"), f"0/{planned}", "no rounds", "--", "--",
                "--", "--", "--"]
    return [
        name, run.algorithm_label, str(run.world_size or "?"), f"{run.rounds_done}/{planned}",
        f"{_pct(final[1])} @{final[0]}" if final else "--",
        _pct(best[1]) if best else "--",
        format_bytes(run.total_uplink_bytes), format_bytes(run.total_downlink_bytes),
        f"{bits:.3f}" if bits is not None else "--",
        f"{spr:.2f}" if spr is not None else "--",
    ]


def summary_table(runs: Sequence[Run]) -> str:
    """The report's main table plus its footnotes."""
    names = display_names(runs)
    rows = [summary_row(r, n) for r, n in zip(runs, names)]
    return render_table(SUMMARY_HEADERS, rows, left=(0, 1)) + "\n\n" + "\n".join(SUMMARY_NOTES)


PARTITION_HEADERS = ("name", "clients", "classes", "min", "median", "max", "classes/client")


def _median(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def partition_row(run: Run, name: str) -> list[str]:
    """One row of the partition table; "--" where the file does not record it."""
    s = partition_summary(run)
    if s is None:
        return [name] + ["--"] * (len(PARTITION_HEADERS) - 1)
    return [name, str(s.clients), "--" if s.classes is None else str(s.classes), str(s.min_size),
            _median(s.median_size), str(s.max_size),
            "--" if s.mean_classes_per_client is None else f"{s.mean_classes_per_client:.2f}"]


def partition_table(runs: Sequence[Run]) -> str:
    """Per run: the clients' sizes (samples) and the mean number of classes per client; one line if no file
    records its partition."""
    rows = [partition_row(r, n) for r, n in zip(runs, display_names(runs))]
    if all(row[1] == "--" for row in rows):
        return "Partition: not recorded in these files (no partition/sizes or partition/label_counts)."
    notes = ["min, median, max: samples per client.  classes/client: classes with at least one sample, mean over "
             "clients."]
    if any(row[1] == "--" for row in rows):
        notes.append("--: not recorded in the file.")
    return ("Partition: the clients' training data.\n" + render_table(PARTITION_HEADERS, rows, left=(0,))
            + "\n" + "\n".join(notes))


def target_table(runs: Sequence[Run], target: float) -> str:
    """Per run: the round that first reached `target` test accuracy and the uplink spent to get there."""
    rows = []
    for r, name in zip(runs, display_names(runs)):
        got = rounds_to_target(r, target)
        best = r.best_eval
        rows.append([name, r.algorithm_label, str(got[0]) if got else "not reached",
                     format_bytes(got[1]) if got else "--", _pct(best[1]) if best else "--"])
    return (f"Rounds to {_pct(target)} test accuracy (evaluated rounds only) and the uplink of all clients up to "
            f"that round.\n" + render_table(("name", "algorithm", "round", "uplink to target", "best acc"), rows,
                                             left=(0, 1)))


def scaling_table(groups: Sequence[ScalingGroup]) -> str:
    """Speed-up and efficiency per group and world size."""
    rows = [[g.label, str(p), f"{s:.2f}", f"{sp:.2f}x", f"{100 * e:.0f}%"]
            for g in groups for p, s, sp, e in zip(g.world_sizes, g.seconds_per_round, g.speedup, g.efficiency)]
    return ("Scaling: same config, different world sizes; relative to the smallest world size, by mean s/round.\n"
            + render_table(("config", "ranks", "s/round", "speed-up", "efficiency"), rows, left=(0,)))


SEED_NOTES = (
    "sd: sample standard deviation (ddof=1) over the group's runs, accuracies in percentage points; n = 1 shows "
    "no sd.",
)


def _acc_stat(s: Stat) -> str:
    if s.mean is None:
        return "--"
    return f"{100 * s.mean:.2f}%" if s.sd is None else f"{100 * s.mean:.2f} ± {100 * s.sd:.2f}%"


def _rounds_stat(s: Stat) -> str:
    if s.mean is None:
        return "--"
    return f"{s.mean:.0f}" if s.sd is None else f"{s.mean:.1f} ± {s.sd:.1f}"


def _bytes_stat(s: Stat) -> str:
    if s.mean is None:
        return "--"
    return format_bytes(s.mean) if s.sd is None else f"{format_bytes(s.mean)} ± {format_bytes(s.sd)}"


def _at_rounds(rounds: Sequence[int]) -> str:
    lo, hi = min(rounds), max(rounds)
    return f"@{lo}" if lo == hi else f"@{lo}-{hi}"


def seed_table(grouping: SeedGrouping, runs: Sequence[Run], target: float | None = None) -> str:
    """Per seed group: n, its seeds, mean ± sd of the final and best accuracy and, with `target`, how many of
    its runs reached it and mean ± sd of their rounds and uplink to it; then the members and the notes."""
    headers = ["group", "algorithm", "n", "seeds", "final acc", "best acc"]
    if target is not None:
        headers += ["reached", f"round to {_pct(target)}", f"uplink to {_pct(target)}"]
    rows = []
    for g in grouping.groups:
        final = g.final_accuracy
        row = [g.name, g.algorithm_label, str(g.n), ",".join(map(str, g.seeds)),
               f"{_acc_stat(final)} {_at_rounds(g.final_rounds)}", _acc_stat(g.best_accuracy)]
        if target is not None:
            rounds, up = g.to_target(target)
            row += [f"{rounds.n}/{g.n}", _rounds_stat(rounds), _bytes_stat(up)]
        rows.append(row)
    names = {id(r): n for r, n in zip(runs, display_names(runs))}
    notes = list(SEED_NOTES)
    if target is not None:
        notes.append("round, uplink to target: over the runs that reached it (reached: how many of n did; -- when "
                     "none did).")
    notes += [f"{g.name}: " + ", ".join(f"{names[id(r)]} (seed {s})" for r, s in zip(g.runs, g.seeds))
              for g in grouping.groups]
    notes += [f"note: {n}" for n in grouping.notes]
    head = ("Seeds: runs whose configs differ only in seed (and run_name, results_dir) form a group; "
            "mean ± sd over its runs.\n")
    if not grouping.groups:
        return "\n".join(f"note: {n}" for n in grouping.notes)
    return head + render_table(headers, rows, left=(0, 1, 3)) + "\n" + "\n".join(notes)
