"""jobs/run_local.sh: a set of configs under mpirun, one after another, with --resume (stop, continue, failure)."""

import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np

from conftest import ROOT
from launchers import launcher
from fedmrn_mpi.run.stop import EXIT_STOPPED

SCRIPT = ROOT / "jobs" / "run_local.sh"
NPROCS = 2
FAULT, MARKER = "FEDMRN_MPI_INJECT_FAULT", "FEDMRN_MPI_FAULT_MARKER"  # fedmrn_mpi/run/faults.py


def _config(tmp_path: Path, name: str, rounds: int, extra: str = "") -> Path:
    """configs/tiny.yaml (synthetic data, 8 clients) as `name`, with `rounds` rounds."""
    text = (ROOT / "configs" / "tiny.yaml").read_text()
    assert "run_name: tiny\n" in text and "rounds: 2\n" in text
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("run_name: tiny\n", f"run_name: {name}\n")
                    .replace("rounds: 2\n", f"rounds: {rounds}\n") + extra)
    return path


def _env(results: Path, **extra: str) -> dict:
    """The launcher's environment (PYTHONPATH, Open MPI's variables) and the runner's settings."""
    lau = launcher()
    env = lau.env({"MPIRUN": lau.path, "PYTHON": lau.python, "RESULTS": str(results),
                   "FEDMRN_MPI_SIGNAL_DEBOUNCE": "0.05", **extra})
    for key in ("MPIRUN_ARGS", "OVERRIDES", FAULT, MARKER):
        if key not in extra:
            env.pop(key, None)
    return env


def _run(configs, env, cwd, timeout=300):
    return subprocess.run(["bash", str(SCRIPT), "-n", str(NPROCS), *map(str, configs)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"the runner ended before {path} appeared"
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.02)


def _complete(path: Path) -> tuple[str, dict]:
    with h5py.File(path, "r") as f:
        assert "final_model_sha256" in f.attrs, f"{path} is not complete"
        return f.attrs["final_model_sha256"], {k: f["rounds/" + k][:] for k in
                                               ("round", "test_accuracy", "test_loss", "train_loss", "uplink_bytes")}


def test_interrupted_set_continues_to_the_uninterrupted_results(tmp_path):
    a, b = _config(tmp_path, "a", 2), _config(tmp_path, "b", 4)
    ref = _run([a, b], _env(tmp_path / "ref"), tmp_path)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    assert "all 2 configs complete" in ref.stdout

    # Interrupted: rank 1 pauses at the start of round 3's training until the stop request reaches it. Only b has a
    # round 3, so the runner is inside b's round 3 when the marker appears; Ctrl-C (SIGINT) to the runner must
    # reach the ranks as the stop request (SIGUSR1): b checkpoints after round 3 and exits 75, so does the runner.
    marker = tmp_path / "hold"
    env = _env(tmp_path / "run", **{FAULT: "1:3:pause", MARKER: str(marker)})
    with open(tmp_path / "log.txt", "w") as log:
        # SIGINT as at a terminal: a test suite started in the background of a non-interactive shell (CI, nohup)
        # inherits SIGINT ignored, and bash cannot trap a signal ignored on entry, so the child gets it back
        proc = subprocess.Popen(["bash", str(SCRIPT), "-n", str(NPROCS), str(a), str(b)], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            _wait_file(Path(str(marker) + ".holding"), proc)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = (tmp_path / "log.txt").read_text()
    assert rc == EXIT_STOPPED, text
    assert "got SIGINT: asked the run to stop" in text and "b.yaml stopped with a checkpoint (exit 75)" in text, text
    assert "1 of 2 configs complete" in text and "Continue with the same command" in text, text
    assert "checkpoint after round 3" in text, text
    _complete(tmp_path / "run" / "a.h5")
    with h5py.File(tmp_path / "run" / "b.h5", "r") as f:
        assert "final_model_sha256" not in f.attrs and f["rounds/round"].shape[0] < 4

    # The same command again: a is left alone, b continues from its checkpoint.
    again = _run([a, b], _env(tmp_path / "run"), tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "a.h5 is already complete" in again.stdout and "resuming after round 3" in again.stdout, again.stdout
    for name in ("a", "b"):
        want_digest, want = _complete(tmp_path / "ref" / f"{name}.h5")
        got_digest, got = _complete(tmp_path / "run" / f"{name}.h5")
        assert got_digest == want_digest, name
        for key in want:
            assert np.array_equal(got[key], want[key], equal_nan=True), (name, key)


def test_a_failing_config_stops_the_set_naming_it(tmp_path):
    bad = _config(tmp_path, "bad", 2, extra="no_such_key: 1\n")
    good = _config(tmp_path, "good", 2)
    res = _run([bad, good], _env(tmp_path / "res"), tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"FAILED: {bad} exited with status 2" in res.stdout, res.stdout
    assert "no_such_key" in res.stdout + res.stderr
    assert "good.yaml" not in res.stdout.split("FAILED")[0] and not (tmp_path / "res" / "good.h5").exists()


def test_bad_arguments_exit_2_before_any_run(tmp_path):
    a = _config(tmp_path, "a", 2)
    (tmp_path / "sub").mkdir()
    twin = _config(tmp_path / "sub", "a", 2)
    env = _env(tmp_path / "res", MPIRUN="false")  # nothing may be launched
    for args, message in [([str(a)], "-n P is missing"), (["-n", "0", str(a)], "positive number of ranks"),
                          (["-n", "2"], "no config given"),
                          (["-n", "2", str(tmp_path / "none.yaml")], "no config file"),
                          (["-n", "2", str(a), str(twin)], "would both write")]:
        res = subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 2 and message in res.stderr, (args, res.stdout, res.stderr)
    assert not (tmp_path / "res").exists()
    assert os.access(SCRIPT, os.X_OK)


def test_an_unfinished_file_without_checkpoint_is_set_aside_and_rerun(tmp_path):
    """Killed before its first checkpoint, a run leaves a results file --resume refuses; the runner moves it
    aside (never deletes it) and starts the config over."""
    a = _config(tmp_path, "a", 2)
    res_dir = tmp_path / "res"
    res_dir.mkdir()
    with h5py.File(res_dir / "a.h5", "w") as f:  # what a killed run leaves: rows, no final model, no .ckpt
        f.attrs["config_yaml"] = "partial"
    res = _run([a], _env(res_dir), tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    aside = [p for p in res_dir.iterdir() if p.name.startswith("a.h5.unresumable-")]
    assert len(aside) == 1 and "moved to" in res.stdout, res.stdout
    with h5py.File(aside[0], "r") as f:
        assert f.attrs["config_yaml"] == "partial"
    _complete(res_dir / "a.h5")
    again = _run([a], _env(res_dir), tmp_path)  # a complete file is never moved
    assert again.returncode == 0 and "moved to" not in again.stdout, again.stdout
