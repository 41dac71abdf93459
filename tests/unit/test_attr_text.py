"""Strings from MPI or the system become attributes only after `safe_text` (results/text.py): Open MPI's
library version ends in a NUL byte, which h5py refuses in a variable-length string."""

from __future__ import annotations

import h5py
import pytest

from fedmrn_mpi.results import ResultsWriter, load_run
from fedmrn_mpi.results.text import safe_text

# what Open MPI 4.1.4's MPI_Get_library_version returns (the C string's terminating NUL included)
OPENMPI_VERSION = ("Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022\x00")


def test_raw_nul_is_what_h5py_refuses(tmp_path):
    """The failure this guards against is real: without cleaning, the attribute cannot be written."""
    with h5py.File(tmp_path / "raw.h5", "w") as f, pytest.raises(ValueError, match="NUL"):
        f.attrs["mpi_library"] = OPENMPI_VERSION


@pytest.mark.parametrize("raw, clean", [
    (OPENMPI_VERSION, OPENMPI_VERSION[:-1]),
    ("  node-07\x00\n", "node-07"),
    (b"NVIDIA H200\xff", "NVIDIA H200\ufffd"),
    ("bad \udcff surrogate", "bad ? surrogate"),
    ("tab\tand\x07bell\x1b[0m", "tab\tandbell[0m"),
    ("a: 1\r\nb: 2\n", "a: 1\nb: 2\n"),  # multi-line text (config_yaml) keeps its newlines
])
def test_safe_text(raw, clean):
    assert safe_text(raw) == clean


def test_writer_cleans_every_string_attribute_alone_and_in_lists(tmp_path):
    path = tmp_path / "r.h5"
    attrs = {"config_yaml": "run_name: t\nrounds: 1\n", "world_size": 2, "algorithm": "fedmrn",
             "mpi_library": OPENMPI_VERSION, "hosts": ["n1\x00", "n2"], "rank_gpu_names": [b"GPU\x00", "none"]}
    ResultsWriter(str(path), attrs, 2, 2).close()
    with h5py.File(path, "r") as f:
        assert f.attrs["mpi_library"] == OPENMPI_VERSION[:-1]
        assert list(f.attrs["hosts"]) == ["n1", "n2"]
        assert list(f.attrs["rank_gpu_names"]) == ["GPU", "none"]
    assert load_run(str(path)).setting("algorithm") == "fedmrn"
