"""Damaged results files and checkpoints (issue 11 item 5): bytes flipped or overwritten, files cut short.

- `status` and `report` on a damaged results file exit 0 (the damage hit bytes they do not read, or values they
  print) or 2 with one stderr line naming the file; never a traceback, and never a hang: HDF5 opened in SWMR
  mode retries a damaged metadata read with growing sleeps for minutes, so a file no job holds is opened
  normally first (results/reader.py: _open).
- `latest_checkpoint` with the newest checkpoint damaged returns it unchanged (unused bytes) or falls back to
  the previous one; with both damaged it raises CheckpointError naming both files. torch's zip reader does not
  check the archive's CRC32s, so before this a flipped bit in a tensor loaded silently (run/checkpoint.py:
  _check_archive); an intact archive holding the wrong types (state not tensors, round not an int...) is a
  CheckpointError too (_check_contents).
- `plan_start(resume=True)` with damaged checkpoints returns a Start from a usable checkpoint or raises
  CheckpointError.
"""

from __future__ import annotations

import faulthandler
import sys
import time
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from fedmrn_mpi.__main__ import main
from fedmrn_mpi.config import load_config
from fedmrn_mpi.report import front
from fedmrn_mpi.results import ResultsWriter
from fedmrn_mpi.results.schema import (CLIENT_FIELDS, PHASES, RANK_FIELDS, ROUND_FIELDS, ClientColumns, RankColumns,
                                       RoundRow)
from fedmrn_mpi.run.checkpoint import (CheckpointError, checkpoint_dir, latest_checkpoint, list_checkpoints,
                                       load_checkpoint, save_checkpoint)
from fedmrn_mpi.run.resume import Start, plan_start, resume_identity

CPR, WORLD = 2, 3
CFG = load_config(None, ["rounds=6", "num_clients=4", f"clients_per_round={CPR}", "data.name=synthetic"])
STATE = {"fc.weight": torch.linspace(-1, 1, 12).reshape(3, 4), "fc.bias": torch.tensor([0.25, -0.5, 3.0])}


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _row(r: int) -> RoundRow:
    """A results row for every field the schema has (so new fields need no change here)."""
    scalars = {k: (0.1 * r if np.dtype(dt).kind == "f" else r) for k, dt in ROUND_FIELDS.items()}
    scalars.update({"round": r, "test_accuracy": 0.2 * r, "test_loss": 2.0 - 0.1 * r})
    clients = {k: (np.array([2 * r % 4, 2 * r % 4 + 1]) if k != "skipped" else np.zeros(CPR)).astype(dt)
               for k, dt in CLIENT_FIELDS.items()}
    return RoundRow(**scalars, phase_seconds=np.full(len(PHASES), 0.05), clients=ClientColumns(**clients),
                    ranks=RankColumns(np.full((WORLD, len(PHASES)), 0.05),
                                      **{k: np.arange(WORLD) * 100 for k in RANK_FIELDS}))


def _results(path: Path, rounds: int, finish: bool) -> Path:
    attrs = {"config_yaml": f"run_name: fuzz\nrounds: {CFG.rounds}\nclients_per_round: {CPR}\n", "version": "0.1.0",
             "world_size": WORLD, "algorithm": "fedmrn", "num_masked_params": 12, "num_unmasked_values": 3}
    w = ResultsWriter(str(path), attrs, CPR, WORLD)
    for r in range(1, rounds + 1):
        w.append_round(_row(r))
    if finish:
        w.finalize({k: v.numpy() for k, v in STATE.items()}, {"rounds_completed": rounds, "total_seconds": 1.5})
    else:
        w.close()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A finished results file, an unfinished one with checkpoints after rounds 2 and 4 (4's row pending)."""
    d = tmp_path_factory.mktemp("files")
    finished = _results(d / "finished.h5", 3, finish=True)
    out = _results(d / "run.h5", 3, finish=False)
    ckdir = checkpoint_dir(str(out))
    for r in (2, 4):
        save_checkpoint(ckdir, r, {"state": {k: v * r for k, v in STATE.items()}, "identity": resume_identity(CFG),
                                   "pending": _row(r).to_dict() if r == 4 else None, "config_sha256": "x",
                                   "version": "0.1.0",
                                   "seed": CFG.seed, "client_states": {}})
    cks = list_checkpoints(ckdir)
    return {"dir": d, "finished": finished, "finished_raw": finished.read_bytes(), "run": out,
            "run_raw": out.read_bytes(), "ckdir": ckdir, "cks": cks, "ck_raw": [Path(p).read_bytes() for p in cks]}


# damage: (kind, offset or length, value); offsets are taken modulo the file's size
damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(0, 7)),
    st.tuples(st.just("byte"), st.integers(0, 2**20), st.integers(0, 255)),
    st.tuples(st.just("zeros"), st.integers(0, 2**20), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 2**20), st.just(0)),
)


def _damaged(raw: bytes, ops) -> bytes:
    b = bytearray(raw)
    for kind, off, val in ops:
        if not b:
            break
        off %= len(b)
        if kind == "flip":
            b[off] ^= 1 << val
        elif kind == "byte":
            b[off] = val
        elif kind == "zeros":
            b[off: off + val] = bytes(len(b[off: off + val]))
        else:
            del b[off:]
    return bytes(b)


@pytest.fixture
def watchdog():
    """A hang (HDF5 retrying damaged metadata) must fail the run with a stack dump, not block CI forever."""
    faulthandler.dump_traceback_later(300, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()


def _cli(capsys, args):
    capsys.readouterr()
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------------------------- results files


_BASE: dict = {}


@fuzz(120)  # ~60 ms each: two commands, each reading the file in a forked child first
@given(ops=st.lists(damage, min_size=1, max_size=3))
@example(ops=[("truncate", 12945, 0)])   # a SWMR reader retried the damaged metadata for minutes (a hang)
@example(ops=[("flip", 51093, 0)])       # the same for a flipped bit
@example(ops=[("truncate", 0, 0)])       # an empty file
@example(ops=[("zeros", 0, 8)])          # no HDF5 signature
def test_status_and_report_on_a_damaged_results_file(ops, files, capsys, watchdog, monkeypatch):
    monkeypatch.setattr(front, "READ_TIMEOUT", 3.0)  # reading this small file takes milliseconds
    path = files["dir"] / "damaged.h5"
    if not _BASE:  # the outputs for the undamaged file, at the same path
        path.write_bytes(files["finished_raw"])
        _BASE.update({c: _cli(capsys, [c, str(path)]) for c in ("status", "report")})
        assert all(rc == 0 for rc, _, _ in _BASE.values()), _BASE
    base = _BASE
    data = _damaged(files["finished_raw"], ops)
    path.write_bytes(data)
    for cmd in ("status", "report"):
        rc, out, err = _cli(capsys, [cmd, str(path)])
        assert "Traceback" not in out + err
        if rc == 0:
            assert err == "", err
            event(f"{cmd}: ok, {'same output' if out == base[cmd][1] else 'output changed'}")
        else:
            assert rc == 2
            assert len(err.splitlines()) == 1 and str(path) in err, err
            assert out == ""  # nothing printed before the files are read
            event(f"{cmd}: error{' (HDF5 looped: timed out)' if 'did not finish' in err else ''}")
    if data == files["finished_raw"]:
        assert rc == 0 and out == base["report"][1]


def _heap_overrun(raw: bytes) -> bytes:
    """The last object of the file's first global heap collection (where string attributes live) grows by 1 KiB,
    into the heap's free space: HDF5 2.0 then loops forever reading the attributes (found by the fuzzing)."""
    b = bytearray(raw)
    g = b.find(b"GCOL")
    end, pos, last = g + int.from_bytes(b[g + 8: g + 16], "little"), g + 16, None
    while pos + 16 <= end and int.from_bytes(b[pos: pos + 2], "little"):
        last, pos = pos, pos + 16 + (int.from_bytes(b[pos + 8: pos + 16], "little") + 7) // 8 * 8
    b[last + 9] += 4
    return bytes(b)


def test_a_file_on_which_hdf5_loops_forever(files, capsys, monkeypatch, watchdog):
    # status/report read the files in a forked child first and name the file it could not finish
    monkeypatch.setattr(front, "READ_TIMEOUT", 1.0)
    bad = files["dir"] / "loops.h5"
    bad.write_bytes(_heap_overrun(files["finished_raw"]))
    t = time.monotonic()
    for args in (["status", str(bad)], ["report", str(files["finished"]), str(bad)]):
        rc, out, err = _cli(capsys, args)
        assert rc == 2 and out == "" and len(err.splitlines()) == 1, err
        assert f": error: {bad}: reading did not finish within 1 s" in err, err
    assert time.monotonic() - t < 60


def test_the_unfinished_results_file_still_reads(files, capsys):
    rc, out, err = _cli(capsys, ["status", str(files["run"])])
    assert rc == 0 and "round     : 3 / 6" in out, out + err


# ------------------------------------------------------------------------------------------------ checkpoints


def _same(ck: dict, round_: int) -> bool:
    want = {k: v * round_ for k, v in STATE.items()}
    return (ck["round"] == round_ and set(ck["state"]) == set(want)
            and all(torch.equal(ck["state"][k], want[k]) for k in want) and ck["identity"] == resume_identity(CFG))


def _restore(files) -> None:
    for p, raw in zip(files["cks"], files["ck_raw"]):
        Path(p).write_bytes(raw)


def _damage_checkpoints(files, ops, older_ops=None) -> tuple[str, str]:
    """Restore the files, damage the newest checkpoint (and the older one when `older_ops` is given); returns
    (older, newest) paths."""
    _restore(files)
    older, newest = files["cks"]
    Path(newest).write_bytes(_damaged(files["ck_raw"][1], ops))
    if older_ops is not None:
        Path(older).write_bytes(_damaged(files["ck_raw"][0], older_ops))
    return older, newest


@fuzz(200)
@given(ops=st.lists(damage, min_size=1, max_size=3), both=st.booleans(), older_ops=st.lists(damage, min_size=1,
                                                                                           max_size=2))
def test_latest_checkpoint_with_damaged_files(ops, both, older_ops, files):
    older, newest = _damage_checkpoints(files, ops, older_ops if both else None)
    try:
        ck = latest_checkpoint(files["ckdir"])
    except CheckpointError as exc:
        text = str(exc)
        assert both, f"the intact older checkpoint was not used: {text}"
        assert older in text and newest in text and "\n" not in text, text
        event("CheckpointError naming both files")
        return
    # never a silently different state: the newest unchanged, or the older one
    assert (ck["path"] == newest and _same(ck, 4)) or (ck["path"] == older and _same(ck, 2)), ck["path"]
    if ck["path"] == newest:
        assert isinstance(ck["pending"], dict) and ck["pending"]["round"] == 4
    event(f"used round {ck['round']}")


# values a damaged-but-intact archive (or a foreign file) could hold where a checkpoint has its fields
odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2**70), st.floats(), st.text(max_size=5),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(torch.zeros(2)), st.just({"w": [1, 2]}), st.just({1: torch.zeros(1)}),
    st.just({"__ndarray__": [1, 2]}), st.just({"__ndarray__": [1, 2], "dtype": "no-such-dtype"}),
    st.just({"__ndarray__": [[1], 2], "dtype": "int64"}),
)
FIELDS = ("format", "round", "state", "identity", "pending", "client_states")


@fuzz(150)
@given(changes=st.dictionaries(st.sampled_from(FIELDS + ("extra",)), odd_values, min_size=1, max_size=3),
       drop=st.lists(st.sampled_from(FIELDS), max_size=2))
@example(changes={"format": torch.zeros(2)}, drop=[])                           # RuntimeError comparing it to 1
@example(changes={"round": True}, drop=[])
@example(changes={"round": "4"}, drop=[])
@example(changes={"state": [torch.zeros(1)]}, drop=[])
@example(changes={"pending": {"x": {"__ndarray__": [1, 2]}}}, drop=[])       # KeyError 'dtype' escaped
@example(changes={"extra": 1}, drop=["state"])                              # KeyError 'state' escaped
@example(changes={"client_states": {"7": {"w": "x"}}}, drop=["identity"])
def test_a_checkpoint_holding_the_wrong_types(changes, drop, tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    data = {"format": 1, "round": 4, "state": dict(STATE), "identity": "abc", "pending": None, "client_states": {}}
    data.update(changes)
    for k in drop:
        data.pop(k, None)
    path = str(d / "round-000004.pt")
    torch.save(data, path)
    try:
        ck = load_checkpoint(path)
    except CheckpointError as exc:
        assert path in str(exc) and "\n" not in str(exc)
        event("CheckpointError")
        return
    # accepted: everything a resume reads has its type
    assert type(ck["round"]) is int and ck["round"] >= 0
    assert ck["state"] and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ck["state"].items())
    assert isinstance(ck["identity"], str) and isinstance(ck.get("pending"), (dict, type(None)))
    event("accepted")


# --------------------------------------------------------------------------------------------------- resume


@fuzz(100)
@given(ops=st.lists(damage, min_size=1, max_size=2), both=st.booleans())
def test_plan_start_with_damaged_checkpoints(ops, both, files):
    older, newest = _damage_checkpoints(files, ops, ops if both else None)
    try:
        start = plan_start(CFG, str(files["run"]), resume=True)
    except CheckpointError as exc:
        assert both and older in str(exc) and newest in str(exc), str(exc)
        event("CheckpointError")
        return
    assert isinstance(start, Start) and not start.complete
    assert (start.round, start.rows) in ((5, 3), (3, 2)), (start.round, start.rows)
    event(f"resumes at round {start.round}")


@fuzz(30)
@given(ops=st.lists(damage, min_size=1, max_size=2))
def test_plan_start_with_a_damaged_results_file(ops, files, watchdog):
    _restore(files)
    shutil.copyfile(files["run"], files["dir"] / "run.h5.bak")
    try:
        files["run"].write_bytes(_damaged(files["run_raw"], ops))
        try:
            start = plan_start(CFG, str(files["run"]), resume=True)
        except CheckpointError as exc:
            assert str(files["run"]) in str(exc)
            return
        assert isinstance(start, Start)
    finally:
        files["run"].write_bytes(files["run_raw"])
