"""The round protocol's records (run/protocol.py) and the loop's shape (run/loop.py)."""

import ast
import inspect
import textwrap

import numpy as np
import pytest

from fedmrn_mpi.comm.transport import CHANNELS
from fedmrn_mpi.results import PHASES
from fedmrn_mpi.run import loop
from fedmrn_mpi.run.protocol import ControlBlock, RankReport, RankReports


@pytest.mark.parametrize("world", [1, 2, 5, 33])
def test_control_block_round_trip(world):
    bounds = np.array([0, *np.cumsum(np.arange(1, world + 1))], dtype=np.int64)
    for block in (ControlBlock(7, full_state=True, bounds=bounds), ControlBlock(12, done=True),
                  ControlBlock(3, stop=True), ControlBlock(1), ControlBlock(4, full_state=True, done=True)):
        buf = block.pack(world)
        assert buf.dtype == np.int64 and buf.shape == (ControlBlock.size(world),)
        back = ControlBlock.unpack(buf)
        assert (back.round, back.stop, back.full_state, back.done) == (block.round, block.stop, block.full_state,
                                                                       block.done)
        assert (back.bounds is None) == (block.bounds is None)
        if block.bounds is not None:
            assert np.array_equal(back.bounds, block.bounds)
        assert back.finished == (block.stop or block.done)


def test_control_block_layout():
    buf = ControlBlock(9, stop=True, full_state=True, bounds=np.array([0, 2, 5])).pack(2)
    assert buf.tolist() == [9, 1 | 2, 0, 2, 5]  # round, flags (STOP 1, FULL_STATE 2, DONE 4), boundaries
    assert ControlBlock.unpack(np.array([9, 4, 0, 0, 0])).bounds is None  # all zero: nothing evaluated


@pytest.mark.parametrize("scores", [0, 6])
def test_rank_report_round_trip_and_layout(scores):
    rng = np.random.default_rng(scores)
    report = RankReport(rng.random(len(PHASES)), rng.integers(0, 2**40, len(CHANNELS)),
                        rng.integers(0, 2**40, len(CHANNELS)), True, rng.random(scores))
    row = report.pack()
    assert row.dtype == np.float64 and row.shape == (len(PHASES) + 2 * len(CHANNELS) + 1 + scores,)
    assert row[len(PHASES) + 2 * len(CHANNELS)] == 1.0  # the stop flag sits after the traffic
    back = RankReport.unpack(row)
    for f in ("phases", "sent", "received", "scores"):
        assert np.array_equal(getattr(back, f), getattr(report, f)), f
    assert back.stop_requested is True and back.sent.dtype == np.int64
    table = np.stack([row, RankReport(np.zeros(len(PHASES)), scores=np.ones(scores)).pack()])
    cols = RankReports.unpack(table)
    assert cols.phases.shape == (2, len(PHASES)) and cols.stop_requested.tolist() == [True, False]
    sent, received = cols.channel("uplink")
    assert sent[0] == report.sent[CHANNELS.index("uplink")] and received[1] == 0


def test_run_reads_as_the_protocol():
    """run() has no server/client branch, at most 60 lines, and no module-level round state."""
    source = textwrap.dedent(inspect.getsource(loop.run))
    assert len(source.splitlines()) <= 60
    for banned in ("if server", "is_server", "rank == 0", "server is not None", "client is not None"):
        assert banned not in source, banned
    tree = ast.parse(inspect.getsource(loop))
    globals_ = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)]
    assert not [g for g in globals_ if "ROUND" in g.upper()], globals_


RECORDING_RUN = """
import json, sys
from fedmrn_mpi.comm import Transport
from fedmrn_mpi.config import load_config
from fedmrn_mpi.run import run
from fedmrn_mpi.run.events import RoundObserver

class Recorder(RoundObserver):
    def __init__(self):
        self.seen = []
    def __getattribute__(self, name):
        if name in ("opening", "started", "model_received", "training", "uploads_ready", "model_rebuilt",
                    "report_ready", "round_done", "finishing"):
            return lambda round_, *rest: object.__getattribute__(self, "seen").append([name, round_])
        return object.__getattribute__(self, name)

rec = Recorder()
cfg = load_config(sys.argv[1], ["eval_every=2", "log_every=100"])
status = run(cfg, sys.argv[2], Transport(), log=lambda *a, **k: None, observers=[rec])
print(json.dumps([status, rec.seen]))
"""


def test_one_process_fires_every_round_event_in_protocol_order(tmp_path):
    """With one process rank 0 plays both parts; the loop fires each event once per round, in order."""
    import json
    import subprocess
    import sys

    from conftest import ROOT
    res = subprocess.run([sys.executable, "-c", RECORDING_RUN, str(ROOT / "configs" / "tiny.yaml"),
                          str(tmp_path / "r.h5")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    status, seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert status == 0
    per_round = ["opening", "started", "model_received", "training", "uploads_ready", "report_ready", "round_done"]
    expected = [[e, r] for r in (1, 2) for e in per_round]
    # after round 2: the next control block says DONE, the final model is evaluated, then the loop ends
    expected += [["opening", 2], ["opening", 2], ["finishing", 2]]
    assert seen == expected
