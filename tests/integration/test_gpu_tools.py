"""The GPU check's tools on this GPU-less machine: benchmarks/gpu_check.sh gives up at once with exit 77, and the
wheels scripts/gpu_wheels.sh collects install offline and give a bare Python a working MPI (docs/gpu.md).

The wheels are downloaded once (PyPI access needed then) into ~/.cache/fedmrn_mpi/gpu_wheels/cp3XX
($XDG_CACHE_HOME honoured); later runs reuse the folder without network while its PINS and SHA256SUMS match.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from conftest import mpirun_path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "benchmarks" / "gpu_check.sh"
WHEELS_SH = ROOT / "scripts" / "gpu_wheels.sh"
LIMIT_BYTES = 40_000_000
# What the check may install on a node: every pin of scripts/gpu_wheels.sh (canonical names).
EXPECTED = {"mpich", "mpi4py", "pyyaml", "h5py", "pytest", "pluggy", "iniconfig", "packaging", "pygments",
            "hypothesis", "sortedcontainers", "pip"}
NODE_PROVIDES = {"numpy"}  # comes with the node's torch image; too big for the folder
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
             "manylinux1_x86_64")


def _cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fedmrn_mpi" / "gpu_wheels"


def wheels_folder(pyver: str) -> Path:
    """The cached folder for CPython `pyver`, filled by the script under test (downloads only when stale)."""
    dest = _cache_root() / f"cp{pyver.replace('.', '')}"
    env = dict(os.environ, PYTHON_VERSION=pyver, PIP_PYTHON=sys.executable)
    res = subprocess.run(["bash", str(WHEELS_SH), str(dest)], env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        pytest.fail(f"scripts/gpu_wheels.sh {dest} failed (exit {res.returncode}). Its first run needs PyPI "
                    f"access (pip download); later runs reuse that folder.\n--- stdout\n{res.stdout[-3000:]}"
                    f"\n--- stderr\n{res.stderr[-3000:]}", pytrace=False)
    m = re.search(r"total (\d+) bytes", res.stdout)
    assert m, res.stdout
    return dest


def _path_without(*commands: str) -> str:
    """PATH minus every directory holding one of `commands` (to stand for a machine that lacks them)."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any(os.access(os.path.join(d, c), os.X_OK) for c in commands)]
    return os.pathsep.join(keep)


# --- gpu_check.sh on a machine without a GPU ---------------------------------------------------------------------

def _fake_smi(tmp_path: Path, body: str) -> str:
    d = tmp_path / "fakebin"
    d.mkdir()
    (d / "nvidia-smi").write_text("#!/bin/sh\n" + body)
    (d / "nvidia-smi").chmod(0o755)
    return str(d)


@pytest.mark.parametrize("case", ["no nvidia-smi", "nvidia-smi fails", "torch sees no GPU"])
def test_gpu_check_without_gpu_exits_77_at_once(tmp_path, case):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PATH=_path_without("nvidia-smi"),
               PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    if case == "no nvidia-smi":
        if any(Path("/dev").glob("nvidia[0-9]*")):
            pytest.skip("this machine has /dev/nvidia* devices: the other cases cover it")
        want = "no nvidia-smi on PATH and no /dev/nvidia[0-9]* device"
    elif case == "nvidia-smi fails":  # the message a node with a GPU but no working driver gives
        env["PATH"] = _fake_smi(tmp_path, "echo \"NVIDIA-SMI has failed because it couldn't communicate with the "
                                          "NVIDIA driver.\"\nexit 9\n") + os.pathsep + env["PATH"]
        want = "nvidia-smi -L failed: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    else:  # nvidia-smi lists a GPU, but torch (CPU build here; CUDA_VISIBLE_DEVICES="" on a GPU machine) sees none
        env["PATH"] = _fake_smi(tmp_path, "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n") + os.pathsep + env["PATH"]
        want = "sees no CUDA device"
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(CHECK)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    lines = (res.stdout + res.stderr).splitlines()
    assert res.returncode == 77, (res.returncode, lines)
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU: ") and want in lines[0], lines
    assert took < 10, f"took {took:.1f} s"
    assert not (tmp_path / "out").exists(), "a check that runs nothing writes nothing"


# --- the wheels folder -------------------------------------------------------------------------------------------

def _closure_problems(folder: Path, pyver: str) -> list[str]:
    """Requirements of the folder's wheels (for CPython `pyver` on Linux) that the folder does not hold."""
    env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    have = {parse_wheel_filename(p.name)[0] for p in folder.glob("*.whl")}
    problems = []
    for p in folder.glob("*.whl"):
        with zipfile.ZipFile(p) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
            text = z.read(meta).decode()
        for line in text.splitlines():
            if line.startswith("Requires-Dist:"):
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker is not None and not req.marker.evaluate(env):
                    continue
                name = canonicalize_name(req.name)
                if name not in have and name not in NODE_PROVIDES:
                    problems.append(f"{p.name} needs {req}")
    return problems


def test_gpu_wheels_for_python312_install_offline_into_a_target(tmp_path):
    folder = wheels_folder("3.12")
    wheels = sorted(folder.glob("*.whl"))
    total = sum(p.stat().st_size for p in wheels)
    assert total < LIMIT_BYTES, f"{total} bytes"
    names = {}
    for p in wheels:
        name, _, _, tags = parse_wheel_filename(p.name)
        names[name] = p.name
        for t in tags:  # CPython 3.12 (or pure) on manylinux x86-64 (or any platform)
            assert t.interpreter in ("cp312", "py3", "py2") and (t.platform == "any" or t.platform in PLATFORMS), p.name
    assert set(names) == EXPECTED, sorted(names)
    assert _closure_problems(folder, "3.12") == []
    # The wheels are for 3.12 and this is 3.11: pip installs them into a --target for the given interpreter
    # (it refuses a wheel whose tags do not fit, so this checks the tags for real). No index, no network.
    target = tmp_path / "target"
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--disable-pip-version-check", "--no-index",
           "--no-deps", "--no-compile", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
           *[a for plat in PLATFORMS for a in ("--platform", plat)], "--target", str(target), *map(str, wheels)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for pkg in ("mpi4py", "yaml", "h5py", "pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments",
                "hypothesis", "sortedcontainers", "pip"):
        assert (target / pkg / "__init__.py").exists(), pkg
    assert list((target / "mpi4py").glob("MPI.mpich.cpython-312-x86_64-linux-gnu.so")), "mpi4py for MPICH, cp312"
    assert (target / "bin" / "mpirun").exists(), "the mpich wheel's launcher"
    # (--target drops the mpich wheel's lib/libmpi.so.12, a pip limitation: gpu_check.sh installs with
    # --prefix, which keeps it; the end-to-end test below runs that path.)


# --- gpu_check.sh's set-up, end to end ---------------------------------------------------------------------------

def _bare_python(tmp_path: Path) -> Path:
    """A fresh venv without pip, mpi4py, pyyaml, h5py or pytest; numpy only (the node's torch image has it)."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    import numpy
    src = Path(numpy.__file__).resolve().parents[1]
    only_numpy = tmp_path / "numpy_only"
    only_numpy.mkdir()
    for p in [src / "numpy", src / "numpy.libs", *src.glob("numpy-*.dist-info")]:
        if p.exists():
            (only_numpy / p.name).symlink_to(p)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "numpy_only.pth").write_text(str(only_numpy) + "\n")
    return venv / "bin" / "python"


def _setup_only(tmp_path: Path, python: str, wheels: Path | None, mpirun: str):
    """`gpu_check.sh --setup-only`: (result, summary.txt text, OUT folder)."""
    out = tmp_path / "out"
    # wheels=None: a folder that does not exist (not the checkout's .whl, should one be there), so that any
    # attempt to install shows up as a set-up problem
    env = dict(os.environ, PYTHON=python, MPIRUN=mpirun, WHEELS=str(wheels or tmp_path / "no-wheels-here"))
    env.pop("MPI4PY_LIBMPI", None)
    res = subprocess.run(["bash", str(CHECK), "--setup-only", str(out)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    summary = (out / "summary.txt").read_text(errors="replace") if (out / "summary.txt").exists() else ""
    return res, summary, out


def test_gpu_check_setup_gives_a_bare_python_mpi_from_the_wheels(tmp_path):
    """What happens on a bare GPU node: no pip, no mpi4py, no MPI, no mpirun, no pyyaml/pytest/h5py, no network."""
    pyver = "%d.%d" % sys.version_info[:2]
    folder = wheels_folder(pyver)
    python = _bare_python(tmp_path)
    site = next((tmp_path / "bare").glob("lib/python3*/site-packages"))
    before = sorted(p.name for p in site.iterdir())
    res, summary, out = _setup_only(tmp_path, str(python), folder, mpirun="no-such-mpirun")
    log = (out / "setup.txt").read_text(errors="replace") if (out / "setup.txt").exists() else ""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:] + log[-4000:]
    first = summary.splitlines()[0]
    # exactly what was missing, and not numpy (the node has it) nor pip (run from its wheel, not installed)
    got = set(re.search(r"installed from wheels: (.*?) \|", first).group(1).split())
    assert {g.rsplit("-", 1)[0] for g in got} == {"mpich", "mpi4py", "pyyaml", "h5py", "pytest", "pluggy",
                                                 "iniconfig", "packaging", "pygments"}, first
    assert "MPI: 2 ranks: MPICH Version:" in first and "launcher: MPICH hydra" in first, first
    assert "--no-index" in log and "--prefix" in log
    # installed into a temporary prefix, gone after the check; the Python itself is untouched
    assert sorted(p.name for p in site.iterdir()) == before
    prefix = re.search(r"MPI4PY_LIBMPI=(\S+)/lib/libmpi\.so\.12", (out / "machine.txt").read_text())
    assert prefix and not Path(prefix.group(1)).exists(), "the temporary prefix outlives the check"


def test_gpu_check_setup_uses_what_the_machine_has(tmp_path):
    """This venv has mpi4py, MPICH and every package: nothing is installed (no wheels folder is even given)."""
    res, summary, out = _setup_only(tmp_path, sys.executable, None, mpirun=mpirun_path())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    first = summary.splitlines()[0]
    assert "installed from wheels: nothing" in first and "MPI: 2 ranks:" in first, first


def test_gpu_check_setup_under_open_mpi(tmp_path):
    """Open MPI's launcher gets --oversubscribe, and --allow-run-as-root as root; its library string (which ends
    in a NUL) is read as text."""
    ompi = ROOT / ".venv-ompi" / "bin" / "python"
    system_mpirun = shutil.which("mpirun", path="/usr/bin")
    if not ompi.exists() or system_mpirun is None:
        pytest.skip("no Open MPI environment here (.venv-ompi and /usr/bin/mpirun)")
    res, summary, out = _setup_only(tmp_path, str(ompi), None, mpirun=system_mpirun)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    first = summary.splitlines()[0]
    assert "installed from wheels: nothing" in first and "MPI: 2 ranks: Open MPI" in first, first
    assert "--oversubscribe" in first
    assert ("--allow-run-as-root" in first) == (os.geteuid() == 0), first
