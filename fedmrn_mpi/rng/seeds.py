"""Named random streams derived from the root seed (docs/design.md#noise-generator).

Every random choice in a run is a pure function of (root seed, stream name, round, client), so results do not
depend on the number of ranks or on which rank trained which client.
"""

from __future__ import annotations

import hashlib
import struct

import torch

MASK64 = (1 << 64) - 1


def derive_seed(root: int, name: str, *indices: int) -> int:
    """A 64-bit seed for the stream `name` at `indices` (e.g. round, client id)."""
    h = hashlib.blake2b(digest_size=8, person=b"fedmrn-mpi")
    h.update(struct.pack("<Q", root & MASK64))
    h.update(name.encode())
    for i in indices:
        h.update(struct.pack("<q", int(i)))
    return int.from_bytes(h.digest(), "little")


def torch_generator(seed: int) -> torch.Generator:
    """A CPU torch generator for a derived 64-bit seed (CPU generators are reproducible everywhere)."""
    return torch.Generator().manual_seed(seed & ((1 << 63) - 1))
