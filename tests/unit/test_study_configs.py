"""The generated comparison configs: configs/study/ (scripts/make_study_configs.py) is the study as issue 17 states
it, configs/compare/ weights clients as the reference harness does, and every generator takes --seeds."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from fedmrn_mpi.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
STUDY = ROOT / "configs" / "study"
COMPARE = ROOT / "configs" / "compare"

# The study written out independently of the generator
METHODS = ["fedavg", "fedmrn-binary", "fedmrn-signed", "fedmrn-post", "signsgd-ef", "qsgd", "topk-ef", "eden",
           "fedpm", "fedbat"]
RECALIBRATED = ["signsgd-ef", "qsgd", "topk-ef", "eden", "fedmrn-post"]
REPEATED = ["fedavg", "fedmrn-binary", "fedmrn-signed", "signsgd-ef", "eden"]
STEMS = sorted([f"{part}-{m}" for part in ("iid", "dir0.3") for m in METHODS]
               + [f"iid-{m}-bnrecal" for m in RECALIBRATED]
               + [f"iid-{m}-s{seed}" for m in REPEATED for seed in (2, 3)])


def generate(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_committed_study_is_what_the_generator_writes() -> None:
    res = generate("make_study_configs.py", "--check")
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_study_has_exactly_its_35_runs() -> None:
    assert len(STEMS) == 35 == len(set(STEMS))
    assert sorted(p.name for p in STUDY.iterdir()) == sorted(f"{s}.yaml" for s in STEMS)  # nothing else there


@pytest.mark.parametrize("stem", STEMS)
def test_study_config_holds_the_study_setting(stem: str) -> None:
    c = load_config(STUDY / f"{stem}.yaml")
    assert c.run_name == f"study-{stem}"
    assert (c.data.name, c.model.name, c.num_clients, c.clients_per_round, c.batch_size) == \
        ("fashion_mnist", "cnn4", 100, 10, 64)
    assert (c.local_epochs, c.rounds, c.eval_every, c.checkpoint_every) == (2, 30, 5, 5)
    assert c.algorithm.weighting == "batches"
    part, rest = stem.split("-", 1)
    assert (c.data.partition, c.data.alpha) == (("iid", 0.3) if part == "iid" else ("dirichlet", 0.3))
    method, seed, recal = rest, 1, False
    if rest.endswith("-bnrecal"):
        method, recal = rest[:-len("-bnrecal")], True
    elif rest[-3:-1] == "-s":
        method, seed = rest[:-3], int(rest[-1])
    assert (c.seed, c.bn_recalibrate) == (seed, recal)
    # the method as configs/compare/ runs it: learning rate and every algorithm key but the paper-scale setting
    ref = load_config(COMPARE / f"{part}-{method}.yaml")
    assert (c.lr, c.algorithm, c.data, c.model) == (ref.lr, ref.algorithm, ref.data, ref.model)


def test_repeated_runs_differ_only_in_seed_and_output_names() -> None:
    # what `report` groups: the configs of one setting at seeds 1, 2, 3
    for m in REPEATED:
        base = load_config(STUDY / f"iid-{m}.yaml")
        for seed in (2, 3):
            c = load_config(STUDY / f"iid-{m}-s{seed}.yaml")
            assert dataclasses.replace(c, seed=base.seed, run_name=base.run_name) == base, m
    # the recalibrated runs are their own setting
    assert load_config(STUDY / "iid-qsgd-bnrecal.yaml") != dataclasses.replace(
        load_config(STUDY / "iid-qsgd.yaml"), run_name="study-iid-qsgd-bnrecal")


def test_generator_prints_the_count(tmp_path: Path) -> None:
    res = generate("make_study_configs.py", "--out", str(tmp_path))
    assert res.returncode == 0 and f"wrote 35 configs to {tmp_path}" in res.stdout, res.stdout + res.stderr
    res = generate("make_study_configs.py", "--seeds", "1,2,3,4", "--out", str(tmp_path))
    assert "wrote 40 configs" in res.stdout and (tmp_path / "iid-eden-s4.yaml").exists()


# ---------------------------------------------------------------------------------------- configs/compare


def test_compare_configs_weight_clients_by_batches_and_fedbat_uses_rho_6() -> None:
    for p in sorted(COMPARE.glob("*.yaml")):
        c = load_config(p)
        assert c.algorithm.weighting == "batches", p.name
        assert c.seed == 1234 and c.run_name == f"compare-{p.stem}"
    assert load_config(COMPARE / "iid-fedbat.yaml").algorithm.options.rho == 6.0
    assert load_config(None, ["algorithm.name=fedbat"]).algorithm.options.rho == 6.0  # also the default now


# ----------------------------------------------------------------------------------------------- --seeds


@pytest.mark.parametrize(("script", "stem", "base", "default"), [
    ("make_compare_configs.py", "iid-fedavg", 1234, "1234"),
    ("make_paper_configs.py", "fmnist_cnn4_iid_fedavg", 1234, "1234"),
    ("make_study_configs.py", "iid-fedavg", 1, "1,2,3"),  # the study's repeated runs
])
def test_seeds_give_one_config_per_seed_named_by_seed(tmp_path: Path, script: str, stem: str, base: int,
                                                      default: str) -> None:
    committed = ROOT / "configs" / {"make_compare_configs.py": "compare", "make_paper_configs.py": "paper",
                                    "make_study_configs.py": "study"}[script]
    res = generate(script, "--seeds", f"{base},7,8", "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    prefix = {"make_compare_configs.py": "compare-", "make_paper_configs.py": "paper-",
              "make_study_configs.py": "study-"}[script]
    want = (committed / f"{stem}.yaml").read_text()
    assert (tmp_path / f"{stem}.yaml").read_text() == want  # the base seed keeps its name and its bytes
    for seed in (7, 8):
        text = (tmp_path / f"{stem}-s{seed}.yaml").read_text()
        assert text == want.replace(f"run_name: {prefix}{stem}\n", f"run_name: {prefix}{stem}-s{seed}\n") \
                           .replace(f"\nseed: {base}\n", f"\nseed: {seed}\n")
    # without --seeds: exactly the committed files
    assert generate(script, "--check").returncode == 0
    res = generate(script, "--check", "--seeds", default)
    assert res.returncode == 0, res.stdout  # the default --seeds


@pytest.mark.parametrize("bad", ["1,1", "x", "-1", ""])
def test_bad_seeds_are_usage_errors(bad: str) -> None:
    res = generate("make_compare_configs.py", "--check", "--seeds", bad)
    assert res.returncode == 2 and "--seeds" in res.stderr
