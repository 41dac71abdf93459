"""The results row of a completed round, built by rank 0 from the uploads and the rank reports."""

from __future__ import annotations

import math

import numpy as np

from ..results.schema import ClientColumns, RankColumns, RoundRow
from .plan import Plan
from .progress import round_phases
from .protocol import RankReports


def round_row(plan: Plan, messages: list, reports: RankReports, report_bytes: int, wall: float, resync: bool,
              mismatched: int, skipped: dict[int, str]) -> RoundRow:
    """One results row (without the evaluation, which happens while the next round trains). The train loss is
    the weighted mean over the clients that were not skipped (NaN when all were)."""
    by_client = {m.header.client_id: (r_, m) for r_, m in messages}
    order = plan.sampled.tolist()
    kept = np.array([c not in skipped for c in order])
    weights = np.array([by_client[c][1].header.weight for c in order]) * kept
    losses = np.array([by_client[c][1].header.train_loss for c in order])
    up_sent, up_recv = reports.channel("uplink")
    down_sent, _ = reports.channel("downlink")
    control_sent, _ = reports.channel("control")
    state_sent, _ = reports.channel("state")
    return RoundRow(
        round=plan.round, skipped_clients=int((~kept).sum()),
        train_loss=float((weights[kept] * losses[kept]).sum() / weights.sum()) if kept.any() else math.nan,
        # rank 0's view: what reached the server, what it sent down; control: sent by every rank, plus the
        # rank reports gathered at the end of the round
        uplink_bytes=int(up_recv[0]), downlink_bytes=int(down_sent[0]),
        control_bytes=int(control_sent.sum() + report_bytes),
        state_bytes=int(state_sent.sum()),
        wall_seconds=wall, resync=int(resync), digest_mismatches=mismatched,
        phase_seconds=round_phases(reports.phases, wall),
        clients=ClientColumns(sampled=plan.sampled, rank=np.array([by_client[c][0] for c in order]),
                              uplink_bytes=np.array([by_client[c][1].nbytes for c in order]),
                              train_loss=losses, skipped=(~kept).astype(np.int8)),
        ranks=RankColumns(phase_seconds=reports.phases, bytes_sent=reports.sent.sum(axis=1),
                          bytes_received=reports.received.sum(axis=1)),
    )
