"""PNG plots of the `report` command. matplotlib is imported inside the functions, so that `status` and a
table-only report never load it."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..results import PHASES, Run, format_bytes
from .partition_display import partition_file_names, partition_summary
from .scaling import ScalingGroup, scaling_groups
from .seeds import SeedGroup, SeedGrouping, seed_groups
from .table import display_names

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_LINESTYLES = ("-", "--", "-.", ":")


def _figure(width: float = 8.0, height: float = 5.0) -> Any:
    """A Figure on the Agg canvas: headless, and without pyplot's global state (no backend switch in the
    caller's process, no figures left open)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _style(i: int) -> dict[str, Any]:
    """Marker and line style for the i-th run: identical runs (same seed and config at another world size)
    give identical curves, and distinct styles keep every one of them visible."""
    return {"marker": _MARKERS[i % len(_MARKERS)], "linestyle": _LINESTYLES[i % len(_LINESTYLES)], "ms": 7,
            "mfc": "none", "mew": 1.5}


def _byte_tick(x: float, _pos: Any = None) -> str:
    return format_bytes(x).replace(".00 ", " ").replace(".0 ", " ")


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _series(runs: Sequence[Run], names: Sequence[str], seeds: SeedGrouping) -> list[tuple[str, Run | SeedGroup]]:
    """What the accuracy plots draw, in command-line order: each seed group (where its first run is) and each
    run outside a group."""
    out: list[tuple[str, Run | SeedGroup]] = []
    for r, name in zip(runs, names):
        g = seeds.group_of(r)
        if g is None:
            out.append((name, r))
        elif not any(item is g for _, item in out):
            out.append((f"{g.name}: mean of {g.n} seeds, band min-max", g))
    return out


def _plot_accuracy(ax: Any, runs: Sequence[Run], names: Sequence[str], x_of: Callable[[Run], np.ndarray],
                   positive_x: bool = False, seeds: SeedGrouping | None = None, uplink: bool = False) -> bool:
    """One line per run: test accuracy (%) at its evaluated rounds against `x_of(run)`; one mean line with a
    min-max band per seed group (x: `SeedGroup.accuracy_curve`). True if any drawn."""
    drawn = False
    series = _series(runs, names, seeds if seeds is not None else seed_groups(runs, names))
    for i, ((name, item), c) in enumerate(zip(series, _colors(len(series)))):
        if isinstance(item, SeedGroup):
            x, mean, lo, hi = item.accuracy_curve(uplink=uplink)
            keep = x > 0 if positive_x else np.ones(x.shape, dtype=bool)
            if keep.any():
                ax.fill_between(x[keep], 100 * lo[keep], 100 * hi[keep], color=c, alpha=0.2, linewidth=0)
                ax.plot(x[keep], 100 * mean[keep], color=c, label=name, **_style(i))
                drawn = True
            continue
        r = item
        x = np.asarray(x_of(r))
        idx = np.flatnonzero(np.isfinite(r.test_accuracy))
        if positive_x:
            idx = idx[x[idx] > 0]
        if idx.size:
            ax.plot(x[idx], 100 * r.test_accuracy[idx], color=c, label=name, **_style(i))
            drawn = True
    return drawn


def plot_accuracy_vs_round(runs: Sequence[Run], names: Sequence[str], out: Path,
                           seeds: SeedGrouping | None = None) -> None:
    """Test accuracy at every evaluated round, one line per run (per seed group: its mean, band min-max)."""
    fig = _figure()
    ax = fig.add_subplot()
    if _plot_accuracy(ax, runs, names, lambda r: r.rounds, seeds=seeds):
        ax.legend(fontsize="small")
    else:
        _no_data(ax, "no evaluated rounds")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(title="Test accuracy vs round", xlabel="round", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    fig.savefig(out)


def plot_accuracy_vs_uplink(runs: Sequence[Run], names: Sequence[str], out: Path,
                            seeds: SeedGrouping | None = None) -> None:
    """Test accuracy against the cumulative uplink bytes (all clients) at each evaluated round (per seed group:
    its mean accuracy, band min-max, at its runs' mean cumulative uplink)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = _figure()
    ax = fig.add_subplot()
    # a log axis cannot show zero bytes: such points are skipped
    if _plot_accuracy(ax, runs, names, lambda r: np.cumsum(r.uplink_bytes), positive_x=True, seeds=seeds,
                      uplink=True):
        # powers of two read as round binary sizes (4 MiB, 8 MiB, ...), matching the table's units
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(LogLocator(base=2, numticks=12))
        ax.xaxis.set_major_formatter(FuncFormatter(_byte_tick))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize="small")
    else:
        _no_data(ax, "no evaluated rounds")
    ax.set(title="Test accuracy vs cumulative uplink (all clients, headers included)",
           xlabel="cumulative uplink bytes (log scale)", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    fig.savefig(out)


def plot_phase_times(runs: Sequence[Run], names: Sequence[str], out: Path) -> None:
    """Horizontal stacked bars: mean seconds per round in each phase, with the mean wall time marked."""
    from matplotlib import colormaps

    # horizontal bars keep long run names readable
    fig = _figure(9.0, max(3.0, 1.6 + 0.55 * len(runs)))
    ax = fig.add_subplot()
    phases = list(runs[0].phases) if runs else list(PHASES)
    cmap = colormaps["tab10"]
    y = np.arange(len(runs))
    left = np.zeros(len(runs))
    means = [r.mean_phase_seconds if r.mean_phase_seconds is not None and list(r.phases) == phases
             else np.zeros(len(phases)) for r in runs]
    for j, ph in enumerate(phases):
        width = np.array([m[j] for m in means])
        ax.barh(y, width, left=left, color=cmap(j), label=ph, height=0.6)
        left += width
    walls = [r.seconds_per_round for r in runs]
    wy = [i for i, w in enumerate(walls) if w is not None]
    if wy:
        ax.plot([walls[i] for i in wy], wy, linestyle="none", marker="D", ms=7, mfc="white", mec="black",
                mew=1.5, label="mean wall s/round", zorder=3)
    ax.set_yticks(y, [n if r.rounds_done else f"{n} (no rounds)" for n, r in zip(names, runs)])
    ax.invert_yaxis()  # first file on top, as in the table
    ax.set(title="Mean seconds per round by phase", xlabel="seconds per round")
    ax.grid(alpha=0.3, axis="x")
    handles, labels = ax.get_legend_handles_labels()
    order = [i for i, lab in enumerate(labels) if lab in phases] + [i for i, lab in enumerate(labels)
                                                                       if lab not in phases]
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize="small", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    # the round's critical path (as the runner records it); only evaluation overlaps the clients' training
    fig.text(0.01, 0.005, "local_train/encode: slowest client rank; other phases: rank 0; idle: the rest of the "
             "round. Rank 0 evaluates while clients train, so a bar can exceed the wall time by that much.",
             fontsize="x-small", color="0.3",
             ha="left", va="bottom")
    fig.get_layout_engine().set(h_pad=0.12)
    fig.savefig(out)


def plot_scaling(groups: Sequence[ScalingGroup], out: Path) -> None:
    """Speed-up and parallel efficiency vs number of ranks, one line per config group."""
    fig = _figure(11.0, 4.8)
    ax_s, ax_e = fig.subplots(1, 2)
    ticks = sorted({p for g in groups for p in g.world_sizes})
    for g, c in zip(groups, _colors(len(groups))):
        ax_s.plot(g.world_sizes, g.speedup, marker="o", color=c, label=g.label)
        ax_e.plot(g.world_sizes, [100 * e for e in g.efficiency], marker="o", color=c, label=g.label)
        ideal = [p / g.world_sizes[0] for p in g.world_sizes]
        ax_s.plot(g.world_sizes, ideal, linestyle="--", color=c, alpha=0.4)
    ax_s.plot([], [], linestyle="--", color="0.5", label="ideal (linear)")
    ax_e.axhline(100, linestyle="--", color="0.5", label="ideal (100%)")
    for ax in (ax_s, ax_e):
        ax.set_xticks(ticks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    ax_s.set(title="Speed-up (vs smallest world size)", xlabel="MPI ranks", ylabel="speed-up (x)")
    ax_e.set(title="Parallel efficiency", xlabel="MPI ranks", ylabel="efficiency (%)")
    ax_e.set_ylim(0, max(110.0, 105 * max(max(g.efficiency) for g in groups)))
    fig.suptitle("Scaling by mean wall seconds per round (same config, different world sizes)")
    fig.savefig(out)


_CELL_TEXT_MAX = 20   # counts written into the cells up to this many clients and classes
_ALL_TICKS_MAX = 40   # a tick per client (class) up to this many, else a few integer ticks


def _index_ticks(axis: Any, n: int) -> None:
    from matplotlib.ticker import MaxNLocator

    if n <= _ALL_TICKS_MAX:
        axis.set_ticks(range(n))
    else:
        axis.set_major_locator(MaxNLocator(nbins=12, integer=True))


def plot_partition(run: Run, name: str, out: Path) -> None:
    """Heat map of the run's label counts: clients (by id) across, classes down, samples per cell by colour;
    white cells hold no sample. The figure size grows with clients and classes up to 14 x 9 inches."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    counts = np.asarray(run.label_counts, dtype=np.int64)
    clients, classes = counts.shape
    width = min(14.0, max(6.5, 2.5 + 0.35 * clients))
    fig = _figure(width, min(9.0, max(3.5, 2.0 + 0.35 * classes)))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="white")
    vmax = max(1, int(counts.max(initial=0)))
    im = ax.imshow(np.ma.masked_equal(counts.T, 0), aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
    if clients <= _CELL_TEXT_MAX and classes <= _CELL_TEXT_MAX:
        size = "small" if max(clients, classes) <= 10 else "xx-small"
        for c, k in zip(*np.nonzero(counts)):
            v = int(counts[c, k])
            ax.text(c, k, str(v), ha="center", va="center", fontsize=size,
                    color="white" if im.norm(v) < 0.6 else "black")
    _index_ticks(ax.xaxis, clients)
    _index_ticks(ax.yaxis, classes)
    bar = fig.colorbar(im, ax=ax, label="samples (white: none)")
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    s = partition_summary(run)
    title = f"Partition of {name}: samples per client and class"
    if s is not None:
        median = f"{s.median_size:.{0 if s.median_size.is_integer() else 1}f}"
        spread = (f"{s.min_size} samples each" if s.min_size == s.max_size
                  else f"{s.min_size}-{s.max_size} samples (median {median})")
        title += f"\n{s.clients} clients, {spread}, mean {s.mean_classes_per_client:.2f}/{s.classes} classes"
    chars = int(10 * width)  # about what fits across the figure at the title's font size
    ax.set(title="\n".join(w for line in title.split("\n") for w in textwrap.wrap(line, chars)), xlabel="client",
           ylabel="class")
    fig.savefig(out)


def write_plots(runs: Sequence[Run], out_dir: Path, seeds: SeedGrouping | None = None) -> list[Path]:
    """Write every plot that applies into `out_dir` (created if missing): the fixed ones (the accuracy plots
    draw each seed group of `seeds`, default `seed_groups(runs)`, as its mean with a min-max band), scaling.png
    for runs that differ only in world size, and partition_<run name>.png for each run whose file records its
    partition. Returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = display_names(runs)
    seeds = seeds if seeds is not None else seed_groups(runs, names)
    written: list[Path] = []
    plot_accuracy_vs_round(runs, names, out_dir / "accuracy_vs_round.png", seeds)
    plot_accuracy_vs_uplink(runs, names, out_dir / "accuracy_vs_uplink_bytes.png", seeds)
    plot_phase_times(runs, names, out_dir / "phase_times.png")
    written += [out_dir / f for f in ("accuracy_vs_round.png", "accuracy_vs_uplink_bytes.png", "phase_times.png")]
    groups = scaling_groups(runs)
    if groups:
        plot_scaling(groups, out_dir / "scaling.png")
        written.append(out_dir / "scaling.png")
    for r, name, fname in zip(runs, names, partition_file_names(names)):
        if r.label_counts is not None and r.label_counts.size:  # files without the partition get none
            plot_partition(r, name, out_dir / fname)
            written.append(out_dir / fname)
    return written
