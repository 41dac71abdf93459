"""signsgd: the scaled sign of each masked tensor's update (EF-SignSGD's compressor, docs/baselines.md §1).

Per masked tensor, with `v = Δ` (or `Δ + e` with `algorithm.error_feedback`, `e` the client's residual from
its previous round, kept by the runner):

- bit `i` = 1 iff `v_i >= 0`, so **sign(0) = +1** (DRIVE's torch convention; an exact zero decodes to `+α`).
  docs/baselines.md writes `[v > 0]`; the two differ only on exact zeros, and the residual `v − decoded` uses
  the same convention, so error feedback stays exact either way.
- `α = mean|v|` (Karimireddy et al.'s least-squares scale for a fixed sign pattern), accumulated in float64
  and rounded once to float32; the float32 value is what the server uses.
- decoded value `α · (2·bit − 1)`, computed by the same function on the client (for the residual) and the
  server, so both sides agree bit for bit.

Wire per tensor of `d` entries: `ceil(d/8)` bytes of `pack_bits(v >= 0)` (LSB first), then `α` as float32
little-endian: `ceil(d/8) + 4` bytes. CNN4/FashionMNIST: 48,740 + 5 · 4 = 48,760 bytes for the masked tensors,
plus 7,680 bytes of unmasked float32 values: 56,440 bytes (message 56,496).

The server rejects (ValueError, which `aggregate` turns into a WireError) a scale that is not finite or is
negative, and non-zero padding bits. A client whose update is not finite therefore has its upload rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..rng.bits import check_padding, pack_bits, packed_nbytes, unpack_bits
from .base import ClientContext, NonFiniteUpdate
from .compress import DeltaCompression, error_feedback_option


def sign_values(bits: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·(2·bit − 1) as float32 (the one decoding rule, shared by client and server)."""
    a = torch.tensor(alpha, dtype=torch.float32, device=bits.device)
    return torch.where(bits, a, -a)


class SignSGD(DeltaCompression):
    """1 bit per entry (the sign of `v`, 0 counted as +) and one float32 scale `mean|v|` per masked tensor."""

    name = "signsgd"
    algo_id = 3

    @dataclass(frozen=True)
    class Options:
        error_feedback: bool = error_feedback_option()

    options: Options

    def tensor_nbytes(self, index: int, numel: int) -> int:
        return packed_nbytes(numel) + 4

    def encode_tensor(self, delta: torch.Tensor, index: int, ctx: ClientContext) -> tuple[np.ndarray, torch.Tensor]:
        flat = delta.reshape(-1)
        bits = flat >= 0
        # float64 accumulation: one rounding to float32 whatever the reduction order of the device
        alpha = float(np.float32(flat.abs().sum(dtype=torch.float64).item() / max(flat.numel(), 1)))
        code = np.concatenate([pack_bits(bits).cpu().numpy(), np.array([alpha], dtype="<f4").view(np.uint8)])
        return code, sign_values(bits, alpha).reshape(delta.shape)

    def decode_tensor(self, code: np.ndarray, index: int, shape: tuple[int, ...], seed: int,
                      device: torch.device) -> torch.Tensor:
        name = self.spec.masked[index]
        d = int(np.prod(shape, dtype=np.int64))
        nb = packed_nbytes(d)
        if code.size != nb + 4:
            raise ValueError(f"signsgd code of {name} is {code.size} bytes, expected {nb + 4}")
        alpha = float(code[nb: nb + 4].copy().view("<f4")[0])
        if not np.isfinite(alpha):
            raise NonFiniteUpdate(f"signsgd scale of {name} is {alpha}")
        if not alpha >= 0:
            raise ValueError(f"signsgd scale of {name} is {alpha}, expected a finite value >= 0")
        check_padding(code[:nb], d, f"signsgd bits of {name}")
        bits = unpack_bits(torch.from_numpy(code[:nb].copy()).to(device), d)
        return sign_values(bits, alpha).reshape(shape)
