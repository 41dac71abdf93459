"""One config, one digest under both MPIs: the main environment's MPICH (the `mpich` wheel, .venv) and Debian's
Open MPI (.venv-ompi, built by scripts/test_openmpi.sh). Results must not depend on the MPI any more than on the
rank count: uploads are aggregated in client-id order whatever the collectives do.

The test belongs to the Open MPI pass (scripts/test_openmpi.sh, the second step of .ci/run), which runs after
the main environment exists; in the main pass the Open MPI environment may not be built yet, so there it
defers to that pass."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT
from launchers import launcher, launcher_for

ENVS = {"mpich": os.environ.get("FEDMRN_MPICH_VENV", str(ROOT / ".venv")),
        "openmpi": os.environ.get("FEDMRN_OPENMPI_VENV", str(ROOT / ".venv-ompi"))}


def _python(flavour: str) -> str:
    python = Path(ENVS[flavour]) / "bin" / "python"
    if not python.exists():
        why = (f"the {flavour} environment {python.parent.parent} is missing: build it with "
               + ("bash setup.sh --test" if flavour == "mpich" else "bash scripts/test_openmpi.sh"))
        if os.environ.get("CI"):
            pytest.fail(why)  # CI builds both (.ci/run): a missing one is a broken set-up, not a reason to skip
        pytest.skip(why)
    return str(python)


def test_same_digest_under_mpich_and_openmpi(tmp_path):
    if launcher().flavour != "openmpi":
        pytest.skip("runs in the Open MPI pass (bash scripts/test_openmpi.sh), where both environments exist")
    runs = {}
    for flavour, n in (("mpich", 3), ("openmpi", 3), ("openmpi", 2)):
        lau = launcher_for(_python(flavour))
        assert lau.flavour == flavour, f"{ENVS[flavour]} launches with {lau.version}"
        out = tmp_path / f"{flavour}-{n}.h5"
        res = lau.run(n, ["run", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(out), "rounds=3"],
                      tmp_path, timeout=240)
        assert res.returncode == 0, f"{flavour} -n {n}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        with h5py.File(out, "r") as f:
            runs[(flavour, n)] = (f.attrs["final_model_sha256"], f["rounds/test_accuracy"][:],
                                  f["rounds/train_loss"][:], str(f.attrs["mpi_library"]))
    ref = runs[("mpich", 3)]
    assert "MPICH" in ref[3] and "Open MPI" in runs[("openmpi", 3)][3]
    for key, got in runs.items():
        assert got[0] == ref[0], f"{key}: digest {got[0]} != MPICH's {ref[0]}"
        assert np.array_equal(got[1], ref[1], equal_nan=True) and np.array_equal(got[2], ref[2], equal_nan=True)
