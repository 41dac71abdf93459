"""results/schema.py: RoundRow matches the datasets, travels through checkpoints (also the flat rows of checkpoint
format 1), the progress line reads it, and format_version decides how a file is read."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fedmrn_mpi.__main__ import main
from fedmrn_mpi.config import load_config
from fedmrn_mpi.results import ResultsFileError, ResultsWriter, load_run
from fedmrn_mpi.results.schema import (CLIENT_FIELDS, FORMAT_VERSION, FORMAT_VERSION_ATTR, NOT_RECORDED, PHASE_SECONDS,
                                       PHASES, RANK_FIELDS, ROUND_FIELDS, ClientColumns, RankColumns, RoundRow,
                                       parse_format_version, version_text)
from fedmrn_mpi.run import checkpoint
from fedmrn_mpi.run.checkpoint import CheckpointError, checkpoint_dir, save_checkpoint
from fedmrn_mpi.run.progress import progress_line
from fedmrn_mpi.run.resume import plan_start, resume_identity
from result_rows import round_row

CPR, WORLD = 2, 3
CFG = load_config(None, ["rounds=6", "num_clients=4", f"clients_per_round={CPR}", "data.name=synthetic"])
ATTRS = {"config_yaml": f"run_name: s\nrounds: 6\nclients_per_round: {CPR}\n", "world_size": WORLD,
         "algorithm": "fedavg"}


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _flat(row: RoundRow) -> dict:
    d = row.to_dict()
    return {**{k: v for k, v in d.items() if k not in ("clients", "ranks")},
            **{f"clients.{k}": v for k, v in d["clients"].items()}, **{f"ranks.{k}": v for k, v in d["ranks"].items()}}


def _same(a: RoundRow, b: RoundRow) -> bool:
    fa, fb = _flat(a), _flat(b)
    return fa.keys() == fb.keys() and all(
        (fa[k] is None and fb[k] is None) or np.array_equal(np.asarray(fa[k]), np.asarray(fb[k]), equal_nan=True)
        for k in fa)


def _file(path: Path, rounds: int = 2, finish: bool = False) -> Path:
    w = ResultsWriter(str(path), ATTRS, CPR, WORLD)
    for r in range(1, rounds + 1):
        w.append_round(round_row(r, WORLD, rank_bytes=True))
    if finish:
        w.finalize({"w": np.zeros(3, np.float32)}, {})
    else:
        w.close()
    return path


# -------------------------------------------------------------------------------------------------- the row

def test_the_row_has_exactly_the_datasets_fields():
    scalars = [n for n in _names(RoundRow) if n not in (PHASE_SECONDS, "clients", "ranks")]
    assert scalars == list(ROUND_FIELDS)
    assert _names(ClientColumns) == list(CLIENT_FIELDS)
    assert _names(RankColumns) == [PHASE_SECONDS, *RANK_FIELDS]


def test_evaluation_gives_a_new_row_and_the_dict_round_trips():
    row = round_row(3, WORLD, rank_bytes=True, test_accuracy=math.nan, test_loss=math.nan)
    done = row.with_evaluation(0.75, 0.5)
    assert math.isnan(row.test_accuracy) and (done.test_accuracy, done.test_loss) == (0.75, 0.5)
    assert _same(RoundRow.from_dict(done.to_dict()), done) and not _same(row, done)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.round = 4  # type: ignore[misc]


def test_the_progress_line_reads_the_row():
    row = round_row(3, WORLD, client_uplink=(1024, 1024), test_accuracy=0.5, wall_seconds=2.0)
    line = progress_line(row, 10, elapsed=6.0, rounds_run=3)
    assert line.startswith("round    3/10  acc  50.00%  loss 1.0000  train 1.0000  up 2.00 KiB  2.00 s/round")
    assert "slowest r1" in line and line.endswith("ETA 14s")


# -------------------------------------------------------------------------------------------- checkpoints

def _format_1_row(r: int, older: bool = False) -> dict:
    """The pending row as checkpoint format 1 held it (the server's flat dict); `older`: as a version before
    state_bytes, skipped_clients, clients_skipped and the per-rank bytes wrote it."""
    row = {"round": r, "train_loss": 0.25, "uplink_bytes": 100, "downlink_bytes": 200, "control_bytes": 8,
           "state_bytes": 0, "wall_seconds": 0.5, "resync": 0, "digest_mismatches": 0, "skipped_clients": 0,
           "phase_seconds": np.full(len(PHASES), 0.05), "clients_sampled": np.array([1, 3]),
           "clients_rank": np.array([1, 2]), "clients_uplink_bytes": np.array([50, 50]),
           "clients_train_loss": np.array([0.2, 0.3]), "clients_skipped": np.array([0, 0], dtype=np.int8),
           "rank_phase_seconds": np.full((WORLD, len(PHASES)), 0.05),
           "rank_bytes_sent": np.array([1, 2, 3]), "rank_bytes_received": np.array([4, 5, 6])}
    for key in ("state_bytes", "skipped_clients", "clients_skipped", "rank_bytes_sent", "rank_bytes_received"):
        if older:
            del row[key]
    return row


@pytest.mark.parametrize("older", [False, True])
def test_a_format_1_checkpoint_resumes_with_its_flat_row(tmp_path, monkeypatch, older):
    path = _file(tmp_path / "run.h5")
    monkeypatch.setattr(checkpoint, "FORMAT", 1)  # as the version before RoundRow saved it
    save_checkpoint(checkpoint_dir(str(path)), 3, {"state": {"w": torch.zeros(3)}, "pending":
                                                    _format_1_row(3, older), "identity": resume_identity(CFG)})
    start = plan_start(CFG, str(path), resume=True)
    assert (start.round, start.rows) == (4, 2)
    row = start.pending
    assert isinstance(row, RoundRow) and row.round == 3 and math.isnan(row.test_accuracy)
    assert row.clients.sampled.tolist() == [1, 3] and row.clients.train_loss.tolist() == [0.2, 0.3]
    if older:
        assert row.state_bytes == row.skipped_clients == NOT_RECORDED and row.ranks.bytes_sent is None
        assert row.clients.skipped.tolist() == [NOT_RECORDED] * CPR
    else:
        assert row.ranks.bytes_received.tolist() == [4, 5, 6] and row.clients.skipped.dtype == np.int8
    w = ResultsWriter.reopen(str(path), start.rows, {}, WORLD)
    w.append_round(row.with_evaluation(0.5, 1.5))
    w.close()
    run = load_run(path)
    assert run.rounds.tolist() == [1, 2, 3] and run.test_accuracy[-1] == 0.5 and run.train_loss[-1] == 0.25
    with h5py.File(path, "r") as f:  # a row without them leaves the optional per-rank datasets as they were
        assert f["ranks/bytes_sent"][:].tolist()[2:] == ([] if older else [[1, 2, 3]])


def test_a_checkpoint_row_that_does_not_read_is_a_checkpoint_error(tmp_path):
    path = _file(tmp_path / "run.h5")
    save_checkpoint(checkpoint_dir(str(path)), 3, {"state": {"w": torch.zeros(3)},
                                                    "pending": {"round": 3}, "identity": resume_identity(CFG)})
    with pytest.raises(CheckpointError, match="round-000003.pt: its pending results row is unusable"):
        plan_start(CFG, str(path), resume=True)


# ---------------------------------------------------------------------------------------- format_version

def _set_version(path: Path, value: str | None) -> None:
    with h5py.File(path, "a") as f:
        if value is None:
            del f.attrs[FORMAT_VERSION_ATTR]
        else:
            f.attrs[FORMAT_VERSION_ATTR] = value


def test_the_writer_records_the_format_version_and_resume_keeps_it(tmp_path):
    path = _file(tmp_path / "run.h5")
    assert load_run(path).format_version == FORMAT_VERSION == parse_format_version(version_text(FORMAT_VERSION))
    with h5py.File(path, "r") as f:
        assert f.attrs[FORMAT_VERSION_ATTR] == version_text(FORMAT_VERSION)
    ResultsWriter.reopen(str(path), 2, {}, WORLD).close()
    assert load_run(path).format_version == FORMAT_VERSION
    _set_version(path, None)
    ResultsWriter.reopen(str(path), 2, {}, WORLD).close()
    assert load_run(path).format_version == (0, 0)  # an unversioned file stays so


def test_a_newer_major_version_is_refused_in_one_line_naming_both(tmp_path, capsys):
    path = _file(tmp_path / "run.h5")
    newer = f"{FORMAT_VERSION[0] + 1}.0"
    _set_version(path, newer)
    with pytest.raises(ResultsFileError) as info:
        load_run(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and newer in text and version_text(FORMAT_VERSION) in text
    for cmd in ("status", "report"):
        capsys.readouterr()
        assert main([cmd, str(path)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and newer in err and version_text(FORMAT_VERSION) in err
    with pytest.raises(CheckpointError, match=f"cannot resume: .*results format {newer} is newer"):
        plan_start(CFG, str(path), resume=True)


def test_a_newer_minor_version_reads_and_a_garbled_one_does_not(tmp_path):
    path = _file(tmp_path / "run.h5", finish=True)
    _set_version(path, f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1] + 7}")
    assert load_run(path).rounds_done == 2
    _set_version(path, "one.zero")
    with pytest.raises(ResultsFileError, match="unreadable format_version 'one.zero'"):
        load_run(path)


def test_a_versioned_file_must_hold_its_datasets_an_unversioned_one_need_not(tmp_path):
    path = _file(tmp_path / "run.h5", finish=True)
    with h5py.File(path, "a") as f:
        del f["clients/skipped"]
    with pytest.raises(ResultsFileError, match="format 1.0 without clients/skipped"):
        load_run(path)
    _set_version(path, None)
    assert load_run(path).rounds_done == 2
