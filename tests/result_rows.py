"""Results rows for tests that write results files without running a job."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedmrn_mpi.results.schema import PHASES, ClientColumns, RankColumns, RoundRow


def round_row(r: int, world: int, client_uplink: Sequence[int] = (50, 50), phase: float = 0.05,
              rank_bytes: bool = False, **fields) -> RoundRow:
    """Round `r` for `world` ranks and one client per entry of `client_uplink` (their upload bytes, which add
    up to uplink_bytes unless `fields` says otherwise); `fields` set RoundRow's scalar fields, the others are
    plausible constants. `phase`: every phase's seconds; `rank_bytes`: record ranks/bytes_sent and
    bytes_received."""
    n = len(client_uplink)
    scalars = {"round": r, "test_accuracy": 0.5, "test_loss": 1.0, "train_loss": 1.0,
               "uplink_bytes": int(sum(client_uplink)), "downlink_bytes": 10, "wall_seconds": 0.5, "resync": 0,
               "digest_mismatches": 0, "control_bytes": 8, "state_bytes": 0, "skipped_clients": 0, **fields}
    per_rank = np.arange(world, dtype=np.int64) * 100 if rank_bytes else None
    return RoundRow(**scalars, phase_seconds=np.full(len(PHASES), phase),
                    clients=ClientColumns(sampled=np.arange(n), rank=1 + np.arange(n) % max(world - 1, 1),
                                          uplink_bytes=np.asarray(client_uplink, dtype=np.int64),
                                          train_loss=np.ones(n), skipped=np.zeros(n, dtype=np.int8)),
                    ranks=RankColumns(np.full((world, len(PHASES)), phase), per_rank, per_rank))
