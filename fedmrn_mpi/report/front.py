"""The front `report` and `status` share: parse the command line, then read every results file."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..results import ResultsFileError, Run, load_run, load_runs

EXIT_ERROR = 2
# seconds the files may take to read (FEDMRN_MPI_READ_TIMEOUT): see `_probe`
READ_TIMEOUT = float(os.environ.get("FEDMRN_MPI_READ_TIMEOUT", "30"))


def _probe(paths: Sequence[str]) -> str | None:
    """Read every file once in a forked child, which is killed after READ_TIMEOUT seconds.

    Some damage (e.g. a global heap object whose size runs into the heap's free space) makes the HDF5 library loop
    forever inside one call that holds the GIL, where no thread or signal handler can stop it, and a damaged file
    could crash it. Returns the error line naming the file the child was reading when it had to be killed (or
    died), or None: the child finished (read errors are reported by the real read that follows), or fork is
    unavailable."""
    if not hasattr(os, "fork") or READ_TIMEOUT <= 0:
        return None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: announce each file, read it, leave without running any cleanup of the parent's
        try:
            os.close(r)
            for p in paths:
                os.write(w, os.fsencode(str(p)) + b"\0")
                try:
                    load_run(p)
                except ResultsFileError:
                    pass
        finally:
            os._exit(0)
    os.close(w)
    seen, deadline, timed_out = b"", time.monotonic() + READ_TIMEOUT, False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(r)
        status = os.waitpid(pid, 0)[1]
    names = seen.split(b"\0")[:-1]
    where = os.fsdecode(names[-1]) if names else ", ".join(map(str, paths))
    if timed_out:
        return (f"{where}: reading did not finish within {READ_TIMEOUT:g} s; the file is probably damaged (the HDF5 "
                f"library can loop forever on some damage)")
    if os.WIFSIGNALED(status):
        return f"{where}: reading it crashed the HDF5 library (signal {os.WTERMSIG(status)}); the file is damaged"
    return None


def parse_and_load(parser: argparse.ArgumentParser, argv: Sequence[str],
                   files_of: Callable[[argparse.Namespace], Sequence[str]]) -> tuple[Any, list[Run]] | int:
    """Parse `argv`, then read every file before anything is printed or written (a bad file leaves no partial
    output). Returns (args, runs), or an exit code."""
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # usage errors and -h: return the code so in-process callers keep running
        return int(exc.code or 0)
    problem = _probe(files_of(args))
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return args, load_runs(files_of(args))
    except ResultsFileError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
