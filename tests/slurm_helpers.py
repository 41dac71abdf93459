"""Helpers for tests/test_slurm.py: a real local Slurm cluster (scripts/slurm_local.sh), job submission and
polling with timeouts, reading a results file while it is written, and a timeline of events."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLURM_LOCAL = ROOT / "scripts" / "slurm_local.sh"
JOBS = ROOT / "jobs"
INSTALL_HINT = ("install Slurm with `sudo scripts/slurm_local.sh install` (Debian/Ubuntu: apt-get install "
                "slurmctld slurmd slurm-client munge libpmix-dev)")

# job states after which a job does not run again by itself
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REQUEUE_HOLD", "REVOKED"}


def slurm_missing() -> list[str]:
    return [p for p in ("sbatch", "scontrol", "slurmctld", "slurmd", "munged") if shutil.which(p) is None
            and not Path("/usr/sbin", p).exists()]


def ensure_slurm() -> str | None:
    """Make sure the Slurm daemons and clients are installed; None when they are, else why not."""
    if sys.platform != "linux":
        return f"a local Slurm cluster needs Linux; {INSTALL_HINT}"
    if os.geteuid() != 0:
        return f"the local Slurm cluster runs its daemons as root; run the tests as root ({INSTALL_HINT})"
    res = subprocess.run(["bash", str(SLURM_LOCAL), "install"], capture_output=True, text=True, timeout=600)
    if res.returncode != 0 or slurm_missing():
        return (f"Slurm is not installed and could not be installed ({res.stderr.strip()[-300:]}); "
                f"{INSTALL_HINT}")
    return None


def free_port_base(count: int, start: int = 16817, stop: int = 17800) -> int:
    """First port p with p .. p+count-1 all free on 127.0.0.1 and the wildcard address."""
    def free(port: int) -> bool:
        for host in ("127.0.0.1", ""):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError:
                    return False
        return True
    for base in range(start, stop, count + 1):
        if all(free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} free consecutive ports in {start}..{stop}")


def clean_env() -> dict:
    """This process's environment without Slurm's job variables (pytest may itself run inside a job)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}


@dataclass
class Cluster:
    state_dir: Path
    nodes: int = 2
    cpus: int = 40
    gpus: int = 4
    env: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = free_port_base(1 + self.nodes)
        self.env = clean_env()
        self.env.update({
            "FEDMRN_SLURM_DIR": str(self.state_dir), "FEDMRN_SLURM_NODES": str(self.nodes),
            "FEDMRN_SLURM_CPUS": str(self.cpus), "FEDMRN_SLURM_GPUS": str(self.gpus),
            "FEDMRN_SLURMCTLD_PORT": str(base), "FEDMRN_SLURMD_PORT": str(base + 1),
            "SLURM_CONF": str(self.state_dir / "slurm.conf"),
        })

    def script(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SLURM_LOCAL), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def up(self) -> None:
        res = self.script("up", timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"slurm_local.sh up failed:\n{res.stdout}\n{res.stderr}\n{self.logs()}")

    def down(self) -> str:
        res = self.script("down", timeout=120)
        return res.stdout + res.stderr

    def daemon_pids(self) -> list[int]:
        pids = []
        for f in [self.state_dir / "munge" / "munged.pid", self.state_dir / "slurmctld.pid",
                  *self.state_dir.glob("slurmd-*.pid")]:
            try:
                pids.append(int(f.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return pids

    def leftover_processes(self) -> list[str]:
        """Live processes that belong to this cluster: its daemons and anything of its jobs."""
        conf = f"SLURM_CONF={self.env['SLURM_CONF']}".encode()
        found = []
        for pid in self.daemon_pids():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                stat = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            except OSError:
                continue
            if comm in ("munged", "slurmctld", "slurmd") and stat != "Z":
                found.append(f"{pid} {comm}")
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                env = (proc / "environ").read_bytes().split(b"\0")
                comm = (proc / "comm").read_text().strip()
                stat = (proc / "stat").read_text().split(")")[-1].split()[0]
            except OSError:
                continue
            if conf in env and stat != "Z" and (comm == "slurmstepd" or any(e.startswith(b"SLURM_JOB_ID=")
                                                                            for e in env)):
                found.append(f"{proc.name} {comm}")
        return found

    def logs(self, lines: int = 15) -> str:
        out = []
        for f in sorted((self.state_dir / "log").glob("*.log")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f}\n" + "\n".join(text))
        return "\n".join(out)

    # ---- jobs -------------------------------------------------------------------------------------------
    def run(self, *cmd: str, timeout: float = 30, check: bool = True, env_extra: dict | None = None,
            cwd: Path = ROOT) -> subprocess.CompletedProcess:
        env = dict(self.env, **(env_extra or {}))
        res = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def sbatch(self, script: str, *options: str, env_extra: dict | None = None) -> str:
        """Submit jobs/<script> from the checkout with the job's variables in env_extra; returns the job id."""
        res = self.run("sbatch", "--parsable", *options, str(JOBS / script), env_extra=env_extra)
        return res.stdout.strip().split(";")[0]

    def job(self, jobid: str) -> list[dict]:
        """`scontrol show job -o` as one dict per job (or array task); [] when the job is unknown."""
        res = self.run("scontrol", "show", "job", "-o", jobid, check=False)
        if res.returncode != 0:
            return []
        jobs = []
        for line in res.stdout.splitlines():
            d = {}
            for m in re.finditer(r"(\w+)=(\S*)", line):
                d.setdefault(m.group(1), m.group(2))
            if d:
                jobs.append(d)
        return jobs

    def wait(self, jobid: str, timeout: float) -> list[str]:
        """slurm_local.sh wait: lines 'JOBID STATE EXITCODE' once every task is finished; raises on timeout."""
        res = self.script("wait", jobid, str(int(timeout)), timeout=timeout + 30)
        if res.returncode == 124:
            raise TimeoutError(f"job {jobid} not finished after {timeout} s: {res.stdout}\n{self.job(jobid)}")
        return res.stdout.split("\n")[:-1]


def rounds_written(path: Path) -> int:
    """Rounds in a results file being written (SWMR reader); 0 when it cannot be read yet."""
    import h5py
    if not path.exists():
        return 0
    try:
        with h5py.File(path, "r", swmr=True) as f:
            if "rounds/round" not in f:
                return 0
            ds = f["rounds/round"]
            ds.refresh()
            return int(ds[-1]) if ds.shape[0] else 0
    except (OSError, KeyError, ValueError):
        return 0


class Timeline:
    """Events with the seconds since the start, for the requeue test's report."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.events: list[tuple[float, str]] = []

    def mark(self, what: str) -> float:
        t = time.monotonic() - self.t0
        self.events.append((t, what))
        return t

    def seen(self, prefix: str) -> bool:
        return any(what.startswith(prefix) for _, what in self.events)

    def format(self) -> str:
        start = time.strftime("%H:%M:%S", time.localtime(self.wall0))
        return "\n".join([f"timeline (t = 0 at {start}):"] +
                         [f"  t={t:6.1f} s  {what}" for t, what in self.events])


def wait_until(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll pred() until it returns something truthy; raise TimeoutError after timeout seconds."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)
