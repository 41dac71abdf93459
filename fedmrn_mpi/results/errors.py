"""`WriteError`: a results file or checkpoint that could not be written (full disk, file size limit, I/O error);
`fsync_path`, which both use to make a rename durable.

Free of h5py and torch, so that the results writer and `run/checkpoint.py` (imported on every rank) both raise
it; the CLI prints its message as one line, without a traceback."""

from __future__ import annotations

import os
import re

_ERRNO = re.compile(r"errno = (\d+)")


class WriteError(Exception):
    """A file that could not be written; the message names the file and says why, on one line."""


def fsync_path(path: str) -> None:
    """fsync a file or a directory (after a rename, the directory entry) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe_write_failure(exc: BaseException) -> str:
    """One line for an OS, torch or HDF5 write failure: the system's message where an errno is known
    (`File too large (errno 27)`, `No space left on device (errno 28)`), else the message without line breaks.

    torch reports a failed write as a RuntimeError whose context is the OSError; HDF5 (through h5py) as a
    RuntimeError or OSError whose multi-line text contains `errno = N`."""
    for seen in _chain(exc):
        number = seen.errno if isinstance(seen, OSError) and isinstance(seen.errno, int) else None
        match = _ERRNO.search(str(seen)) if number is None else None
        number = int(match.group(1)) if match else number
        if number:
            return f"{os.strerror(number)} (errno {number})"
    return " ".join(str(exc).split()) or type(exc).__name__


def has_os_error(exc: BaseException) -> bool:
    """Whether `exc` is an OSError or was raised while handling one (torch wraps a failed write)."""
    return any(isinstance(seen, OSError) for seen in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, innermost last."""
    out: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and all(seen is not e for e in out):
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out
