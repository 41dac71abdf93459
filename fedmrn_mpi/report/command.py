"""`fedmrn-mpi report A.h5 [B.h5 ...] [-o DIR]`: a summary table of results files, their clients' partition,
and PNG plots (docs/design.md#results-file)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .front import EXIT_ERROR, parse_and_load
from .plots import write_plots
from .repro import precision_warning, repro_warning
from .scaling import scaling_groups
from .seeds import seed_groups
from .table import display_names, partition_table, scaling_table, seed_table, summary_table, target_table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedmrn-mpi report",
                                description="Summarise fedmrn_mpi results files: a table on stdout, PNG plots "
                                            "with -o.",
                                epilog="Seed groups: runs whose recorded configs are equal except for seed, run_name "
                                       "and results_dir (a key only one file records counts as a difference) are "
                                       "one group when they have two or more distinct seeds; the report gives its "
                                       "n, mean and sample sd (ddof=1) of final and best accuracy (and of rounds "
                                       "and uplink to --target, over the runs that reached it), and the accuracy "
                                       "plots draw its mean with a min-max band. See docs/design.md, \"Seed "
                                       "groups\".")
    p.add_argument("files", nargs="+", metavar="FILE.h5", help="results files (finished or still running)")
    p.add_argument("-o", "--output-dir", metavar="DIR", help="write PNG plots into DIR (created if missing)")
    p.add_argument("--target", metavar="ACC", type=_accuracy,
                   help="also list the rounds (and uplink) each run needed to reach this test accuracy, "
                        "e.g. 0.8 or 80%%; for seed groups, mean ± sd over the runs that reached it")
    return p


EXIT_NO_PLOTS = 1  # -o asked for plots and matplotlib is missing (the tables were printed)


def plotting_available() -> bool:
    """Whether matplotlib can be imported (the optional `report` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _accuracy(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") or float(text.rstrip("%")) > 1 else 1)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an accuracy in (0, 1] or (0%, 100%]")
    return value


def main_report(argv: Sequence[str]) -> int:
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
    if args.target is not None:
        print()
        print(target_table(runs, args.target))
    seeds = seed_groups(runs, display_names(runs))
    if seeds.groups or seeds.notes:
        print()
        print(seed_table(seeds, runs, args.target))
    for warning in (precision_warning(runs), repro_warning(runs)):
        if warning:
            print()
            print(warning)
    groups = scaling_groups(runs)
    if groups:
        print()
        print(scaling_table(groups))
    print()
    print(partition_table(runs))
    if out_dir is not None:
        if not plotting_available():
            # the tables above are the report; only the plots that -o asked for are missing
            print(f"fedmrn-mpi report: no plots written to {out_dir}: plots need matplotlib, the `report` extra "
                  f"(pip install 'fedmrn_mpi[report]', or pip install matplotlib)", file=sys.stderr)
            return EXIT_NO_PLOTS
        written = write_plots(runs, out_dir, seeds)
        print()
        print(f"wrote {len(written)} plot(s):")
        for w in written:
            print(f"  {w}")
    return 0
