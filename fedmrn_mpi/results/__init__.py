"""The HDF5 results file (docs/design.md#results-file): its schema, writer and reader. Free of torch, so
that `status` and `report` start fast and run where torch is not installed. The reader and writer (and with
them h5py) load on first use: client ranks, which never touch the file, do not import them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .digest import state_sha256
from .schema import PHASES, REPRO_ATTRS
from .units import format_bytes, format_duration

if TYPE_CHECKING:
    from .reader import ResultsFileError, Run, load_run, load_runs
    from .writer import ResultsWriter

__all__ = ["PHASES", "REPRO_ATTRS", "ResultsFileError", "ResultsWriter", "Run", "format_bytes", "format_duration",
           "load_run", "load_runs", "state_sha256"]

_LAZY = {"ResultsFileError": "reader", "Run": "reader", "load_run": "reader", "load_runs": "reader",
         "ResultsWriter": "writer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
