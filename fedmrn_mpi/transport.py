"""Buffer-based MPI collectives for the round protocol, with a single-process fallback.

Waits use nonblocking collectives and a sleeping Test() loop: with MPICH a rank blocked in a collective
busy-spins and starves the ranks that do work when ranks share cores. Every rank uses the same (nonblocking)
call for a given collective, so blocking and nonblocking calls are never mixed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np

try:  # mpi4py is a dependency, but the runner still works in one process without it
    from mpi4py import MPI
except ImportError:  # pragma: no cover - exercised only on machines without mpi4py
    MPI = None

POLL_SECONDS = 0.002


@dataclass
class Gathered:
    """What the server receives in one round: each rank's bytes."""

    buffers: list[memoryview]     # index = rank


class Transport:
    """Rank 0 is the server; ranks 1..P-1 run clients. With one process, rank 0 does both."""

    def __init__(self, comm=None) -> None:
        if comm is None and MPI is not None:
            comm = MPI.COMM_WORLD
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        if comm is not None and self.size > 1:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
        else:
            self.local_rank, self.local_size = 0, 1

    @property
    def is_server(self) -> bool:
        return self.rank == 0

    @property
    def client_ranks(self) -> list[int]:
        return list(range(1, self.size)) if self.size > 1 else [0]

    @property
    def runs_clients(self) -> bool:
        return self.rank in self.client_ranks

    def _wait(self, req) -> float:
        t0 = time.perf_counter()
        while not req.Test():
            time.sleep(POLL_SECONDS)
        return time.perf_counter() - t0

    def bcast(self, arr: np.ndarray) -> int:
        """Broadcast `arr` in place from rank 0; returns the bytes this rank sent (root) or received."""
        if self.size == 1:
            return 0
        self._wait(self.comm.Ibcast(arr, root=0))
        return arr.nbytes * (self.size - 1) if self.is_server else arr.nbytes

    def gather_rows(self, row: np.ndarray) -> np.ndarray | None:
        """Gather one float64 row per rank to rank 0: a (world_size, k) table there, None elsewhere."""
        row = np.ascontiguousarray(row, dtype=np.float64).reshape(-1)
        if self.size == 1:
            return row[None, :].copy()
        table = np.empty((self.size, row.size), dtype=np.float64) if self.is_server else None
        self._wait(self.comm.Igather(row, table, root=0))
        return table

    def gather(self, data: np.ndarray) -> Gathered | None:
        """Gather every rank's uint8 bytes to rank 0 (sizes first, then Gatherv); None on other ranks."""
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        if self.size == 1:
            return Gathered([memoryview(data)])
        counts = np.zeros(self.size, dtype=np.int64)
        self._wait(self.comm.Igather(np.array([data.nbytes], dtype=np.int64),
                                     counts if self.is_server else None, root=0))
        if self.is_server:
            displs = np.zeros(self.size, dtype=np.int64)
            np.cumsum(counts[:-1], out=displs[1:])
            recv = np.empty(int(counts.sum()), dtype=np.uint8)
            self._wait(self.comm.Igatherv(data, [recv, counts, displs, MPI.BYTE], root=0))
            return Gathered([memoryview(recv)[int(d): int(d + c)] for d, c in zip(displs, counts)])
        self._wait(self.comm.Igatherv(data, None, root=0))
        return None

    def barrier(self) -> None:
        if self.size > 1:
            self._wait(self.comm.Ibarrier())

    def abort(self, code: int = 1) -> None:
        """End the whole job now (used only on failure)."""
        sys.stderr.flush()
        sys.stdout.flush()
        if self.comm is not None and self.size > 1:
            self.comm.Abort(code)
        os._exit(code)

    def hostname(self) -> str:
        return MPI.Get_processor_name() if MPI is not None else os.uname().nodename

    def gather_strings(self, text: str) -> list[str] | None:
        """Small metadata (host, device) to rank 0; not on a hot path, so pickling is fine here."""
        if self.size == 1:
            return [text]
        return self.comm.gather(text, root=0)

    def finalize(self) -> None:
        if MPI is not None and MPI.Is_initialized() and not MPI.Is_finalized():
            MPI.Finalize()


def mpi_library_version() -> str:
    return MPI.Get_library_version().strip().splitlines()[0] if MPI is not None else "none"
