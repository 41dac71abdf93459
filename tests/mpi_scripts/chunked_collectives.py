"""Run under mpirun: gather, scatter and broadcast byte buffers through chunks smaller than the buffers.

Usage: python chunked_collectives.py LIMIT. Exits non-zero (and prints why) on any mismatch.
"""

import sys

import numpy as np

from fedmrn_mpi.comm.transport import Transport


def payload(rank: int, n: int) -> np.ndarray:
    return np.random.default_rng(1000 + rank + 7 * n).integers(0, 256, size=n, dtype=np.uint8)


def main() -> None:
    t = Transport()
    t.chunk_limit = int(sys.argv[1])
    lim = t.chunk_limit
    for base in (0, 1, 5, 3 * lim + 1, 20 * lim + 7):
        n = base + 13 * t.rank if base else 0  # ranks send different sizes, some far above the limit
        got = t.gather(payload(t.rank, n), "uplink")
        if t.is_server:
            for r in range(t.size):
                want = payload(r, base + 13 * r if base else 0)
                if bytes(got.buffers[r]) != want.tobytes():
                    sys.exit(f"gather mismatch from rank {r} at base {base}")
            assert got.data.nbytes == sum(base + 13 * r if base else 0 for r in range(t.size))
        arr = payload(99, base) if t.is_server else np.zeros(base, dtype=np.uint8)
        t.bcast(arr, "downlink")
        if arr.tobytes() != payload(99, base).tobytes():
            sys.exit(f"bcast mismatch on rank {t.rank} at base {base}")
        sizes = [base + 5 * r if base else 0 for r in range(t.size)]
        mine = t.scatter([payload(200 + r, n) for r, n in enumerate(sizes)] if t.is_server else None, "state")
        if mine.tobytes() != payload(200 + t.rank, sizes[t.rank]).tobytes():
            sys.exit(f"scatter mismatch on rank {t.rank} at base {base}")
        relay = t.bcast_bytes(payload(98, base + 3) if t.is_server else None, "downlink")
        if relay.tobytes() != payload(98, base + 3).tobytes():
            sys.exit(f"bcast_bytes mismatch on rank {t.rank} at base {base}")
    t.barrier()
    if t.is_server:
        print("chunked collectives ok")


if __name__ == "__main__":
    main()
