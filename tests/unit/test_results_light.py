"""The results package and the `report`/`status` commands without torch: the import stays light, the model
digest is the documented one, the writer's files read back (with rounds/control_bytes), and `report` warns
when compared runs differ in settings that decide bit-exact results."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedmrn_mpi.report import main_report
from fedmrn_mpi.results import PHASES, REPRO_ATTRS, ResultsWriter, load_run, state_sha256
from fedmrn_mpi.results.schema import FORMAT_VERSION_ATTR, RoundRow
from result_rows import round_row

ROOT = Path(__file__).resolve().parents[2]
CPR, WORLD = 2, 3
REPRO = {"torch_version": "2.3.0+cpu", "numpy_version": "1.26.4", "device_type": "cpu", "threads_per_rank": 1,
         "cpu_capability": "AVX2", "gpu_names": ["none"],
         "cpu_model": "Intel(R) Xeon(R) Processor (GenuineIntel 6/167/1)", "cpu_flags_sha256": "a6735db074b53efc",
         "cpu_caches": "L1d 48K, L1i 64K, L2 2048K, L3 491520K", "onednn_isa": "Intel AVX2",
         "mkl_isa": "code path 5, auto branch AVX2", "cpu_kernel_settings": "none", "cuda_version": "none",
         "cudnn_version": "none", "cublas_version": "none"}


def _row(r: int) -> RoundRow:
    """One round as the runner hands it to ResultsWriter.append_round."""
    return round_row(r, WORLD, client_uplink=(150 * r, 150 * r), test_accuracy=0.1 * r, test_loss=2.0 - 0.1 * r,
                     train_loss=1.0 / r, downlink_bytes=4000, resync=int(r == 1), control_bytes=64 + r)


def _state() -> dict[str, np.ndarray]:
    return {"fc.weight": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
            "fc.bias": np.array([0.25, -0.5, 3.0], dtype=np.float32)}


def write_results(path: Path, name: str, rounds: int = 3, finish: bool = True, precision: str | None = None,
                  **attrs) -> Path:
    """A small finished (or unfinished) results file written by ResultsWriter; `attrs` override the
    reproducibility attributes (None drops one); `precision`: the config key (absent, as in older files, if None)."""
    cfg = f"run_name: {name}\nrounds: {rounds}\nclients_per_round: {CPR}\nalgorithm:\n  name: fedmrn\n  mask: binary\n"
    cfg += f"precision: {precision}\n" if precision else ""
    root = {"config_yaml": cfg, "version": "0.1.0", "world_size": WORLD, "algorithm": "fedmrn",
            "num_masked_params": 12, "num_unmasked_values": 3, **REPRO, **attrs}
    w = ResultsWriter(str(path), {k: v for k, v in root.items() if v is not None}, CPR, WORLD)
    for r in range(1, rounds + 1):
        w.append_round(_row(r))
    assert w.rows == rounds
    if finish:
        w.finalize(_state(), {"rounds_completed": rounds, "total_seconds": 1.5})
    else:
        w.close()
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ------------------------------------------------------------------------------------------- no torch

_NO_TORCH = textwrap.dedent("""
    import sys
    import fedmrn_mpi.report, fedmrn_mpi.results
    from fedmrn_mpi.report import main_report, main_status
    assert main_status([sys.argv[1]]) == 0
    assert main_report([sys.argv[1]]) == 0
    heavy = sorted(m for m in ("torch", "matplotlib", "mpi4py") if m in sys.modules)
    print("HEAVY", heavy)
    assert "torch" not in sys.modules
""")


def test_status_and_report_never_import_torch(tmp_path):
    path = write_results(tmp_path / "light.h5", "light")
    res = subprocess.run([sys.executable, "-c", _NO_TORCH, str(path)], env=_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout  # neither torch, nor matplotlib without -o, nor MPI
    assert "round     : 3 / 3" in res.stdout and "light" in res.stdout


def test_cli_dispatch_of_status_does_not_import_torch(tmp_path):
    path = write_results(tmp_path / "light.h5", "light")
    code = ("import sys\nfrom fedmrn_mpi.__main__ import main\nrc = main(['status', sys.argv[1]])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)\n")
    res = subprocess.run([sys.executable, "-c", code, str(path)], env=_env(), cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "finished  : yes" in res.stdout


def test_status_command_start_time(tmp_path):
    """Wall time of `python -m fedmrn_mpi status FILE.h5` (printed; run with -s to see it)."""
    path = write_results(tmp_path / "light.h5", "light")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "fedmrn_mpi", "status", str(path)], env=_env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - t0)
        assert res.returncode == 0, res.stderr
        assert "round     : 3 / 3" in res.stdout
    print(f"\n`python -m fedmrn_mpi status FILE.h5`: {', '.join(f'{t:.2f}' for t in times)} s "
          f"(min {min(times):.2f} s)")


# ------------------------------------------------------------------------------------------- the digest

def test_state_sha256_is_float32_little_endian_in_name_order():
    state = _state()
    # by hand: sorted names ("fc.bias" < "fc.weight"), each tensor's values in C order as '<f4'
    raw = b"".join(struct.pack(f"<{a.size}f", *a.ravel().tolist()) for _, a in sorted(state.items()))
    want = hashlib.sha256(raw).hexdigest()
    assert state_sha256(state) == want
    # same values in another dtype, byte order or memory layout: same digest
    assert state_sha256({"fc.weight": np.asfortranarray(state["fc.weight"].astype(">f4")),
                         "fc.bias": state["fc.bias"].astype(np.float64)}) == want
    assert state_sha256({"fc.weight": state["fc.weight"].T.copy().T, "fc.bias": state["fc.bias"]}) == want
    assert state_sha256({**state, "fc.bias": state["fc.bias"] + 1}) != want


def test_state_sha256_equals_the_former_torch_version():
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in _state().items()}
    h = hashlib.sha256()
    for name in sorted(tensors):  # the torch implementation this replaces, verbatim
        h.update(tensors[name].detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes())
    assert state_sha256(_state()) == h.hexdigest()


# ------------------------------------------------------------------------------------------- writer/reader

def test_written_file_reads_back_with_control_bytes_and_the_model(tmp_path):
    path = write_results(tmp_path / "run.h5", "rt")
    run = load_run(path)
    assert run.finished and run.rounds.tolist() == [1, 2, 3]
    assert run.control_bytes is not None and run.control_bytes.tolist() == [65, 66, 67]
    assert run.total_uplink_bytes == 1800 and run.clients_per_round == CPR and run.world_size == WORLD
    assert run.setting("gpu_names") == "none" and run.setting("threads_per_rank") == "1"
    with h5py.File(path, "r") as f:
        assert f["rounds/control_bytes"].dtype == np.int64
        assert f.attrs["final_model_sha256"] == state_sha256(_state()) == run.final_model_sha256
        for name, arr in _state().items():
            got = f[f"model/{name}"]
            assert got.dtype == np.dtype("<f4") and np.array_equal(got[()], arr)
        assert f["ranks/phase_seconds"].shape == (3, WORLD, len(PHASES))


def test_unversioned_file_without_control_bytes_and_its_resume(tmp_path):
    path = write_results(tmp_path / "old.h5", "old", rounds=2, finish=False)
    with h5py.File(path, "a") as f:  # as a version before format_version wrote it
        del f.attrs[FORMAT_VERSION_ATTR]
        del f["rounds/control_bytes"]
        for key in REPRO_ATTRS:
            del f.attrs[key]
    run = load_run(path)
    assert run.control_bytes is None and run.rounds_done == 2
    assert {run.setting(k) for k in REPRO_ATTRS} == {"unknown"}
    # resuming it with this version: the earlier rounds read as not recorded (-1)
    w = ResultsWriter.reopen(str(path), 2, {}, WORLD)
    w.append_round(_row(3))
    w.finalize(_state(), {})
    run = load_run(path)
    assert run.control_bytes.tolist() == [-1, -1, 67]
    assert run.format_version == (0, 0)  # still unversioned: its first rows do not hold what 1.0 promises


# ------------------------------------------------------------------------------------------- reproducibility

def _warning_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("warning:")]


def test_report_warns_when_runs_differ_in_reproducibility_settings(tmp_path, capsys):
    a = write_results(tmp_path / "a.h5", "a")
    b = write_results(tmp_path / "b.h5", "b", threads_per_rank=2, device_type="cuda", gpu_names=["NVIDIA H200"])
    c = write_results(tmp_path / "c.h5", "c", threads_per_rank=None)  # an older file: threads unknown
    assert main_report([str(a), str(b), str(c)]) == 0
    out = capsys.readouterr().out
    [warning] = _warning_lines(out)
    assert warning == ('warning: these runs differ in settings that decide bit-exact results '
                       '(see docs/design.md, "Reproducibility"): device_type: a=cpu, b=cuda, c=cpu; '
                       'threads_per_rank: a=1, b=2, c=unknown; gpu_names: a=none, b=NVIDIA H200, c=none')
    assert out.index("s/round: mean wall seconds per round.") < out.index(warning)  # after the table


def test_no_warning_for_matching_runs_or_only_missing_attributes(tmp_path, capsys):
    a = write_results(tmp_path / "a.h5", "a")
    b = write_results(tmp_path / "b.h5", "b")
    old = write_results(tmp_path / "old.h5", "old", cpu_capability=None, gpu_names=None)
    assert main_report([str(a), str(b), str(old)]) == 0
    assert _warning_lines(capsys.readouterr().out) == []
    odd = write_results(tmp_path / "odd.h5", "odd", torch_version="2.4.0")
    assert main_report([str(odd)]) == 0  # a single run compares with nothing
    assert _warning_lines(capsys.readouterr().out) == []


def test_report_warns_when_runs_differ_in_precision(tmp_path, capsys):
    a = write_results(tmp_path / "a.h5", "a")  # no precision key: an older file, fp32
    b = write_results(tmp_path / "b.h5", "b", precision="bf16")
    c = write_results(tmp_path / "c.h5", "c", precision="fp32")
    assert main_report([str(a), str(b), str(c)]) == 0
    assert _warning_lines(capsys.readouterr().out) == [
        "warning: these runs differ in precision (docs/precision.md): a=fp32, b=bf16, c=fp32"]
    assert main_report([str(a), str(c)]) == 0
    assert _warning_lines(capsys.readouterr().out) == []
