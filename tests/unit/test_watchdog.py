"""round_timeout: the limit of a round, and which ranks rank 0 names when it is exceeded."""

import numpy as np
import pytest

from fedmrn_mpi.config import ConfigError, load_config
from fedmrn_mpi.run import watchdog as W
from fedmrn_mpi.run.events import Events


def test_round_limit_rules() -> None:
    assert W.round_limit(0, [1.0] * 5) is None  # off
    assert W.round_limit(7.5, []) == 7.5
    assert W.round_limit(None, []) == W.round_limit(None, [100.0, 200.0]) == 1800.0  # the first rounds
    assert W.round_limit(None, [1.0, 2.0, 3.0]) == 300.0  # at least 300 s
    assert W.round_limit(None, [40.0, 90.0, 50.0]) == 900.0  # 10x the slowest so far


def test_config_key() -> None:
    assert load_config(None, []).round_timeout is None
    assert load_config(None, ["round_timeout=0"]).round_timeout == 0
    assert load_config(None, ["round_timeout=90.5"]).round_timeout == 90.5
    with pytest.raises(ConfigError, match="round_timeout"):
        load_config(None, ["round_timeout=-1"])


def test_laggards_are_the_ranks_behind_the_others() -> None:
    progress = {1: (5, W.UPLOADS), 2: (5, W.MODEL), 3: (5, W.UPLOADS), 4: (4, W.REPORT)}
    behind = W.laggards(progress, 5, [1, 2, 3, 4])
    assert sorted(behind) == [2, 4]
    assert behind[2] == "was training (or evaluating) its share" and behind[4] == "had not received the round's model"
    # every rank at the same point (e.g. a collective that never completes): all are named
    assert sorted(W.laggards({1: (5, W.REPORT), 2: (5, W.REPORT)}, 5, [1, 2])) == [1, 2]
    assert sorted(W.laggards({}, 1, [1, 2])) == [1, 2]


class _Transport:
    def __init__(self, server: bool, size: int = 3) -> None:
        self.is_server, self.size, self.notes, self.sent = server, size, [], []

    def progress_notes(self):
        out, self.notes = self.notes, []
        return out

    def note_progress(self, values):
        self.sent.append(values.tolist())


def test_rank0_names_the_stuck_rank_once_the_round_is_too_old(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(W.time, "monotonic", lambda: now[0])
    t = _Transport(server=True)
    notes = W.ProgressNotes(t)
    events = Events([notes, W.Watchdog(10.0, t, notes)])
    events.poll()  # before the first round: no limit
    events.opening(3)
    t.notes = [(1, np.array([3, W.UPLOADS])), (2, np.array([3, W.MODEL]))]
    now[0] += 10.0
    events.poll()  # exactly at the limit: still fine
    now[0] += 0.5
    with pytest.raises(W.RoundTimeout, match=r"round 3 exceeded round_timeout \(10 s, 10 s so far\): rank\(s\) \[2\] "
                                             r"have not reported \(rank 2 was training"):
        events.poll()
    events.round_done(3, 2.0)
    events.opening(4)  # a new round starts a new clock
    events.poll()


def test_client_ranks_wait_longer_than_rank0_and_report_their_progress(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(W.time, "monotonic", lambda: now[0])
    t = _Transport(server=False)
    notes = W.ProgressNotes(t)
    dog = W.Watchdog(10.0, t, notes)
    events = Events([notes, dog])
    events.opening(2)
    events.model_received(2)
    events.uploads_ready(2)
    assert t.sent == [[2, W.MODEL], [2, W.UPLOADS]]
    now[0] += 10.0 * W.CLIENT_FACTOR + W.CLIENT_MARGIN_SECONDS
    dog.check()
    now[0] += 1
    with pytest.raises(W.RoundTimeout, match="rank 0 or another rank is not responding"):
        dog.check()


def test_off_never_fires(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(W.time, "monotonic", lambda: now[0])
    dog = W.Watchdog(0, _Transport(server=True), None)
    dog.opening(1)
    now[0] += 1e9
    dog.check()


def test_setup_has_the_start_up_limit_unless_off(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(W.time, "monotonic", lambda: now[0])
    dog = W.Watchdog(4.0, _Transport(server=True), None)  # a short round limit does not apply to set-up
    now[0] = W.AUTO_START_SECONDS
    dog.check()
    now[0] += 1
    with pytest.raises(W.RoundTimeout, match="set-up took more than 1800 s"):
        dog.check()
    off = W.Watchdog(0, _Transport(server=True), None)
    now[0] += 1e9
    off.check()
