"""Buffer-based MPI collectives for the round protocol, with a single-process fallback.

Waits use nonblocking collectives and a sleeping Test() loop: with MPICH a rank blocked in a collective
busy-spins and starves the ranks that do work when ranks share cores. Every rank uses the same (nonblocking)
call for a given collective, so blocking and nonblocking calls are never mixed.

Byte buffers of any size move in chunks: MPI counts and displacements are C ints, so no single call moves
more than `CHUNK_LIMIT` bytes in total (2**31 - 1 by default; tests lower it to exercise the chunking).

Mechanism only: the transport knows nothing of rounds, signals or algorithms. Callers pass `poll`, called
while every wait spins (it may raise to leave the wait, e.g. on a stop request), and label each transfer with
a channel; `traffic` counts every byte this rank sends and receives per channel. Counting is logical
point-to-point: a broadcast of n bytes is n * (P - 1) sent by the root and n received by each other rank,
whatever tree the MPI library uses. With one process nothing moves, except that `gather` counts the bytes
handed from the client role to the server role (the same bytes a multi-rank run sends).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

MPI_MISSING = ""  # why there is no MPI, when there is none
try:  # mpi4py is a dependency, but the runner still works in one process without it
    from mpi4py import MPI
except ImportError as exc:  # pragma: no cover - exercised only on machines without mpi4py
    MPI, MPI_MISSING = None, f"mpi4py is not installed ({exc})"
except RuntimeError as exc:  # mpi4py's PyPI wheel on a machine with no MPI library at all
    MPI, MPI_MISSING = None, f"mpi4py finds no MPI library ({exc}): pip install mpich, or load the site's MPI"

# set by mpirun/srun (MPICH's hydra and PMI, Open MPI, PMIx, Slurm) in every rank of a multi-process job
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")

POLL_SECONDS = 0.002
CHUNK_LIMIT = 2**31 - 1
ABORT_GRACE_SECONDS = 1.0
TAG_SECOND_STOP_NOTE = 7707  # a client rank got a second stop signal: it tells rank 0 (point-to-point, outside every collective)
TAG_PROGRESS_NOTE = 7708  # a client rank's progress note (int64 values) to rank 0, outside every collective
# uplink/downlink: the federated traffic; control: the protocol's own; state: per-client algorithm state that a
# simulation moves to whichever rank trains the client (real clients would keep it at home)
CHANNELS = ("uplink", "downlink", "control", "state")


class Traffic:
    """Bytes this rank sent and received, per channel, since the start."""

    def __init__(self) -> None:
        self.sent = dict.fromkeys(CHANNELS, 0)
        self.received = dict.fromkeys(CHANNELS, 0)

    def add(self, channel: str, sent: int = 0, received: int = 0) -> None:
        self.sent[channel] += int(sent)
        self.received[channel] += int(received)

    def snapshot(self) -> np.ndarray:
        """[sent per channel..., received per channel...] as int64 (subtract two snapshots for a period)."""
        return np.array([self.sent[c] for c in CHANNELS] + [self.received[c] for c in CHANNELS], dtype=np.int64)


class TransportError(ValueError):
    """A size announced by another rank exceeds what the caller allows: nothing that large is allocated."""


def _check_limits(counts: np.ndarray, limit: "np.ndarray | int | None", channel: str) -> None:
    if limit is None:
        return
    over = np.flatnonzero(counts > np.broadcast_to(np.asarray(limit, dtype=np.int64), counts.shape))
    if over.size:
        r = int(over[0])
        raise TransportError(f"rank {r} announced {int(counts[r])} bytes on the {channel} channel, more than the "
                             f"{int(np.broadcast_to(limit, counts.shape)[r])} its share can hold: refused "
                             f"before allocating")


@dataclass
class Gathered:
    """What the server receives in one round: each rank's bytes (index = rank) in one buffer."""

    buffers: list[memoryview]
    data: np.ndarray      # all ranks' bytes back to back
    counts: np.ndarray    # bytes per rank


class Transport:
    """Rank 0 is the server; ranks 1..P-1 run clients. With one process, rank 0 does both.

    `poll()`, when set, runs between the tests of every pending request; it may raise to abandon the wait.
    """

    def __init__(self, comm=None, poll: Callable[[], None] | None = None) -> None:
        if comm is None and MPI is not None:
            comm = MPI.COMM_WORLD
        if comm is None and any(os.environ.get(v, "1") != "1" for v in _LAUNCHER_SIZE_VARS):
            # without MPI every rank of an mpirun job would run the whole job on its own
            raise RuntimeError(f"started by an MPI launcher, but {MPI_MISSING or 'MPI is unavailable'} "
                               "(docs/mpi.md)")
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.poll = poll
        self.traffic = Traffic()
        self.chunk_limit = CHUNK_LIMIT
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

    # waiting ------------------------------------------------------------------------------------------
    def _wait(self, req) -> float:
        t0 = time.perf_counter()
        while not req.Test():
            if self.poll is not None:
                self.poll()  # e.g. a stop request must not wait for a collective that may never finish
            time.sleep(POLL_SECONDS)
        return time.perf_counter() - t0

    def notify_server(self) -> None:
        """Send rank 0 an out-of-band note carrying this rank's number (seen by `server_notified`)."""
        if self.size > 1 and not self.is_server:
            note = np.array([self.rank], dtype=np.int64)
            self._note = (note, self.comm.Isend(note, dest=0, tag=TAG_SECOND_STOP_NOTE))

    def server_notified(self) -> int | None:
        """Rank 0: the rank that sent a note, if one is pending (the note is consumed)."""
        if self.size == 1 or not self.is_server or not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_SECOND_STOP_NOTE):
            return None
        note = np.empty(1, dtype=np.int64)
        self.comm.Recv(note, source=MPI.ANY_SOURCE, tag=TAG_SECOND_STOP_NOTE)
        return int(note[0])

    def note_progress(self, values: np.ndarray) -> None:
        """Send rank 0 a small int64 progress note (seen by `progress_notes`); never waits."""
        if self.size == 1 or self.is_server:
            return
        pending = [(buf, req) for buf, req in getattr(self, "_progress", []) if not req.Test()]
        buf = np.ascontiguousarray(values, dtype=np.int64)
        self._progress = pending + [(buf, self.comm.Isend(buf, dest=0, tag=TAG_PROGRESS_NOTE))]

    def progress_notes(self, width: int = 2) -> list[tuple[int, np.ndarray]]:
        """Rank 0: every pending progress note of `width` int64 values, as (sender rank, values), in arrival
        order (the notes are consumed)."""
        out: list[tuple[int, np.ndarray]] = []
        if self.size == 1 or not self.is_server:
            return out
        status = MPI.Status()
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_PROGRESS_NOTE, status=status):
            note = np.empty(width, dtype=np.int64)
            self.comm.Recv(note, source=status.Get_source(), tag=TAG_PROGRESS_NOTE)
            out.append((status.Get_source(), note))
        return out

    def sync(self) -> float:
        """Wait until every rank arrives (a nonblocking barrier): the time spent here is the caller's idle
        time, so the collective after it measures transfer only. Returns the seconds waited."""
        if self.size == 1:
            return 0.0
        return self._wait(self.comm.Ibarrier())

    def _pieces(self, counts: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(offset, bytes per rank, displacements) of each call of a chunked Gatherv/Scatterv: every rank's
        share is cut into pieces of at most limit // P bytes, so totals and displacements stay C ints."""
        step = max(1, self.chunk_limit // max(self.size, 1))
        out = []
        for i in range(max(1, -(-int(counts.max()) // step))):
            part = np.clip(counts - i * step, 0, step)
            displs = np.zeros(self.size, dtype=np.int64)
            np.cumsum(part[:-1], out=displs[1:])
            out.append((i * step, part, displs))
        return out

    # collectives --------------------------------------------------------------------------------------
    def _count_bcast(self, channel: str, nbytes: int) -> None:
        if self.is_server:
            self.traffic.add(channel, sent=nbytes * (self.size - 1))
        else:
            self.traffic.add(channel, received=nbytes)

    def bcast(self, arr: np.ndarray, channel: str) -> None:
        """Broadcast `arr` in place from rank 0 (chunked)."""
        if self.size == 1:
            return
        flat = arr.reshape(-1).view(np.uint8)
        step = self.chunk_limit
        for lo in range(0, max(flat.nbytes, 1), step):
            self._wait(self.comm.Ibcast([flat[lo: lo + step], MPI.BYTE], root=0))
        self._count_bcast(channel, arr.nbytes)

    def bcast_bytes(self, data: np.ndarray | None, channel: str, limit: int | None = None) -> np.ndarray:
        """Broadcast a uint8 buffer whose size only rank 0 knows; every rank returns its copy. `limit`: the
        most bytes a receiving rank accepts (TransportError beyond it, before allocating)."""
        if self.size == 1:
            return data
        n = np.array([data.nbytes if self.is_server else 0], dtype=np.int64)
        self.bcast(n, channel)
        if not self.is_server:
            _check_limits(n, limit, channel)
        buf = data if self.is_server else np.empty(int(n[0]), dtype=np.uint8)
        self.bcast(buf, channel)
        return buf

    def gather_rows(self, row: np.ndarray, channel: str = "control") -> np.ndarray | None:
        """Gather one float64 row per rank to rank 0: a (world_size, k) table there, None elsewhere."""
        row = np.ascontiguousarray(row, dtype=np.float64).reshape(-1)
        if self.size == 1:
            return row[None, :].copy()
        table = np.empty((self.size, row.size), dtype=np.float64) if self.is_server else None
        self._wait(self.comm.Igather(row, table, root=0))
        if self.is_server:
            self.traffic.add(channel, received=row.nbytes * (self.size - 1))
        else:
            self.traffic.add(channel, sent=row.nbytes)
        return table

    def allgather_rows(self, row: np.ndarray, channel: str) -> np.ndarray:
        """Every rank gets every rank's row (same dtype)."""
        row = np.ascontiguousarray(row).reshape(-1)
        if self.size == 1:
            return row[None, :].copy()
        table = np.empty((self.size, row.size), dtype=row.dtype)
        self._wait(self.comm.Iallgather(row, table))
        self.traffic.add(channel, sent=row.nbytes * (self.size - 1), received=row.nbytes * (self.size - 1))
        return table

    def gather(self, data: np.ndarray, channel: str, limit: "np.ndarray | int | None" = None) -> Gathered | None:
        """Gather every rank's uint8 bytes to rank 0 (sizes on the control channel, then Gatherv in chunks);
        None on other ranks. `limit` (per rank, or one for all): the most bytes rank 0 accepts from a rank
        (TransportError beyond it, before allocating)."""
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        if self.size == 1:
            self.traffic.add(channel, sent=data.nbytes, received=data.nbytes)
            return Gathered([memoryview(data)], data, np.array([data.nbytes], dtype=np.int64))
        counts = self.allgather_rows(np.array([data.nbytes], dtype=np.int64), "control").reshape(-1)
        if self.is_server:  # only rank 0 allocates; the others are ended by its failure
            _check_limits(counts, limit, channel)
        offsets = np.zeros(self.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        recv = np.empty(int(offsets[-1]), dtype=np.uint8) if self.is_server else None
        pieces = self._pieces(counts)
        for lo, part, displs in pieces:
            mine = data[lo: lo + int(part[self.rank])]
            if self.is_server:
                tmp = recv if len(pieces) == 1 else np.empty(int(part.sum()), dtype=np.uint8)
                self._wait(self.comm.Igatherv(mine, [tmp, part, displs, MPI.BYTE], root=0))
                if len(pieces) > 1:
                    for r in range(self.size):
                        if part[r]:
                            recv[offsets[r] + lo: offsets[r] + lo + part[r]] = tmp[displs[r]: displs[r] + part[r]]
            else:
                self._wait(self.comm.Igatherv(mine, None, root=0))
        if not self.is_server:
            self.traffic.add(channel, sent=data.nbytes)
            return None
        self.traffic.add(channel, received=int(counts.sum() - counts[self.rank]))
        views = [memoryview(recv)[int(offsets[r]): int(offsets[r + 1])] for r in range(self.size)]
        return Gathered(views, recv, counts)

    def scatter(self, parts: list[np.ndarray] | None, channel: str) -> np.ndarray:
        """Rank 0 sends `parts[r]` (uint8) to every rank r (sizes on the control channel, then Scatterv in
        chunks); every rank returns its part (rank 0 its own). Other ranks pass None."""
        if self.size == 1:
            return np.ascontiguousarray(parts[0], dtype=np.uint8).reshape(-1)
        counts = np.zeros(self.size, dtype=np.int64)
        if self.is_server:
            parts = [np.ascontiguousarray(p, dtype=np.uint8).reshape(-1) for p in parts]
            counts[:] = [p.nbytes for p in parts]
        self.bcast(counts, "control")
        mine = np.empty(int(counts[self.rank]), dtype=np.uint8)
        for lo, part, displs in self._pieces(counts):
            recv = mine[lo: lo + int(part[self.rank])]
            if self.is_server:
                send = np.concatenate([p[lo: lo + int(part[r])] for r, p in enumerate(parts)])
                self._wait(self.comm.Iscatterv([send, part, displs, MPI.BYTE], recv, root=0))
            else:
                self._wait(self.comm.Iscatterv(None, recv, root=0))
        if self.is_server:
            self.traffic.add(channel, sent=int(counts.sum() - counts[0]))
        else:
            self.traffic.add(channel, received=mine.nbytes)
        return mine

    def barrier(self) -> None:
        if self.size > 1:
            self._wait(self.comm.Ibarrier())

    def abort(self, code: int = 1) -> None:
        """End the whole job now (used only on failure)."""
        sys.stderr.flush()
        sys.stdout.flush()
        if self.comm is not None and self.size > 1:
            # the launcher forwards output through pipes; Abort tears them down, so let the message get out
            time.sleep(ABORT_GRACE_SECONDS)
            self.comm.Abort(code)
        os._exit(code)

    def hostname(self) -> str:
        return MPI.Get_processor_name() if MPI is not None else os.uname().nodename

    def gather_strings(self, text: str) -> list[str] | None:
        """Small UTF-8 metadata (host, device) to rank 0, once at set-up; None on other ranks."""
        got = self.gather(np.frombuffer(text.encode(), dtype=np.uint8), "control")
        return None if got is None else [bytes(v).decode("utf-8", "replace") for v in got.buffers]

    def finalize(self) -> None:
        if MPI is not None and MPI.Is_initialized() and not MPI.Is_finalized():
            self.progress_notes()  # rank 0: notes nobody waited for (they are tiny, sent eagerly) are consumed
            MPI.Finalize()


def mpi_library_version() -> str:
    """The first line of the MPI library's own version string ("none" without MPI). Open MPI's ends in a NUL
    byte (C string length counted), so NULs are dropped here too, not only by the results writer."""
    if MPI is None:
        return "none"
    text = MPI.Get_library_version().replace("\x00", "").strip()
    return text.splitlines()[0] if text else "unknown"
