"""precision: bf16 keeps the reproducibility contract within its precision: one digest for -n 1, 2 and 3, and an
exact resume (docs/precision.md)."""

import re

import pytest

from conftest import ROOT

pytestmark = pytest.mark.mpi
TINY = str(ROOT / "configs" / "tiny.yaml")
DIGEST = re.compile(r"final_model_sha256 ([0-9a-f]{64})")


def _digest(res) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return DIGEST.search(res.stdout).group(1)


def test_bf16_gives_one_digest_for_any_rank_count_and_differs_from_fp32(cli, tmp_path):
    bf16 = ["precision=bf16", "rounds=3"]
    one = _digest(cli(["run", "-c", TINY, "-o", str(tmp_path / "n1.h5"), *bf16]))
    two = _digest(cli(["run", "-c", TINY, "-o", str(tmp_path / "n2.h5"), *bf16], nprocs=2))
    three = _digest(cli(["run", "-c", TINY, "-o", str(tmp_path / "n3.h5"), *bf16, "batched_clients=true"],
                        nprocs=3))
    fp32 = _digest(cli(["run", "-c", TINY, "-o", str(tmp_path / "f.h5"), "rounds=3"], nprocs=2))
    assert one == two, "bf16: -n 1 and -n 2 differ"
    assert fp32 != two, "precision=bf16 changed nothing"
    # batched_clients changes the arithmetic (vmapped kernels) in fp32 too; within it, the rank count must not
    four = _digest(cli(["run", "-c", TINY, "-o", str(tmp_path / "n2b.h5"), *bf16, "batched_clients=true"],
                       nprocs=2))
    assert three == four, "bf16 with batched clients: -n 2 and -n 3 differ"


def test_bf16_resume_is_exact(cli, tmp_path):
    over = ["precision=bf16", "rounds=4", "checkpoint_every=1"]
    whole = _digest(cli(["run", "-c", TINY, "-o", str(tmp_path / "whole.h5"), *over], nprocs=2))
    out = str(tmp_path / "cut.h5")
    cut = cli(["run", "-c", TINY, "-o", out, *over], nprocs=2, env_extra={"FEDMRN_MPI_INJECT_FAULT": "1:3:raise"})
    assert cut.returncode != 0 and "round 3" in cut.stderr, cut.stderr
    resumed = cli(["run", "-c", TINY, "-o", out, *over, "--resume"], nprocs=3)
    assert "resuming after round 2" in resumed.stdout, resumed.stdout
    assert _digest(resumed) == whole
