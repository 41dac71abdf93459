"""Per-client algorithm state (e.g. error-feedback residuals), kept by client id on rank 0.

Before a round, rank 0 sends each sampled client's arrays to the rank that trains it; after the round the new
arrays come back and are committed when the round completes (so a checkpoint never mixes two rounds). They
move on the transport's "state" channel: a simulation artefact, not federated traffic, and counted apart.
Results therefore do not depend on which rank trains a client, and a resume with another number of ranks
finds every client's state in the checkpoint. Memory on rank 0: `nbytes_per_client` for every client that
has taken part (float32).
"""

from __future__ import annotations

import numpy as np
import torch

from ..comm import Transport

_HEAD = np.dtype([("client", "<i8"), ("present", "<i8")])


class ClientStates:
    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = dict(shapes)
        self.sizes = {n: int(np.prod(s, dtype=np.int64)) for n, s in self.shapes.items()}
        self.nbytes_per_client = 4 * sum(self.sizes.values())
        self.store: dict[int, dict[str, np.ndarray]] = {}
        self.staged: dict[int, dict[str, np.ndarray]] = {}

    # serialisation: per client a (client id, present) header, then its float32 arrays in name order if present
    def pack(self, states: dict[int, dict[str, np.ndarray] | None]) -> np.ndarray:
        out = []
        for cid, arrays in states.items():
            head = np.array([(cid, arrays is not None)], dtype=_HEAD)
            out.append(head.view(np.uint8))
            if arrays is not None:
                out += [np.ascontiguousarray(arrays[n], dtype="<f4").reshape(-1).view(np.uint8) for n in self.shapes]
        return np.concatenate(out) if out else np.empty(0, dtype=np.uint8)

    def unpack(self, buf: np.ndarray | memoryview) -> dict[int, dict[str, np.ndarray] | None]:
        buf, pos, out = np.frombuffer(buf, dtype=np.uint8), 0, {}
        while pos < buf.nbytes:
            head = buf[pos: pos + _HEAD.itemsize].view(_HEAD)[0]
            pos += _HEAD.itemsize
            arrays = None
            if head["present"]:
                arrays = {}
                for n, k in self.sizes.items():
                    arrays[n] = buf[pos: pos + 4 * k].view("<f4").reshape(self.shapes[n]).copy()
                    pos += 4 * k
            out[int(head["client"])] = arrays
        return out

    def send(self, transport: Transport, assignment: dict[int, list[int]]) -> dict[int, dict[str, torch.Tensor]]:
        """Every rank: the states of the clients assigned to it (absent for a client's first round)."""
        parts = None
        if transport.is_server:
            parts = [self.pack({c: self.store.get(c) for c in assignment.get(r, [])}) for r in range(transport.size)]
        mine = self.unpack(transport.scatter(parts, "state"))
        return {c: {n: torch.from_numpy(a) for n, a in arrays.items()} for c, arrays in mine.items() if arrays}

    def collect(self, transport: Transport, new: dict[int, dict[str, torch.Tensor]]) -> None:
        """Every rank hands in its clients' new states; rank 0 stages them until the round completes."""
        mine = self.pack({c: {n: t.detach().to("cpu", torch.float32).numpy() for n, t in s.items()}
                          for c, s in new.items()})
        got = transport.gather(mine, "state")
        if got is not None:
            for view in got.buffers:
                self.staged.update(self.unpack(view))

    def commit(self, skipped: "set[int] | dict[int, str]" = frozenset()) -> None:
        """The round completed: its clients' new states replace the old ones (not those of skipped clients,
        whose training went wrong: they keep the state they had)."""
        self.store.update({c: s for c, s in self.staged.items() if c not in skipped})
        self.staged = {}

    def as_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The store for a checkpoint (CPU tensors, keys as strings)."""
        return {str(c): {n: torch.from_numpy(a) for n, a in s.items()} for c, s in sorted(self.store.items())}

    def load(self, saved: dict[str, dict[str, torch.Tensor]] | None) -> None:
        self.store = {int(c): {n: t.numpy().astype(np.float32) for n, t in s.items()} for c, s in (saved or {}).items()}
