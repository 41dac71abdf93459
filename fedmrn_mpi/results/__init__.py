"""The HDF5 results file (docs/design.md#results-file): its schema, writer and reader. Free of torch, so
that `status` and `report` start fast and run where torch is not installed."""

from .reader import ResultsFileError, Run, load_run, load_runs
from .schema import PHASES, REPRO_ATTRS
from .units import format_bytes, format_duration
from .writer import ResultsWriter, state_sha256

__all__ = ["PHASES", "REPRO_ATTRS", "ResultsFileError", "ResultsWriter", "Run", "format_bytes", "format_duration",
           "load_run", "load_runs", "state_sha256"]
