"""The one place that knows how the two MPI launchers differ (docs/mpi.md says the same for users).

The suite runs under whichever MPI the running Python's mpi4py uses: the `mpich` wheel's hydra `mpirun` beside
the interpreter (the main environment), or the system's Open MPI `mpirun` (the second environment of
.ci/run, scripts/test_openmpi.sh). Everything a test needs to launch a job goes through `LAUNCHER`:
`LAUNCHER.command(n, argv)` and `LAUNCHER.env(...)`.

Differences handled here:
- Open MPI refuses to run as root and to start more ranks than cores (9 and 33 ranks on 2 cores) unless told:
  OMPI_ALLOW_RUN_AS_ROOT(+_CONFIRM) and OMPI_MCA_rmaps_base_oversubscribe, set as variables so that job
  scripts the tests run (jobs/*.sbatch, which call `mpirun` themselves) inherit them. MPICH needs neither.
- Busy polling: both MPIs spin inside blocking calls; the runner's own waits sleep between tests of
  nonblocking requests, but Open MPI's progress engine still spins in MPI_Init/Finalize and small blocking
  calls, so on an oversubscribed machine it is told to yield (OMPI_MCA_mpi_yield_when_idle=1).
- Signals: hydra forwards SIGUSR1 and SIGTERM to every rank. Open MPI 4.1's mpirun forwards SIGUSR1 (and
  SIGUSR2, SIGTSTP, SIGCONT, SIGALRM) and refuses to forward SIGTERM: it terminates the job itself (SIGCONT,
  then SIGTERM and SIGKILL `odls_base_sigkill_timeout` seconds apart, default 1), too soon to finish a round.
  `Launcher.signal` therefore sends SIGTERM to the ranks themselves, which is what Slurm does to the tasks of a
  step on preemption. (Raising odls_base_sigkill_timeout does not help: it delays the SIGTERM as well, and it
  slows MPI_Abort's clean-up by the same amount.)
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_OPENMPI_ENV = {
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_mpi_yield_when_idle": "1",
}
# what Open MPI 4.1's mpirun forwards to the ranks (ess_base_forward_signals); it refuses to forward SIGTERM
_OPENMPI_FORWARDS = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTSTP, signal.SIGCONT, signal.SIGALRM}
_OPENMPI_ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@dataclass(frozen=True)
class Launcher:
    """An `mpirun` and the MPI it belongs to ("mpich" or "openmpi")."""

    path: str
    flavour: str
    version: str
    python: str = sys.executable

    @property
    def srun_mpi(self) -> str:
        """`srun --mpi=` for this MPI: the mpich wheel has PMI-2 but no PMIx; Debian's Open MPI 4.1 only PMIx."""
        return "pmix" if self.flavour == "openmpi" else "pmi2"

    def command(self, nprocs: int, argv: list[str]) -> list[str]:
        """`mpirun -n nprocs argv...` with the flags this launcher needs (none: variables do the work)."""
        return [self.path, "-n", str(nprocs), *argv]

    def python_command(self, nprocs: int, args: list[str]) -> list[str]:
        """`mpirun -n nprocs python -m fedmrn_mpi args...` with this launcher's interpreter."""
        return self.command(nprocs, [self.python, "-m", "fedmrn_mpi", *args])

    def env(self, extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for a job: `base` (default os.environ), this checkout on PYTHONPATH, the launcher's
        variables (values already set in `base` win), then `extra`."""
        env = dict(os.environ if base is None else base)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        for key, value in self.variables().items():
            env.setdefault(key, value)
        env.update(extra or {})
        return env

    def variables(self) -> dict[str, str]:
        """What this launcher needs in the environment on this machine."""
        if self.flavour != "openmpi":
            return {}
        root = _OPENMPI_ROOT_ENV if os.geteuid() == 0 else {}
        return {**_OPENMPI_ENV, **root}

    def signal(self, proc: subprocess.Popen, sig: int) -> None:
        """Deliver `sig` to every rank of the job `proc` (this launcher) started: through mpirun where it
        forwards the signal, else to each rank directly, as Slurm does to the tasks of a step on preemption."""
        if self.flavour == "openmpi" and sig not in _OPENMPI_FORWARDS:
            pids = rank_pids(proc.pid)
            if not pids:
                raise RuntimeError(f"no rank process found under mpirun (pid {proc.pid}) to send signal {sig}")
            for pid in pids:
                os.kill(pid, sig)
        else:
            proc.send_signal(sig)

    def run(self, nprocs: int, args: list[str], cwd: Path, timeout: float, env_extra: dict | None = None):
        """Run `python -m fedmrn_mpi args` under this launcher and wait (captured text output)."""
        return subprocess.run(self.python_command(nprocs, args), cwd=cwd, env=self.env(env_extra),
                              capture_output=True, text=True, timeout=timeout)


def rank_pids(launcher_pid: int) -> list[int]:
    """The processes below `launcher_pid` that run fedmrn_mpi (hydra starts them through a proxy process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [launcher_pid]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            try:
                if b"fedmrn_mpi" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
    return sorted(found)


def _mpirun_path(python: str) -> str:
    # FEDMRN_TEST_MPIRUN names one outright; else the launcher beside the interpreter: a venv with the mpich wheel
    # has its own, and a system Open MPI `mpirun` cannot start ranks linked to that MPICH library
    if os.environ.get("FEDMRN_TEST_MPIRUN"):
        return os.environ["FEDMRN_TEST_MPIRUN"]
    cand = Path(python).with_name("mpirun")
    if cand.exists():
        return str(cand)
    found = shutil.which("mpirun")
    if not found:
        raise RuntimeError("no mpirun found: install the test set-up (bash setup.sh --test), or Open MPI "
                           "(scripts/test_openmpi.sh)")
    return found


def _flavour(path: str) -> tuple[str, str]:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    if "Open MPI" in out or "OpenRTE" in out:
        return "openmpi", out.strip().splitlines()[0]
    if "HYDRA" in out:
        version = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.strip().startswith("Version")),
                       "?")
        return "mpich", f"MPICH hydra {version}"
    raise RuntimeError(f"{path} is neither Open MPI's nor MPICH's mpirun: {out[:200]!r}")


@functools.lru_cache(maxsize=None)
def launcher_for(python: str) -> Launcher:
    """The launcher of the MPI that `python`'s mpi4py uses (looked up once per interpreter)."""
    path = _mpirun_path(python)
    flavour, version = _flavour(path)
    return Launcher(path, flavour, version, python)


def launcher() -> Launcher:
    """The launcher of the MPI the running Python uses."""
    return launcher_for(sys.executable)
