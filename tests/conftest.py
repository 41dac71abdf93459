import os
import sys

import torch

# Without a CUDA device the Triton kernel tests run in Triton's interpreter on CPU tensors. Triton reads
# TRITON_INTERPRET when it is imported (its own standard library is @jit-decorated at import time; setting it
# later fails with "Cannot call @triton.jit'd outside of the scope of a kernel"), so this must come before
# anything imports triton. torch does not import triton.
if not torch.cuda.is_available():
    if "triton" in sys.modules and not os.environ.get("TRITON_INTERPRET"):
        import warnings
        warnings.warn("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from launchers import launcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config, items):
    """Tests under tests/integration launch real jobs: `pytest -m "not mpi"` runs only the unit tests."""
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.mpi)


def mpirun_path() -> str:
    """The `mpirun` of the MPI this Python's mpi4py uses (tests/launchers.py)."""
    return launcher().path


def run_cli(args: list[str], nprocs: int | None, cwd: Path, timeout: float = 240, env_extra: dict | None = None):
    """Run `python -m fedmrn_mpi ...`, under a real mpirun when nprocs is given."""
    cmd = [sys.executable, "-m", "fedmrn_mpi", *args]
    if nprocs is None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(env_extra or {})
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return launcher().run(nprocs, args, cwd, timeout, env_extra)


@pytest.fixture
def cli(tmp_path):
    def _run(args, nprocs=None, **kw):
        return run_cli(args, nprocs, tmp_path, **kw)
    return _run
