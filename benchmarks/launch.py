"""Running `python -m fedmrn_mpi ...` from a benchmark: this checkout's package, launched the way the tests
launch it (tests/launchers.py: the mpirun of the interpreter's MPI, with that MPI's settings)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from launchers import Launcher, launcher, launcher_for  # noqa: E402

__all__ = ["ROOT", "Launcher", "fedmrn", "launcher", "launcher_for"]


def fedmrn(args: list[str], ranks: int | None, cwd: Path, lau: Launcher | None = None,
           env_extra: dict[str, str] | None = None) -> float:
    """Run fedmrn_mpi with `args` (under `mpirun -n ranks` when given; `lau` picks the MPI and interpreter,
    default the running one's; `env_extra` overrides its variables) in `cwd`; its wall seconds. A failure ends the benchmark with the command and
    the end of its stderr."""
    lau = lau or launcher()
    cmd = lau.python_command(ranks, args) if ranks else [lau.python, "-m", "fedmrn_mpi", *args]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=lau.env(env_extra), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return wall
