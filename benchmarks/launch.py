"""Running `python -m fedmrn_mpi ...` from a benchmark: this checkout's package, the venv's mpirun."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    return env


def _mpirun() -> str:
    cand = Path(sys.executable).with_name("mpirun")
    return str(cand) if cand.exists() else (shutil.which("mpirun") or "mpirun")


def fedmrn(args: list[str], ranks: int | None, cwd: Path) -> float:
    """Run fedmrn_mpi with `args` (under `mpirun -n ranks` when given) in `cwd`; its wall seconds. A failure
    ends the benchmark with the command and the end of its stderr."""
    cmd = [sys.executable, "-m", "fedmrn_mpi", *args]
    if ranks:
        cmd = [_mpirun(), "-n", str(ranks), *cmd]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return wall
