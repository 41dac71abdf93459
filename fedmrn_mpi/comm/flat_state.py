"""The global state as one contiguous float32 buffer: what the downlink broadcasts."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


class FlatState:
    """Tensors of the given shapes, in the given (name) order, back to back in `buf`."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes = dict(shapes)
        self.sizes = {n: int(np.prod(s, dtype=np.int64)) for n, s in self.shapes.items()}
        self.buf = np.empty(sum(self.sizes.values()), dtype=np.float32)

    def pack(self, state: Mapping[str, torch.Tensor]) -> np.ndarray:
        """Copy `state` into the buffer; returns the buffer."""
        off = 0
        for n, k in self.sizes.items():
            self.buf[off: off + k] = state[n].detach().reshape(-1).cpu().numpy()
            off += k
        return self.buf

    def unpack(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The buffer as tensors on `device` (a copy: the buffer is reused by the next broadcast)."""
        flat = torch.from_numpy(self.buf.copy()).to(device)
        out, off = {}, 0
        for n, k in self.sizes.items():
            out[n] = flat[off: off + k].view(self.shapes[n])
            off += k
        return out


def state_arrays(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """float32 CPU copies of a state (for digests and the results file, which never import torch)."""
    return {n: t.detach().to("cpu", torch.float32).contiguous().numpy() for n, t in state.items()}
