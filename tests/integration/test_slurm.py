"""The jobs/*.sbatch scripts on a REAL local Slurm cluster (scripts/slurm_local.sh: munged, slurmctld and two
slurmd on this machine, fake GPUs): a scaling job array, a self-requeueing job that checkpoints on SIGUSR1 and
resumes, and the single-node and multi-node scripts. Inside the allocations the tests' MPI is used
(tests/launchers.py): srun --mpi=pmi2 for the `mpich` wheel (it has no PMIx) or --mpi=pmix for Open MPI, or that
MPI's own mpirun (which starts its daemons or proxies on the other node with srun).

Needs root and the Slurm packages; the fixture installs them when apt-get can (and skips, saying how, when it
cannot). Every wait has a timeout and the cluster is always taken down, leaving no process behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT, mpirun_path
from launchers import launcher
from slurm_helpers import Cluster, Timeline, ensure_slurm, rounds_written, wait_until

TINY = "configs/tiny.yaml"
REQUEUE_ROUNDS = 10
RANKS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = ensure_slurm()
    if why:
        pytest.skip(why)
    c = Cluster(tmp_path_factory.mktemp("slurm"), nodes=2, cpus=40, gpus=4)
    try:
        t0 = time.monotonic()
        c.up()
        print(f"\n[slurm] cluster up in {time.monotonic() - t0:.1f} s: 2 nodes, state in {c.state_dir}")
        yield c
    finally:
        out = c.down()
        left = c.leftover_processes()
        print(f"[slurm] cluster down; leftover processes: {left or 'none'}")
        assert not left, f"slurm_local.sh down left processes behind: {left}\n{out}"


def job_env(**kw) -> dict:
    """The variables every job script reads, pointed at this checkout and its venv."""
    env = {**launcher().variables(), "FEDMRN_DIR": str(ROOT), "PYTHON": sys.executable, "MPIRUN": mpirun_path(),
           "CONFIG": TINY, "OVERRIDES": "", "SRUN_MPI": launcher().srun_mpi}
    env.update({k: str(v) for k, v in kw.items()})
    return env


def final_sha(path: Path) -> str:
    with h5py.File(path, "r") as f:
        assert "final_model_sha256" in f.attrs, f"{path} is not complete"
        return str(f.attrs["final_model_sha256"])


def show(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"({path} missing)"


def test_every_script_is_accepted_as_written(cluster):
    """The #SBATCH lines of every script, unmodified, fit a 2-node, 40-CPU, 4-GPU cluster (sbatch --test-only)."""
    for script in ("single_node.sbatch", "multi_node.sbatch", "requeue.sbatch", "scaling_array.sbatch"):
        res = cluster.run("sbatch", "--test-only", str(ROOT / "jobs" / script), check=False)
        assert res.returncode == 0 and "to start at" in res.stderr, (script, res.stdout, res.stderr)
    # and an impossible request is refused at once (EnforcePartLimits=ALL), not left pending
    res = cluster.run("sbatch", "--test-only", "--nodes=3", str(ROOT / "jobs" / "multi_node.sbatch"), check=False)
    assert res.returncode != 0


def test_scaling_array_two_world_sizes_give_the_same_model(cluster, tmp_path):
    results = tmp_path / "results"
    env = job_env(CONFIGS=TINY, SIZES="2 3", RESULTS=results, LAUNCHER="srun")
    t0 = time.monotonic()
    jid = cluster.sbatch("scaling_array.sbatch", "--array=0-1", "--ntasks=3", "--cpus-per-task=1",
                         f"--output={tmp_path}/array-%A_%a.out", env_extra=env)
    states = cluster.wait(jid, timeout=150)
    logs = "\n".join(show(p) for p in sorted(tmp_path.glob("array-*.out")))
    print(f"[slurm] array job {jid}: {states} in {time.monotonic() - t0:.1f} s")
    assert sorted(states) == [f"{jid}_0 COMPLETED 0:0", f"{jid}_1 COMPLETED 0:0"], logs
    files = [results / "tiny-n2.h5", results / "tiny-n3.h5"]
    assert sorted(results.glob("*-n*.h5")) == files, logs
    shas = [final_sha(p) for p in files]
    assert shas[0] == shas[1], shas
    with h5py.File(files[0], "r") as a, h5py.File(files[1], "r") as b:
        assert (a.attrs["world_size"], b.attrs["world_size"]) == (2, 3)
        for key in ("round", "test_accuracy", "train_loss", "uplink_bytes"):
            assert np.array_equal(a["rounds/" + key][:], b["rounds/" + key][:], equal_nan=True), key


def test_requeue_checkpoints_requeues_and_resumes_to_the_same_model(cluster, tmp_path):
    out = tmp_path / "run.h5"
    log = tmp_path / "requeue.out"
    ckdir = tmp_path / "run.ckpt"
    over = f"rounds={REQUEUE_ROUNDS}"
    # the uninterrupted reference run of the same config, directly under mpirun, while the job runs
    ref_out = tmp_path / "ref.h5"
    ref = subprocess.Popen(launcher().python_command(RANKS, ["run", "-c", TINY, "-o", str(ref_out), over]),
                           cwd=ROOT, env=launcher().env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    tl = Timeline()
    try:
        env = job_env(LAUNCHER="mpirun", OUT=out, OVERRIDES=over)
        jid = cluster.sbatch("requeue.sbatch", f"--ntasks={RANKS}", f"--output={log}", env_extra=env)
        tl.mark(f"submitted job {jid} (requeue.sbatch, LAUNCHER=mpirun, {RANKS} ranks, {over})")

        def state():
            j = cluster.job(jid)
            return (j[0].get("JobState"), int(j[0].get("Restarts", 0))) if j else (None, 0)

        wait_until(lambda: state()[0] == "RUNNING", 60, what="job running")
        tl.mark("job RUNNING")
        # at least two rounds in the results file (read like a user would, while it is written)
        wait_until(lambda: rounds_written(out) >= 2 or state()[0] not in ("RUNNING", "PENDING"), 120,
                   what="2 rounds written")
        n = rounds_written(out)
        assert n >= 2 and state()[0] == "RUNNING", f"job state {state()}, {n} rounds\n{show(log)}"
        assert n < REQUEUE_ROUNDS, f"the run finished before the signal could be sent\n{show(log)}"
        cluster.run("scancel", "--signal=USR1", "--batch", jid)
        tl.mark(f"sent USR1 to the batch shell (scancel --signal=USR1 --batch; {n} rounds in the file)")

        # watch: checkpoint written, launcher exits 75, the script requeues, the job restarts and finishes
        end = time.monotonic() + 150
        final = None
        while time.monotonic() < end:
            st, restarts = state()
            if not tl.seen("checkpoint") and ckdir.is_dir() and list(ckdir.glob("round-*.pt")):
                tl.mark(f"checkpoint {sorted(p.name for p in ckdir.glob('round-*.pt'))[-1]} on disk")
            text = show(log)
            if not tl.seen("launcher") and "launcher exited with 75" in text:
                tl.mark("launcher (mpirun) exited with 75")
            if not tl.seen("requeue seen") and restarts >= 1:
                tl.mark(f"requeue seen: {st}, Restarts={restarts}")
                cluster.run("scontrol", "update", f"JobId={jid}", "StartTime=now+2", check=False)
                tl.mark("scontrol update StartTime=now+2")
            if not tl.seen("restarted") and "SLURM_RESTART_COUNT=1" in text:
                tl.mark("restarted: SLURM_RESTART_COUNT=1 in the log")
            if not tl.seen("resumed") and "resuming after round" in text:
                line = next(ln for ln in text.splitlines() if "resuming after round" in ln)
                tl.mark(f"resumed: {line.strip()}")
            if restarts >= 1 and st in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                final = st
                tl.mark(f"job {st} (Restarts={restarts}, {rounds_written(out)} rounds)")
                break
            if restarts == 0 and st not in ("RUNNING", "PENDING", "COMPLETING", "REQUEUED"):
                final = st
                tl.mark(f"job ended without a requeue: {st}")
                break
            time.sleep(0.1)
        ref_stdout = ref.communicate(timeout=120)[0]
        tl.mark(f"reference run (mpirun -n {RANKS}, uninterrupted) exited {ref.returncode}")
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()
        print("\n" + tl.format())
    text = show(log)
    assert final == "COMPLETED", f"final state {final}\n{text}\n{cluster.job(jid)}"
    assert ref.returncode == 0, ref_stdout
    for needle in ("SLURM_RESTART_COUNT=0", "got SIGUSR1", "launcher exited with 75", "requeueing job",
                   "SLURM_RESTART_COUNT=1", "--resume", "resuming after round", "launcher exited with 0"):
        assert needle in text, f"{needle!r} not in the job log:\n{text}"
    with h5py.File(out, "r") as f:
        assert list(f["rounds/round"][:]) == list(range(1, REQUEUE_ROUNDS + 1))
    assert final_sha(out) == final_sha(ref_out), text
    print(f"final_model_sha256 {final_sha(out)[:16]}... = the uninterrupted run's")


def test_single_node_and_multi_node_scripts_run_a_tiny_job(cluster, tmp_path):
    # single node, srun (the default launcher) with PMI-2; multi node: 2 nodes, one rank each, the venv's
    # mpirun starting its proxies on both nodes through srun
    # single node without FEDMRN_DIR: sbatch runs a copy of the script from slurmd's spool directory, which finds
    # the checkout (and jobs/common.sh) through the submit directory, as documented
    single_env = job_env(LAUNCHER="srun", OUT=tmp_path / "single.h5")
    del single_env["FEDMRN_DIR"]
    assert "FEDMRN_DIR" not in cluster.env
    single = cluster.sbatch("single_node.sbatch", "--ntasks=2", f"--output={tmp_path}/single.out",
                            env_extra=single_env)
    multi = cluster.sbatch("multi_node.sbatch", "--nodes=2", "--ntasks-per-node=1",
                           f"--output={tmp_path}/multi.out",
                           env_extra=job_env(LAUNCHER="mpirun", OUT=tmp_path / "multi.h5"))
    s_state = cluster.wait(single, timeout=120)
    m_state = cluster.wait(multi, timeout=120)
    print(f"[slurm] single_node {s_state}, multi_node {m_state}")
    assert s_state == [f"{single} COMPLETED 0:0"], show(tmp_path / "single.out")
    assert m_state == [f"{multi} COMPLETED 0:0"], show(tmp_path / "multi.out")
    assert final_sha(tmp_path / "single.h5") == final_sha(tmp_path / "multi.h5")
    with h5py.File(tmp_path / "multi.h5", "r") as f:
        assert f.attrs["world_size"] == 2
    # the multi-node job really used both nodes: each slurmd launched a step of it (mpirun's proxies)
    for node in ("node1", "node2"):
        slurmd_log = (cluster.state_dir / "log" / f"slurmd-{node}.log").read_text()
        assert f"StepId={multi}.0" in slurmd_log, (node, cluster.logs())
