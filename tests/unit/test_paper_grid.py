"""The paper's experiment grid: configs/paper/ is what scripts/make_paper_configs.py writes, every config loads and
holds the paper's settings, and jobs/paper_array.sbatch maps array task i to the i-th selected config (run
outside Slurm with TASK=i and a fake mpirun that prints the command it was given)."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedmrn_mpi.config import load_config

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs" / "paper"
SCRIPTS = ROOT / "scripts"
JOB = ROOT / "jobs" / "paper_array.sbatch"

# The grid as the paper states it, written out independently of the generator:
# file prefix -> (data.name, model.name, rounds, Dirichlet alpha, classes per client)
DATASETS = {"fmnist": ("fashion_mnist", "cnn4", 100, 0.3, 3), "svhn": ("svhn", "cnn4", 100, 0.3, 3),
            "cifar10": ("cifar10", "cnn8", 200, 0.3, 3), "cifar100": ("cifar100", "cnn8", 200, 0.2, 20)}
# method -> (algorithm.name, lr, mask, sigma)
METHODS = {"fedavg": ("fedavg", 0.03, None, None), "fedmrn-binary": ("fedmrn", 0.1, "binary", 0.01),
           "fedmrn-signed": ("fedmrn", 0.1, "signed", 0.005)}


def expected_stems() -> list[str]:
    out = []
    for prefix, (_, model, _, alpha, cls) in DATASETS.items():
        for part in ("iid", f"dir{alpha}", f"cls{cls}"):
            out += [f"{prefix}_{model}_{part}_{m}" for m in METHODS]
    return sorted(out)


STEMS = expected_stems()


# ------------------------------------------------------------------------------------------------ the files


def test_committed_configs_are_what_the_generator_writes() -> None:
    res = subprocess.run([sys.executable, str(SCRIPTS / "make_paper_configs.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_exactly_the_36_configs_of_the_grid() -> None:
    assert len(STEMS) == 36
    assert sorted(p.stem for p in PAPER.glob("*.yaml")) == STEMS
    assert sorted(p.name for p in PAPER.iterdir()) == [f"{s}.yaml" for s in STEMS]  # nothing else in there


@pytest.mark.parametrize("stem", STEMS)
def test_config_loads_and_holds_the_paper_setting(stem: str) -> None:
    prefix, model, part, method = stem.split("_")
    data_name, model_name, rounds, alpha, cls = DATASETS[prefix]
    algo, lr, mask, sigma = METHODS[method]
    c = load_config(PAPER / f"{stem}.yaml")
    assert c.run_name == f"paper-{stem}"
    assert (c.seed, c.num_clients, c.clients_per_round, c.local_epochs, c.batch_size) == (1234, 100, 10, 10, 64)
    assert (c.lr, c.server_lr, c.eval_every, c.checkpoint_every, c.rounds) == (lr, 1.0, 1, 10, rounds)
    assert (c.data.name, c.model.name, model) == (data_name, model_name, model_name)
    assert c.data.dir is None  # the dataset's default directory (or DATA_DIR / data.dir at submission)
    if part == "iid":
        assert c.data.partition == "iid"
    elif part.startswith("dir"):
        assert (c.data.partition, c.data.alpha, part) == ("dirichlet", alpha, f"dir{alpha}")
    else:
        assert (c.data.partition, c.data.classes_per_client, part) == ("classes", cls, f"cls{cls}")
    assert c.algorithm.name == algo
    if mask is not None:
        a = c.algorithm.options
        assert (a.mask, a.noise, a.sigma, a.effective_sigma, a.training) == (mask, "uniform", sigma, sigma, "psm")


def test_spot_checks() -> None:
    c = load_config(PAPER / "cifar100_cnn8_dir0.2_fedmrn-signed.yaml")
    assert (c.data.alpha, c.algorithm.options.sigma, c.lr, c.rounds, c.model.name) == (0.2, 0.005, 0.1, 200, "cnn8")
    c = load_config(PAPER / "cifar10_cnn8_cls3_fedavg.yaml")
    assert (c.data.classes_per_client, c.lr, c.rounds, c.algorithm.name) == (3, 0.03, 200, "fedavg")
    c = load_config(PAPER / "cifar100_cnn8_cls20_fedmrn-binary.yaml")
    assert (c.data.classes_per_client, c.algorithm.options.sigma, c.algorithm.options.mask) == (20, 0.01, "binary")
    c = load_config(PAPER / "svhn_cnn4_iid_fedmrn-binary.yaml")
    assert (c.data.name, c.rounds, c.lr, c.model.name) == ("svhn", 100, 0.1, "cnn4")


@pytest.mark.parametrize("stem", STEMS)
def test_header_says_what_and_where_from(stem: str) -> None:
    lines = (PAPER / f"{stem}.yaml").read_text().splitlines()
    head = [ln for ln in lines[:4] if ln.startswith("#")]
    assert 2 <= len(head) <= 3 and not lines[len(head)].startswith("#")
    assert "scripts/make_paper_configs.py" in "\n".join(head)
    assert ("data.augment=none" in "\n".join(head)) == stem.startswith("cifar")
    assert all(len(ln) <= 120 for ln in lines)


def test_docs_and_jobs_name_existing_paper_configs() -> None:
    # the old hand-written configs are gone: every configs/paper/*.yaml the repository mentions exists
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "jobs").iterdir()),
             *sorted(SCRIPTS.glob("*.py"))]
    named = {m for p in texts if p.is_file() for m in re.findall(r"configs/paper/([\w.\-]+\.yaml)", p.read_text())}
    assert named, "the docs name no paper config"
    assert {n for n in named if not (PAPER / n).exists()} == set()


def test_grid_helper_check_and_write(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import config_grid
    finally:
        sys.path.remove(str(SCRIPTS))
    want = {tmp_path / "a.yaml": config_grid.render(["a"], {"x": 1, "s": {"b": True, "f": 0.5}}),
            tmp_path / "b.yaml": "y: 2\n"}
    assert want[tmp_path / "a.yaml"] == "# a\nx: 1\ns:\n  b: true\n  f: 0.5\n"
    (tmp_path / "old.yaml").write_text("z: 3\n")
    assert set(config_grid.check(tmp_path, want)) == {tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "old.yaml"}
    assert config_grid.write(tmp_path, want) == [tmp_path / "old.yaml"]  # stale files are removed
    assert config_grid.check(tmp_path, want) == []
    (tmp_path / "b.yaml").write_text("y: 3\n")
    assert config_grid.check(tmp_path, want) == [tmp_path / "b.yaml"]
    # seeds: the base seed keeps the plain name, any other ends it in -s<seed>
    assert [config_grid.seeded("iid-fedavg", s, 1234) for s in (1234, 2)] == ["iid-fedavg", "iid-fedavg-s2"]
    assert config_grid.parse_seeds("1,2,3") == [1, 2, 3]


# -------------------------------------------------------------------------------------------- the job array

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_job(tmp_path: Path, task: int | str, select: str | None = None, script: Path = JOB, **env_extra: str):
    """bash jobs/<script> outside Slurm: TASK picks the task, LAUNCHER=mpirun with a fake mpirun that prints its
    arguments one per line (so the printed lines are the command a task would run)."""
    fake = tmp_path / "fake-mpirun"
    fake.write_text("#!/bin/sh\nprintf 'ARG %s\\n' \"$@\"\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    for k in ("SELECT", "OVERRIDES", "DATA_DIR", "MODULES", "NTASKS", "PAPER_DIR", "COMPARE_DIR"):
        env.pop(k, None)
    env.update(FEDMRN_DIR=str(ROOT), TASK=str(task), LAUNCHER="mpirun", MPIRUN=str(fake), PYTHON="fake-python",
               VENV=str(tmp_path / "no-venv"), RESULTS=str(tmp_path / "res"))
    env.update(env_extra)
    if select is not None:
        env["SELECT"] = select
    res = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    argv = [ln[4:] for ln in res.stdout.splitlines() if ln.startswith("ARG ")]
    return res, argv


def selection(select: str) -> list[str]:
    return sorted(s for s in STEMS if any(fnmatch.fnmatchcase(s, p) for p in select.split()))


CASES = [("*", 0), ("*", 17), ("*", 35), ("fmnist_*", 0), ("fmnist_*", 8), ("cifar10_*", 4), ("*_iid_*", 11),
         ("*_fedmrn-signed", 3), ("cifar100_*_dir0.2_*", 2), ("svhn_* cifar10_*_iid_*", 5)]


@needs_bash
@pytest.mark.parametrize(("select", "task"), CASES)
def test_array_task_runs_the_ith_selected_config_with_resume(tmp_path: Path, select: str, task: int) -> None:
    stem = selection(select)[task]
    res, argv = run_job(tmp_path, task, select)
    assert res.returncode == 0, res.stdout + res.stderr
    out = tmp_path / "res" / f"{stem}.h5"
    assert argv == ["-n", "5", "fake-python", "-m", "fedmrn_mpi", "run", "-c", f"configs/paper/{stem}.yaml",
                    "-o", str(out), "--resume"]
    assert out.parent.is_dir()


@needs_bash
def test_selection_sizes() -> None:
    assert (len(selection("fmnist_*")), len(selection("cifar10_*")), len(selection("*_iid_*"))) == (9, 9, 12)
    assert selection("cifar10_*")[0] == "cifar10_cnn8_cls3_fedavg"  # cifar10_* is not cifar100_*
    assert re.search(r"^#SBATCH --array=0-35\b", JOB.read_text(), re.M)


@needs_bash
@pytest.mark.parametrize(("select", "task", "message"), [
    ("*", 36, "nothing to do"), ("fmnist_*", 9, "tasks 0-8"), ("*_iid_*", 12, "--array=0-11"),
    ("nothing_*", 0, "picks none"), ("*", "x", "not a number")])
def test_out_of_range_or_empty_selection_exits_2(tmp_path: Path, select: str, task, message: str) -> None:
    res, argv = run_job(tmp_path, task, select)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and argv == []


@needs_bash
def test_data_dir_goes_to_every_task_of_a_one_dataset_selection(tmp_path: Path) -> None:
    res, argv = run_job(tmp_path, 1, "svhn_*", DATA_DIR="/data/svhn", OVERRIDES="rounds=2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert argv[-3:] == ["--resume", "rounds=2", "data.dir=/data/svhn"]
    res, argv = run_job(tmp_path, 0, "*_iid_*", DATA_DIR="/data/svhn")
    assert res.returncode == 2 and "several datasets" in res.stderr and argv == []


@needs_bash
def test_prepared_dir_prepares_once_per_dataset_and_partition_and_reads_the_file(tmp_path: Path) -> None:
    fake_py = tmp_path / "fake-python"  # records `data prepare` and writes the file it is asked for
    fake_py.write_text("#!/bin/sh\necho \"PREP $*\" >> \"$PREP_LOG\"\n"
                       "while [ $# -gt 0 ]; do [ \"$1\" = -o ] && : > \"$2\"; shift; done\n")
    fake_py.chmod(0o755)
    env = dict(PYTHON=str(fake_py), PREPARED_DIR=str(tmp_path / "prep"), PREP_LOG=str(tmp_path / "log"))
    res, argv = run_job(tmp_path, 0, "fmnist_*_iid_*", **env)
    assert res.returncode == 0, res.stdout + res.stderr
    data = tmp_path / "prep" / "fmnist_cnn4_iid.h5"
    assert argv[-1] == f"data.prepared={data}" and data.exists() and argv[2] == str(fake_py)
    log = (tmp_path / "log").read_text().splitlines()
    assert log == [f"PREP -m fedmrn_mpi data prepare -c configs/paper/fmnist_cnn4_iid_fedavg.yaml -o {data}"]
    res, argv = run_job(tmp_path, 2, "fmnist_*_iid_*", **env)  # another method of the same row: no new prepare
    assert res.returncode == 0 and argv[-1] == f"data.prepared={data}" and "fedmrn-signed" in argv[argv.index("-c") + 1]
    assert len((tmp_path / "log").read_text().splitlines()) == 1


@needs_bash
def test_compare_array_keeps_its_mapping(tmp_path: Path) -> None:
    # compare_array.sbatch uses the same helper (jobs/common.sh fedmrn_array_config): task i = i-th config by name
    names = sorted(p.stem for p in (ROOT / "configs" / "compare").glob("*.yaml"))
    script = ROOT / "jobs" / "compare_array.sbatch"
    res, argv = run_job(tmp_path, len(names) - 1, script=script, SELECT="fmnist_*")  # SELECT is not compare's
    assert res.returncode == 0, res.stdout + res.stderr
    assert argv[argv.index("-c") + 1:] == [f"configs/compare/{names[-1]}.yaml", "-o",
                                           str(tmp_path / "res" / f"{names[-1]}.h5"), "--resume"]
    res, argv = run_job(tmp_path, len(names), script=script)
    assert res.returncode == 2 and "nothing to do" in res.stderr and argv == []
