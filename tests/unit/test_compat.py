"""fedmrn_mpi.compat: the supported torch range is one fact (compat, setup.py and the lowest-torch script agree),
the version comparisons are right, and the version-dependent switches say what they promise."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from fedmrn_mpi import compat
from fedmrn_mpi.rng import noise

ROOT = Path(__file__).resolve().parents[2]


def _setup_torch_requirement() -> str:
    reqs = re.findall(r'"(torch[^"]*)"', (ROOT / "setup.py").read_text())
    assert len(reqs) == 1, reqs
    return reqs[0]


def test_setup_py_requires_exactly_the_lowest_tested_torch_and_no_upper_bound() -> None:
    # no upper bound: pip would otherwise replace a cluster's newer CUDA torch (docs/torch_versions.md)
    low = ".".join(compat.TORCH_LOWEST.split(".")[:2])
    assert _setup_torch_requirement() == f"torch>={low}"


def test_the_lowest_torch_script_reads_compats_version() -> None:
    script = (ROOT / "scripts" / "test_lowest_torch.sh").read_text()
    assert "fedmrn_mpi/compat.py" in script
    # the sed expression in the script, as a Python regex over compat.py's source
    found = re.findall(r'^TORCH_LOWEST *= *"([0-9.]*)"', (ROOT / "fedmrn_mpi" / "compat.py").read_text(), re.MULTILINE)
    assert found == [compat.TORCH_LOWEST]


def test_the_lowest_torch_script_stops_with_a_message_when_the_disk_is_too_full(tmp_path: Path) -> None:
    # a CI machine once ran out of disk in the middle of pip; the script now checks first and says how much
    # it needs and how much is free, before downloading anything (an empty venv is all it makes)
    venv = tmp_path / "lowest"
    env = dict(os.environ, VENV=str(venv), MIN_FREE_GB="1000000")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "test_lowest_torch.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"needs about 1000000 GB free on its disk .* only \d+ GB are free", proc.stderr), proc.stderr
    assert not list(venv.glob("lib/python*/site-packages/torch"))


def test_the_running_torch_is_supported() -> None:
    assert compat.version_tuple(torch.__version__)[:2] >= compat.version_tuple(compat.TORCH_LOWEST)[:2]
    assert compat.version_tuple(compat.TORCH_LOWEST) <= compat.version_tuple(compat.TORCH_NEWEST_TESTED)


@pytest.mark.parametrize("text, want", [("2.11.0", (2, 11, 0)), ("2.11.0+cu130", (2, 11, 0)),
                                        ("2.13.0+cpu", (2, 13, 0)), ("2.14.0a0+git1a2b3c", (2, 14, 0)),
                                        ("3.6.0", (3, 6, 0)), ("2.4", (2, 4)), ("v1.26.4", (1, 26, 4))])
def test_version_tuple(text: str, want: tuple[int, ...]) -> None:
    assert compat.version_tuple(text) == want


def test_version_tuple_refuses_what_is_not_a_version() -> None:
    with pytest.raises(ValueError, match="not a version"):
        compat.version_tuple("unknown")


def test_the_range_note_speaks_only_outside_the_tested_range() -> None:
    for inside in ("2.11.0+cu130", "2.11.3", "2.12.1", "2.13.0+cpu", "2.13.2"):
        assert compat.torch_range_note(inside) is None, inside
    older = compat.torch_range_note("2.10.0+cu128")
    assert older and "older than the lowest supported 2.11.0" in older
    newer = compat.torch_range_note("2.14.0+cu130")
    assert newer and "newer than the newest tested 2.13.0" in newer
    assert compat.torch_range_note("3.0.0a0") and "newer" in compat.torch_range_note("3.0.0a0")


def test_cpu_capability_is_a_nonempty_name() -> None:
    cap = compat.cpu_capability()
    assert isinstance(cap, str) and cap and cap == cap.strip()


class _NotATensor:
    """A class torch.load must refuse to rebuild from a checkpoint."""


def test_load_weights_only_reads_tensors_and_refuses_other_objects(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(3.0), "meta": [1, "a"]}, good)
    back = compat.load_weights_only(str(good))
    assert torch.equal(back["w"], torch.arange(3.0)) and back["meta"] == [1, "a"]
    bad = tmp_path / "bad.pt"
    torch.save({"x": _NotATensor()}, bad)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        compat.load_weights_only(str(bad))


@pytest.mark.parametrize("triton_v, numpy_v, broken", [
    ("3.6.0", "2.4.6", True),     # torch 2.11's Triton with the NumPy of 2026
    ("3.6.0", "2.4.0", True),
    ("3.6.0", "2.3.5", False),
    ("3.5.1", "1.26.4", False),
    ("3.7.0", "2.4.6", False),    # triton-lang/triton#9172
    ("3.9.0", "2.4.6", False),
])
def test_triton_interpreter_problem(triton_v: str, numpy_v: str, broken: bool) -> None:
    problem = compat.triton_interpreter_problem(triton_v, numpy_v)
    assert bool(problem) is broken
    if broken:
        assert compat.interpreter_numpy_pin() == "numpy<2.4"
        assert "numpy<2.4" in problem and "triton>=3.7" in problem and "#9171" in problem


def test_no_triton_installed_is_no_interpreter_problem(monkeypatch) -> None:
    monkeypatch.setattr(compat, "_installed", lambda dist: None)
    assert compat.triton_interpreter_problem(numpy_version="2.4.6") is None


def test_a_forced_triton_on_the_cpu_says_why_the_interpreter_cannot_run(monkeypatch) -> None:
    monkeypatch.setattr(noise, "_triton_importable", lambda: True)
    monkeypatch.setattr(noise, "triton_interpreter_problem", lambda: "Triton 3.6.0's CPU interpreter cannot run")
    with pytest.raises(noise.KernelsUnavailable, match="CPU interpreter cannot run"):
        noise.use_triton("cpu", "triton")
    assert noise.use_triton("cuda", "triton") is True     # compiled on a GPU: not affected
    assert noise.use_triton("cpu", "auto") is False       # auto never takes the interpreter
    monkeypatch.setattr(noise, "triton_interpreter_problem", lambda: None)
    assert noise.use_triton("cpu", "triton") is True


def test_report_warns_when_runs_come_from_different_torch_versions(tmp_path: Path, capsys) -> None:
    """Runs of the two ends of the supported range may differ in their bits (docs/torch_versions.md): results
    record torch_version and `report` names the difference (fedmrn_mpi/report/repro.py)."""
    from test_results_light import _warning_lines, write_results

    from fedmrn_mpi.report import main_report
    low = write_results(tmp_path / "low.h5", "low", torch_version="2.11.0+cu130")
    high = write_results(tmp_path / "high.h5", "high", torch_version="2.13.0+cpu")
    same = write_results(tmp_path / "same.h5", "same", torch_version="2.13.0+cpu")
    assert main_report([str(high), str(same)]) == 0
    assert _warning_lines(capsys.readouterr().out) == []
    assert main_report([str(low), str(high)]) == 0
    [warning] = _warning_lines(capsys.readouterr().out)
    assert "torch_version: low=2.11.0+cu130, high=2.13.0+cpu" in warning
