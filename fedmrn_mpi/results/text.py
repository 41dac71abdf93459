"""Text that becomes an HDF5 attribute. Strings taken from MPI or the system (library versions, host and GPU
names, /proc/cpuinfo, git) are not under our control: Open MPI's `MPI_Get_library_version` ends in a NUL byte,
which h5py refuses in a variable-length string, and a stray control byte or an undecodable byte would do the
same or make the file awkward to read. Every string attribute passes through `safe_text` in the writer."""

from __future__ import annotations

import re

# C0 controls and DEL, except tab and newline (config_yaml is multi-line text); NUL is among them
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def safe_text(value: str | bytes) -> str:
    """`value` as a string h5py stores as a variable-length UTF-8 attribute: bytes decoded as UTF-8 with
    replacement characters, lone surrogates replaced, control characters (NUL included) removed, and
    surrounding whitespace stripped when the text is one line (a trailing newline aside)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    # a lone surrogate (e.g. from os.fsdecode of a bad byte) cannot be encoded as UTF-8
    value = value.encode("utf-8", errors="replace").decode("utf-8")
    value = _CONTROL.sub("", value.replace("\r\n", "\n"))
    return value if "\n" in value.strip() else value.strip()
