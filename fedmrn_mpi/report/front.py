"""The front `report` and `status` share: parse the command line, then read every results file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..results import ResultsFileError, Run, load_runs

EXIT_ERROR = 2


def parse_and_load(parser: argparse.ArgumentParser, argv: Sequence[str],
                   files_of: Callable[[argparse.Namespace], Sequence[str]]) -> tuple[Any, list[Run]] | int:
    """Parse `argv`, then read every file before anything is printed or written (a bad file leaves no partial
    output). Returns (args, runs), or an exit code."""
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # usage errors and -h: return the code so in-process callers keep running
        return int(exc.code or 0)
    try:
        return args, load_runs(files_of(args))
    except ResultsFileError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
