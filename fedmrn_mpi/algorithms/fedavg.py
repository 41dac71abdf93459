"""FedAvg: the 32-bit control. Clients train every parameter and upload the float32 state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Algorithm, ClientContext, LocalProblem, Update


class FedAvg(Algorithm):
    name = "fedavg"
    algo_id = 1

    @dataclass(frozen=True)
    class Options:
        """FedAvg has no options of its own."""

    def begin(self, global_state: dict[str, torch.Tensor], ctx: ClientContext) -> LocalProblem:
        trainables = {n: global_state[n].detach().clone().requires_grad_(True) for n in self.spec.params}
        buffers = {n: global_state[n].detach().clone() for n in self.spec.buffers}
        return LocalProblem(trainables, buffers)

    def materialize(self, problem: LocalProblem, step: int, ctx: ClientContext) -> dict[str, torch.Tensor]:
        return problem.trainables

    def encode(self, problem: LocalProblem, ctx: ClientContext) -> np.ndarray:
        state = {**problem.trainables, **problem.buffers}
        return self._float_payload([state[n] for n in self.spec.names])

    def decode(self, payload: memoryview, seed: int, global_state: dict[str, torch.Tensor],
               device: torch.device) -> Update:
        if payload.nbytes != self.payload_nbytes():
            raise ValueError(f"FedAvg payload is {payload.nbytes} bytes, expected {self.payload_nbytes()}")
        values = self._read_floats(payload, self.spec.names, 0, device)
        return Update(*self._values_to_update(values, global_state))

    def payload_nbytes(self) -> int:
        return 4 * sum(self.spec.numel(n) for n in self.spec.names)

    def value_offsets(self, payload_nbytes: int) -> dict[str, int]:
        """Every state tensor, back to back in state-dict order from byte 0."""
        out, off = {}, 0
        for name in self.spec.names:
            out[name] = off
            off += 4 * self.spec.numel(name)
        return out
