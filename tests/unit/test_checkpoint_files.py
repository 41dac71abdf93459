"""Checkpoint files and stop-signal counting, without running a job."""

import os
import signal

import numpy as np
import pytest
import torch

from fedmrn_mpi.run.checkpoint import (CheckpointError, checkpoint_dir, latest_checkpoint, list_checkpoints,
                                       load_checkpoint, save_checkpoint)


def test_save_keeps_two_newest_atomically_and_falls_back_on_corruption(tmp_path):
    d = str(tmp_path / "run.ckpt")
    assert checkpoint_dir(str(tmp_path / "run.h5")) == d
    st = {"w": torch.arange(6.0).reshape(2, 3)}
    for r in (2, 4, 6):
        save_checkpoint(d, r, {"state": st, "pending": {"round": r, "x": np.arange(3)}, "identity": "i"})
    assert [os.path.basename(p) for p in list_checkpoints(d)] == ["round-000004.pt", "round-000006.pt"]
    assert not [f for f in os.listdir(d) if ".tmp" in f]
    ck = load_checkpoint(list_checkpoints(d)[-1])
    assert ck["round"] == 6 and torch.equal(ck["state"]["w"], st["w"])
    assert np.array_equal(ck["pending"]["x"], np.arange(3))
    with open(list_checkpoints(d)[-1], "wb") as fh:
        fh.write(b"garbage")
    assert latest_checkpoint(d)["round"] == 4
    with open(list_checkpoints(d)[0], "wb") as fh:
        fh.write(b"garbage")
    with pytest.raises(CheckpointError, match="round-000004.pt"):
        latest_checkpoint(d)


def test_signals_close_together_are_one_request():
    from fedmrn_mpi.run import stop
    s = stop.StopSignals()
    s._handler(signal.SIGTERM, None)
    s._handler(signal.SIGTERM, None)  # the same stop delivered through another path
    assert s.requested and not s.urgent
    s.first_at -= stop.DEBOUNCE_SECONDS + 1
    s._handler(signal.SIGUSR1, None)
    assert s.urgent
    with pytest.raises(stop.StopNow, match="SIGUSR1"):
        s.check()
