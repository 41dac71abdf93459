"""Post-training compression of the local update, the family FedMRN is compared with (signsgd, qsgd, topk,
eden): the client trains every parameter as FedAvg does; after the last step each masked tensor's update
Δ = local − global (plus the client's error-feedback residual, where enabled) goes through a per-tensor
codec, and the unmasked tensors travel as float32 values.

A codec subclass sets `name`, `algo_id`, `Options` and implements `tensor_nbytes`, `encode_tensor` and
`decode_tensor`; the payload is the masked tensors' codes in `ModelSpec.masked` order, then the unmasked
float32 values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Algorithm, ClientContext, LocalProblem, Update, option
from .fedavg import FedAvg


def error_feedback_option() -> Any:
    """The `error_feedback` option of the codecs that offer it (one key, so one default and one help text)."""
    return option(False, "signsgd/topk: add the client's residual from its last round before compressing")


class DeltaCompression(FedAvg):
    """FedAvg's local training, then a per-tensor codec for the masked tensors' updates."""

    @property
    def error_feedback(self) -> bool:
        # only the codecs whose Options have the key offer error feedback
        return bool(getattr(self.options, "error_feedback", False))

    # the codec -------------------------------------------------------------------------------------------
    def tensor_nbytes(self, index: int, numel: int) -> int:
        """Bytes of masked tensor `index`'s code (exact, or the bound for variable-size codes)."""
        raise NotImplementedError

    def encode_tensor(self, delta: torch.Tensor, index: int, ctx: ClientContext) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 code of `delta`, the value the server will decode from it) for masked tensor `index`."""
        raise NotImplementedError

    def decode_tensor(self, code: np.ndarray, index: int, shape: tuple[int, ...], seed: int,
                      device: torch.device) -> torch.Tensor:
        """The tensor rebuilt from its code (`seed` is the header seed of the client's message)."""
        raise NotImplementedError

    # the interface ---------------------------------------------------------------------------------------
    def client_state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: self.spec.shapes[n] for n in self.spec.masked} if self.error_feedback else {}

    def begin(self, global_state: dict[str, torch.Tensor], ctx: ClientContext) -> LocalProblem:
        problem = super().begin(global_state, ctx)
        problem.extra["w"] = {n: global_state[n].detach() for n in self.spec.masked}
        return problem

    def encode(self, problem: LocalProblem, ctx: ClientContext) -> np.ndarray:
        codes = []
        with torch.no_grad():
            for j, name in enumerate(self.spec.masked):
                delta = problem.trainables[name] - problem.extra["w"][name]
                if self.error_feedback and name in ctx.state:
                    delta = delta + ctx.state[name]
                code, decoded = self.encode_tensor(delta, j, ctx)
                if self.error_feedback:  # residual + what the server decodes = what the client wanted to send
                    ctx.state[name] = delta - decoded
                codes.append(code)
        state = {**problem.trainables, **problem.buffers}
        codes.append(self._float_payload([state[n] for n in self.spec.unmasked]))
        return np.concatenate(codes)

    def value_offsets(self, payload_nbytes: int) -> dict[str, int]:
        """The codes, then the unmasked float32 tensors at the end (the base layout, not FedAvg's)."""
        return Algorithm.value_offsets(self, payload_nbytes)

    def payload_nbytes(self) -> int:
        return (sum(self.tensor_nbytes(j, self.spec.numel(n)) for j, n in enumerate(self.spec.masked))
                + 4 * self.spec.num_unmasked)

    def decode(self, payload: memoryview, seed: int, global_state: dict[str, torch.Tensor],
               device: torch.device) -> Update:
        if payload.nbytes != self.payload_nbytes():
            raise ValueError(f"{self.name} payload is {payload.nbytes} bytes, expected {self.payload_nbytes()}")
        arr, off, deltas = np.frombuffer(payload, dtype=np.uint8), 0, {}
        for j, name in enumerate(self.spec.masked):
            k = self.tensor_nbytes(j, self.spec.numel(name))
            deltas[name] = self.decode_tensor(arr[off: off + k], j, self.spec.shapes[name], seed, device)
            off += k
        more, buffers = self._values_to_update(self._read_floats(payload, self.spec.unmasked, off, device),
                                               global_state)
        deltas.update(more)
        return Update(deltas, buffers)
