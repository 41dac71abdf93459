"""Rank 0 killed while it writes, and writes that fail (full disk), under real mpirun jobs (issue 11, items 3
and 4; docs/design.md "Results file", "Checkpoints and stop signals").

Killed: FEDMRN_MPI_INJECT_FAULT="0:3:kill-in-results" / "0:3:kill-in-checkpoint" SIGKILLs rank 0 in the middle
of writing round 3's results row / checkpoint. Full disk: RLIMIT_FSIZE (writes past it fail with EFBIG, which
Python reports as OSError since it ignores SIGXFSZ), on the whole job from the start (a checkpoint is the first
write to fail) or set with prlimit on rank 0 while it waits before its first results row (wait-before-results).
Every test waits for events (process exit, marker files), never for fixed times."""

import os
import resource
import subprocess
import time

import h5py
import pytest

from conftest import ROOT, run_cli
from launchers import launcher
from fedmrn_mpi.report import main_status
from fedmrn_mpi.results import load_run
from fedmrn_mpi.run.checkpoint import checkpoint_dir, latest_checkpoint, list_checkpoints
from fedmrn_mpi.run.faults import FAULT_ENV, MARKER_ENV

OVER = ["rounds=5", "checkpoint_every=1", "eval_every=1"]


def _args(out, *over):
    return ["run", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(out), *over]


def _env(extra=None):
    return launcher().env(extra)


def _mpirun(args, nprocs):
    return launcher().python_command(nprocs, args)


def _digest(path):
    with h5py.File(path, "r") as f:
        return f.attrs["final_model_sha256"]


def _no_temp_files(*dirs):
    return not [p for d in dirs for p in os.listdir(d) if ".tmp" in p]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """final_model_sha256 of the uninterrupted run (one process: results do not depend on the rank count)."""
    d = tmp_path_factory.mktemp("ref")
    res = run_cli(_args(d / "ref.h5", *OVER), None, d)
    assert res.returncode == 0, res.stderr
    return _digest(d / "ref.h5")


def _resume_matches(cli, out, over, nprocs, after, digest):
    res = cli(_args(out, *over, "--resume"), nprocs=nprocs, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"resuming after round {after} " in res.stdout
    assert _digest(out) == digest
    assert load_run(out).rounds.tolist() == list(range(1, int(over[0].split("=")[1]) + 1))
    assert _no_temp_files(out.parent, checkpoint_dir(str(out)))


@pytest.mark.parametrize("kind,resume_after", [("kill-in-results", 3), ("kill-in-checkpoint", 2)])
def test_rank0_killed_while_writing_leaves_a_readable_file_and_a_usable_checkpoint(cli, tmp_path, reference,
                                                                                  capsys, kind, resume_after):
    out = tmp_path / "k.h5"
    t0 = time.monotonic()
    res = cli(_args(out, *OVER), nprocs=3, timeout=120, env_extra={FAULT_ENV: f"0:3:{kind}"})
    assert res.returncode != 0, res.stdout  # the launcher ends the job when a rank dies
    assert time.monotonic() - t0 < 90
    # row 3 is written during round 4 (after its evaluation), after checkpoint 3; row 2 during round 3, before
    # checkpoint 3: either way rounds 1 and 2 are complete, whatever part of the interrupted write reached disk
    run = load_run(out)
    assert run.rounds.tolist() == [1, 2] and not run.finished
    assert main_status([str(out)]) == 0 and "round     : 2 / 5" in capsys.readouterr().out
    ck = latest_checkpoint(checkpoint_dir(str(out)))
    assert ck["round"] == resume_after
    _resume_matches(cli, out, OVER, 3 if kind == "kill-in-results" else 2, resume_after, reference)


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(cli, tmp_path):
    """Error feedback keeps a residual per client seen so far, so checkpoint 2 is larger than checkpoint 1: a
    file size limit between the two (the results file stays far below it) fails checkpoint 2, the first write
    that reaches it."""
    over = ["rounds=3", "checkpoint_every=1", "algorithm.name=topk", "algorithm.error_feedback=true",
            "algorithm.fraction=0.05"]
    ref = tmp_path / "ref.h5"
    assert cli(_args(ref, *over)).returncode == 0  # keeps checkpoints 1 and 2 (none after the last round)
    sizes = [os.path.getsize(p) for p in list_checkpoints(checkpoint_dir(str(ref)))]
    assert len(sizes) == 2 and sizes[1] > sizes[0] + 200_000, sizes
    limit = (sizes[0] + sizes[1]) // 2
    out, ckdir = tmp_path / "full.h5", checkpoint_dir(str(tmp_path / "full.h5"))
    res = subprocess.run(_mpirun(_args(out, *over), 3), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert res.returncode == 1, res.stdout + res.stderr
    assert (f"fedmrn-mpi: rank 0 failed in round 2: cannot write checkpoint {ckdir}/round-000002.pt: "
            f"File too large (errno 27)\n") in res.stderr
    assert "Traceback" not in res.stderr
    assert [os.path.basename(p) for p in list_checkpoints(ckdir)] == ["round-000001.pt"]
    ck = latest_checkpoint(ckdir)  # intact and usable (resuming from a checkpoint: the other tests here)
    assert ck["round"] == 1 and ck["client_states"] and _no_temp_files(ckdir)
    assert load_run(out).rounds.tolist() == [1]  # row 1 is written in round 2, before checkpoint 2


def _wait_for(path, proc, timeout=120):
    """The marker's text (a pid), once the job has written it."""
    t0 = time.monotonic()
    while not (os.path.exists(path) and open(path).read().strip()):
        assert proc.poll() is None, f"the job ended before {path} appeared"
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.02)
    return open(path).read().strip()


def test_full_disk_at_a_results_row_keeps_the_file_readable(cli, tmp_path, reference):
    """Rank 0 waits before writing row 1 (its first row, which allocates the datasets' first chunks) while its
    file size limit is set a little above the file's size: part of the row may reach the file, the rest fails."""
    out, marker = tmp_path / "row.h5", str(tmp_path / "m")
    env = _env({FAULT_ENV: "0:1:wait-before-results", MARKER_ENV: marker})
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(_mpirun(_args(out, *OVER), 3), cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        try:
            pid = int(_wait_for(marker + ".waiting", proc))
            limit = os.path.getsize(out) + 4096
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))
            open(marker + ".go", "w").close()
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = (tmp_path / "log.txt").read_text()
    assert rc == 1, text
    assert (f"fedmrn-mpi: rank 0 failed in round 2: cannot write round 1 to the results file {out}: "
            f"File too large (errno 27)\n") in text and "Traceback" not in text
    assert load_run(out).rounds.tolist() == []  # round 1 was the first row, and it is not complete
    ckdir = checkpoint_dir(str(out))
    assert [os.path.basename(p) for p in list_checkpoints(ckdir)] == ["round-000001.pt"]
    _resume_matches(cli, out, OVER, 2, 1, reference)
