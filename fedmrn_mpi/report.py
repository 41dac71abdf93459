"""`fedmrn-mpi report A.h5 [B.h5 ...] [-o DIR]`: a summary table of results files and PNG plots (DESIGN §3.4).

`load_run` reads one results file (finished, or still being written in SWMR mode) into a `Run`; `status.py`
reuses it. Plotting imports matplotlib lazily so that `status` and a table-only report stay light.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from .progress import format_bytes

EXIT_ERROR = 2

PHASES_DEFAULT = ("local_train", "encode", "gather", "decode_aggregate", "broadcast", "evaluate", "idle")

# per-round datasets read by load_run; the writer appends them one after another, so a reader of a live file
# can briefly see them at different lengths (all are cut to the shortest)
_ROUND_SERIES = ("round", "test_accuracy", "test_loss", "train_loss", "uplink_bytes", "downlink_bytes",
                 "wall_seconds")

_OPEN_RETRIES = 10
_OPEN_RETRY_SLEEP = 0.2


class ResultsFileError(Exception):
    """A results file that cannot be read; the message names the file."""


@dataclass
class Run:
    """One results file: identity, per-round series and derived summaries."""

    path: Path
    run_name: str | None
    algorithm: str
    mask: str | None
    world_size: int | None
    planned_rounds: int | None
    config_yaml: str
    finished: bool
    final_model_sha256: str | None
    total_seconds: float | None
    mtime: float
    rounds: np.ndarray
    test_accuracy: np.ndarray
    test_loss: np.ndarray
    train_loss: np.ndarray
    uplink_bytes: np.ndarray
    downlink_bytes: np.ndarray
    wall_seconds: np.ndarray
    phase_seconds: np.ndarray  # rounds x phases
    phases: list[str]
    client_uplink_bytes: np.ndarray | None  # rounds x clients_per_round: each upload message, header included
    clients_per_round: int | None
    num_values: int | None  # masked params + unmasked values: every value of the model state
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """run_name from the config, else the file stem."""
        return self.run_name or self.path.stem

    @property
    def algorithm_label(self) -> str:
        """`fedmrn/binary`, `fedavg`, ..."""
        return f"{self.algorithm}/{self.mask}" if self.algorithm == "fedmrn" and self.mask else self.algorithm

    @property
    def rounds_done(self) -> int:
        return int(self.rounds.size)

    @property
    def last_round(self) -> int | None:
        return int(self.rounds[-1]) if self.rounds.size else None

    def _evaluated(self) -> np.ndarray:
        return np.flatnonzero(np.isfinite(self.test_accuracy))

    @property
    def final_eval(self) -> tuple[int, float, float] | None:
        """(round, accuracy, loss) of the last evaluated round, or None."""
        idx = self._evaluated()
        if idx.size == 0:
            return None
        i = int(idx[-1])
        return int(self.rounds[i]), float(self.test_accuracy[i]), float(self.test_loss[i])

    @property
    def best_eval(self) -> tuple[int, float] | None:
        """(round, accuracy) of the best evaluated round, or None."""
        idx = self._evaluated()
        if idx.size == 0:
            return None
        i = int(idx[np.argmax(self.test_accuracy[idx])])
        return int(self.rounds[i]), float(self.test_accuracy[i])

    @property
    def total_uplink_bytes(self) -> int:
        return int(self.uplink_bytes.sum())

    @property
    def total_downlink_bytes(self) -> int:
        return int(self.downlink_bytes.sum())

    @property
    def mean_client_uplink_bytes(self) -> float | None:
        """Mean size of one client's upload message (header included) over all rounds done."""
        if self.client_uplink_bytes is not None and self.client_uplink_bytes.size:
            return float(self.client_uplink_bytes.mean())
        if self.rounds_done and self.clients_per_round:
            return float(self.uplink_bytes.sum()) / (self.rounds_done * self.clients_per_round)
        return None

    @property
    def uplink_bits_per_param(self) -> float | None:
        """8 x mean upload message per client per round (whole message, header included) / model values."""
        mean = self.mean_client_uplink_bytes
        if mean is None or not self.num_values:
            return None
        return 8.0 * mean / self.num_values

    @property
    def seconds_per_round(self) -> float | None:
        """Mean wall seconds per round."""
        w = self.wall_seconds[np.isfinite(self.wall_seconds)]
        return float(w.mean()) if w.size else None

    @property
    def mean_phase_seconds(self) -> np.ndarray | None:
        """Mean seconds per round of each phase (columns as `phases`)."""
        return self.phase_seconds.mean(axis=0) if self.phase_seconds.shape[0] else None


# ---------------------------------------------------------------------------------------------------- loading

def _attr_str(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _attr_int(attrs: h5py.AttributeManager, key: str) -> int | None:
    return int(attrs[key]) if key in attrs else None


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _has_hdf5_signature(path: Path) -> bool:
    """True if the HDF5 signature is at offset 0, 512, 1024, 2048, ... (after an optional user block).

    Read directly rather than with h5py.is_hdf5, which opens the file and so can be refused by a writer's lock."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset + len(_HDF5_SIGNATURE) <= size:
            fh.seek(offset)
            if fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else 2 * offset
    return False


def _open(path: Path) -> h5py.File:
    """Open for reading, also while a job writes it (SWMR).

    When the writer finalises it closes the SWMR session and reopens the file normally for a moment; HDF5's
    file lock then refuses readers, so retry briefly before giving up."""
    last: Exception | None = None
    for attempt in range(_OPEN_RETRIES):
        try:
            return h5py.File(path, "r", swmr=True)
        except OSError as exc:
            last = exc
            if "lock" not in str(exc).lower():
                break
            time.sleep(_OPEN_RETRY_SLEEP)
    try:  # a file not written with libver="latest" may refuse SWMR reading but open normally
        return h5py.File(path, "r")
    except OSError:
        raise ResultsFileError(f"{path}: cannot open the HDF5 file: {last}") from last


def _read(ds: h5py.Dataset) -> np.ndarray:
    ds.refresh()  # a live SWMR file grows between reads; no-op on a finished one
    return ds[()]


def _config(text: str) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(text) if text else {}
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read one results file (finished or still being written). Raises ResultsFileError naming the file."""
    p = Path(path)
    if not p.exists():
        raise ResultsFileError(f"{p}: no such file")
    if p.is_dir():
        raise ResultsFileError(f"{p}: is a directory, not a results file")
    try:
        is_h5 = _has_hdf5_signature(p)
    except OSError as exc:
        raise ResultsFileError(f"{p}: cannot read: {exc}") from exc
    if not is_h5:
        raise ResultsFileError(f"{p}: not an HDF5 file")
    mtime = p.stat().st_mtime
    with _open(p) as f:
        if "rounds/round" not in f:
            raise ResultsFileError(f"{p}: not a fedmrn_mpi results file (no rounds/round dataset)")
        attrs = {k: f.attrs[k] for k in f.attrs}
        g = f["rounds"]
        series = {k: _read(g[k]) for k in _ROUND_SERIES if k in g}
        if "phase_seconds" in g:
            ph = _read(g["phase_seconds"])
            phases = [_attr_str(x) for x in g["phase_seconds"].attrs.get("phases", PHASES_DEFAULT)]
        else:
            ph, phases = None, list(PHASES_DEFAULT)
        cub = _read(f["clients/uplink_bytes"]) if "clients/uplink_bytes" in f else None
        n = min(len(a) for a in [*series.values(), *(x for x in (ph, cub) if x is not None)])
        world = _attr_int(f.attrs, "world_size")
        if world is None and "ranks/phase_seconds" in f:
            world = int(f["ranks/phase_seconds"].shape[1])

    def col(key: str, dtype: Any) -> np.ndarray:
        v = series.get(key)
        if v is None:  # optional in older files: NaN for measurements, 0 for counts
            return np.full(n, np.nan) if np.dtype(dtype).kind == "f" else np.zeros(n, dtype=dtype)
        return np.asarray(v[:n], dtype=dtype)

    cfg_text = _attr_str(attrs.get("config_yaml", ""))
    cfg = _config(cfg_text)
    alg_cfg = cfg.get("algorithm") if isinstance(cfg.get("algorithm"), dict) else {}
    algorithm = _attr_str(attrs["algorithm"]) if "algorithm" in attrs else str(alg_cfg.get("name", "?"))
    planned = cfg.get("rounds")
    masked, unmasked = attrs.get("num_masked_params"), attrs.get("num_unmasked_values")
    cpr = cub.shape[1] if cub is not None and cub.ndim == 2 else cfg.get("clients_per_round")
    digest = _attr_str(attrs["final_model_sha256"]) if "final_model_sha256" in attrs else None
    return Run(
        path=p, run_name=str(cfg["run_name"]) if cfg.get("run_name") else None, algorithm=algorithm,
        mask=str(alg_cfg["mask"]) if alg_cfg.get("mask") else None, world_size=world,
        planned_rounds=int(planned) if isinstance(planned, int) else None, config_yaml=cfg_text,
        finished=digest is not None, final_model_sha256=digest,
        total_seconds=float(attrs["total_seconds"]) if "total_seconds" in attrs else None, mtime=mtime,
        rounds=col("round", np.int64), test_accuracy=col("test_accuracy", np.float64),
        test_loss=col("test_loss", np.float64), train_loss=col("train_loss", np.float64),
        uplink_bytes=col("uplink_bytes", np.int64), downlink_bytes=col("downlink_bytes", np.int64),
        wall_seconds=col("wall_seconds", np.float64),
        phase_seconds=np.zeros((n, len(phases))) if ph is None else np.asarray(ph[:n], dtype=np.float64),
        phases=phases, client_uplink_bytes=None if cub is None else np.asarray(cub[:n], dtype=np.int64),
        clients_per_round=int(cpr) if isinstance(cpr, (int, np.integer)) else None,
        num_values=int(masked) + int(unmasked) if masked is not None and unmasked is not None else None,
        attrs=attrs,
    )


def load_runs(paths: Sequence[str | os.PathLike[str]]) -> list[Run]:
    """Load every file; the first unreadable one raises ResultsFileError."""
    return [load_run(p) for p in paths]


# ------------------------------------------------------------------------------------------------- formatting

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


SUMMARY_HEADERS = ("name", "algorithm", "ranks", "rounds", "final acc", "best acc", "uplink", "downlink",
                   "up bits/param", "s/round")

SUMMARY_NOTES = (
    "rounds: done/planned.  final acc: last evaluated round (@r).  uplink, downlink: totals over the rounds done.",
    "up bits/param: 8 x mean upload message per client per round (the whole message, header included) /",
    "  every value of the model state (num_masked_params + num_unmasked_values); float32 FedAvg is about 32.",
    "s/round: mean wall seconds per round.",
)


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


# ----------------------------------------------------------------------------------------------------- scaling

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


def scaling_table(groups: Sequence[ScalingGroup]) -> str:
    """Speed-up and efficiency per group and world size."""
    rows = [[g.label, str(p), f"{s:.2f}", f"{sp:.2f}x", f"{100 * e:.0f}%"]
            for g in groups for p, s, sp, e in zip(g.world_sizes, g.seconds_per_round, g.speedup, g.efficiency)]
    return ("Scaling: same config, different world sizes; relative to the smallest world size, by mean s/round.\n"
            + render_table(("config", "ranks", "s/round", "speed-up", "efficiency"), rows, left=(0,)))


# ----------------------------------------------------------------------------------------------------- plots

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


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_LINESTYLES = ("-", "--", "-.", ":")


def _style(i: int) -> dict[str, Any]:
    """Marker and line style for the i-th run: identical runs (same seed and config at another world size)
    give identical curves, and distinct styles keep every one of them visible."""
    return {"marker": _MARKERS[i % len(_MARKERS)], "linestyle": _LINESTYLES[i % len(_LINESTYLES)], "ms": 7,
            "mfc": "none", "mew": 1.5}


def _byte_tick(x: float, _pos: Any = None) -> str:
    return format_bytes(x).replace(".00 ", " ").replace(".0 ", " ")


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _plot_accuracy(ax: Any, runs: Sequence[Run], names: Sequence[str], x_of, positive_x: bool = False) -> bool:
    """One line per run: test accuracy (%) at its evaluated rounds against `x_of(run)`. True if any drawn."""
    drawn = False
    for i, (r, name, c) in enumerate(zip(runs, names, _colors(len(runs)))):
        x = np.asarray(x_of(r))
        idx = np.flatnonzero(np.isfinite(r.test_accuracy))
        if positive_x:
            idx = idx[x[idx] > 0]
        if idx.size:
            ax.plot(x[idx], 100 * r.test_accuracy[idx], color=c, label=name, **_style(i))
            drawn = True
    return drawn


def plot_accuracy_vs_round(runs: Sequence[Run], names: Sequence[str], out: Path) -> None:
    """Test accuracy at every evaluated round, one line per run."""
    fig = _figure()
    ax = fig.add_subplot()
    if _plot_accuracy(ax, runs, names, lambda r: r.rounds):
        ax.legend(fontsize="small")
    else:
        _no_data(ax, "no evaluated rounds")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(title="Test accuracy vs round", xlabel="round", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    fig.savefig(out)


def plot_accuracy_vs_uplink(runs: Sequence[Run], names: Sequence[str], out: Path) -> None:
    """Test accuracy against the cumulative uplink bytes (all clients) at each evaluated round."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = _figure()
    ax = fig.add_subplot()
    # a log axis cannot show zero bytes: such points are skipped
    if _plot_accuracy(ax, runs, names, lambda r: np.cumsum(r.uplink_bytes), positive_x=True):
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
    phases = list(runs[0].phases) if runs else list(PHASES_DEFAULT)
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
    # the round's critical path (see runner._round_phases); only evaluation overlaps the clients' training
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


def write_plots(runs: Sequence[Run], out_dir: Path) -> list[Path]:
    """Write every plot that applies into `out_dir` (created if missing); returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = display_names(runs)
    written: list[Path] = []
    for fname, fn in (("accuracy_vs_round.png", plot_accuracy_vs_round),
                      ("accuracy_vs_uplink_bytes.png", plot_accuracy_vs_uplink),
                      ("phase_times.png", plot_phase_times)):
        fn(runs, names, out_dir / fname)
        written.append(out_dir / fname)
    groups = scaling_groups(runs)
    if groups:
        plot_scaling(groups, out_dir / "scaling.png")
        written.append(out_dir / "scaling.png")
    return written


# ------------------------------------------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedmrn-mpi report",
                                description="Summarise fedmrn_mpi results files: a table on stdout, PNG plots "
                                            "with -o.")
    p.add_argument("files", nargs="+", metavar="FILE.h5", help="results files (finished or still running)")
    p.add_argument("-o", "--output-dir", metavar="DIR", help="write PNG plots into DIR (created if missing)")
    return p


def parse_and_load(parser: argparse.ArgumentParser, argv: list[str], files_of) -> tuple[Any, list[Run]] | int:
    """Shared front of `report` and `status`: parse `argv`, then read every file before anything is printed
    or written (a bad file leaves no partial output). Returns (args, runs), or an exit code."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors and -h: return the code so in-process callers keep running
        return int(exc.code or 0)
    try:
        return args, load_runs(files_of(args))
    except ResultsFileError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def main_report(argv: list[str]) -> int:
    """`fedmrn-mpi report A.h5 [B.h5 ...] [-o DIR]`. Returns the exit code (2 for an unreadable file)."""
    loaded = parse_and_load(_parser(), argv, lambda a: a.files)
    if isinstance(loaded, int):
        return loaded
    args, runs = loaded
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        print(f"fedmrn-mpi report: error: {out_dir}: exists and is not a directory", file=sys.stderr)
        return EXIT_ERROR
    print(summary_table(runs))
    groups = scaling_groups(runs)
    if groups:
        print()
        print(scaling_table(groups))
    if out_dir is not None:
        written = write_plots(runs, out_dir)
        print()
        print(f"wrote {len(written)} plot(s):")
        for w in written:
            print(f"  {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main_report(sys.argv[1:]))
