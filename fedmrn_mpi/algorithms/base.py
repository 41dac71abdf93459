"""The one interface every algorithm implements: what a client trains and sends, how the server reads it.

A client round is: `begin` (set up the local problem from the global state) -> the shared SGD loop in
`fedmrn_mpi.training.local` calls `materialize` once per step and updates `LocalProblem.trainables` -> `encode`
(payload bytes). On the server, `decode` turns one payload back into an `Update`; the aggregator averages the
updates in client-id order and `server_step` turns the mean into the new global state. Optional parts:
`client_state_shapes` (per-client arrays kept between a client's rounds, e.g. error-feedback residuals; the
runner keeps them by client id and hands them over in `ClientContext.state`) and `eval_state` (the model
that is evaluated, when it is not the global state itself).

Each algorithm declares its own `algorithm.*` config keys as a frozen dataclass `Options` of `option` fields;
the config builds and validates that section from it, and the algorithm receives the instance, the model spec
and the root seed (never the whole config, which sits in a layer above).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from .spec import ModelSpec


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, ge: float | None = None,
           gt: float | None = None, lt: float | None = None) -> Any:
    """A field of an algorithm's `Options`: its default, one line of help, and the allowed values or bounds the
    config checks (the metadata keys of the config's own fields)."""
    return field(default=default, metadata={"help": help, "choices": choices, "ge": ge, "gt": gt, "lt": lt})


class NonFiniteUpdate(ValueError):
    """Raised by `decode` for a well-formed upload carrying NaN/inf values (a diverged client, not a corrupt
    message): `aggregate` applies the run's `on_bad_update` policy to it."""


@dataclass
class ClientContext:
    """Everything one client needs for one round; all seeds derive from the root seed (see rng/seeds.py)."""

    round: int
    client_id: int
    noise_seed: int      # sent in the header; the server regenerates the noise from it
    draw_seed: int       # mask / selector draws during training and the final draw
    num_samples: int
    num_batches: int     # batches per epoch
    total_steps: int
    device: torch.device
    # this client's persistent state (see Algorithm.client_state_shapes): read and replaced by `encode`
    state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LocalProblem:
    """The state of one client's local training."""

    trainables: dict[str, torch.Tensor]          # leaf tensors updated by SGD
    buffers: dict[str, torch.Tensor]             # updated in place by the forward pass (BN statistics)
    extra: dict = field(default_factory=dict)    # algorithm-specific (noise, frozen weights, ...)


@dataclass
class Update:
    """A decoded upload: for parameters a delta added to the global weights, for buffers the client's values."""

    deltas: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]


class Algorithm(ABC):
    """Base class; subclasses set `name`, `algo_id` and `Options` and implement the four methods."""

    name: str = ""
    algo_id: int = 0
    # its own `algorithm.*` config keys (besides name, weighting, downlink): a frozen dataclass of `option`s
    Options: ClassVar[type]

    def __init__(self, options: Any, spec: ModelSpec, seed: int) -> None:
        """`options`: an instance of this class's `Options`; `seed`: the run's root seed."""
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} takes {self.Options.__qualname__}, not "
                            f"{type(options).__qualname__}")
        self.options = options
        self.spec = spec
        self.seed = seed

    @abstractmethod
    def begin(self, global_state: dict[str, torch.Tensor], ctx: ClientContext) -> LocalProblem:
        """Set up local training from the (device-resident) global state."""

    @abstractmethod
    def materialize(self, problem: LocalProblem, step: int, ctx: ClientContext) -> dict[str, torch.Tensor]:
        """The parameters used by the forward pass at local step `step` (1-based), differentiable w.r.t. the trainables."""

    @abstractmethod
    def encode(self, problem: LocalProblem, ctx: ClientContext) -> np.ndarray:
        """The upload payload (uint8) after the last step."""

    @abstractmethod
    def decode(self, payload: memoryview, seed: int, global_state: dict[str, torch.Tensor],
               device: torch.device) -> Update:
        """Rebuild a client's update from its payload and header seed."""

    def payload_nbytes(self) -> int:
        """Exact payload size in bytes (the same for every client of a run), or, for algorithms with
        `variable_payload`, an upper bound that the decoder enforces."""
        raise NotImplementedError

    variable_payload: bool = False
    weighted: bool = True   # False: every client counts once in the mean, whatever its header weight

    def uses_adam(self, name: str) -> bool:
        """Whether trainable `name` takes Adam steps (moments reset every round) instead of plain SGD."""
        return False

    def client_state_shapes(self) -> dict[str, tuple[int, ...]]:
        """float32 arrays kept per client between its rounds (none by default)."""
        return {}

    def server_step(self, global_state: dict[str, torch.Tensor], mean: dict[str, torch.Tensor],
                    server_lr: float) -> dict[str, torch.Tensor]:
        """The new global state from the weighted mean of the decoded updates: w + η·mean for parameters (mean
        of deltas), the mean itself for buffers (mean of values)."""
        return {n: global_state[n] + server_lr * mean[n] if n in self.spec.params else mean[n]
                for n in self.spec.names}

    def fused_sum(self, device: torch.device):
        """A fused decode-and-sum of all clients' uploads for `aggregate` on `device`, or None (the default:
        `decode` client by client). FedMRN provides one on CUDA (Triton kernels): an object with
        `decode(payload, seed, global_state, device)`, `weight(a)` and `sums()`."""
        return None

    def eval_state(self, global_state: dict[str, torch.Tensor], round_: int) -> dict[str, torch.Tensor]:
        """The state the test set is evaluated with after round `round_` (the global state by default)."""
        return global_state

    def value_offsets(self, payload_nbytes: int) -> dict[str, int]:
        """Byte offset, in a payload of `payload_nbytes` bytes, of each state tensor that `encode` writes as
        plain float32 values (the BatchNorm statistics among them; `bn_recalibrate` overwrites those). Default:
        the unmasked tensors back to back in state-dict order at the end of the payload, as every codec here
        writes them; an algorithm with another layout overrides this (FedAvg). The caller checks the bytes found
        there against the values `encode` was given, so a wrong answer is an error, never a silent change."""
        off = payload_nbytes - 4 * self.spec.num_unmasked
        out = {}
        for name in self.spec.unmasked:
            out[name] = off
            off += 4 * self.spec.numel(name)
        return out

    # shared helpers -------------------------------------------------------------------------------------
    def _float_payload(self, tensors: list[torch.Tensor]) -> np.ndarray:
        if not tensors:
            return np.empty(0, dtype=np.uint8)
        flat = torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in tensors])
        return flat.numpy().view(np.uint8)

    def _read_floats(self, payload: memoryview, names: list[str] | tuple[str, ...], offset: int,
                     device: torch.device) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        arr = np.frombuffer(payload, dtype=np.uint8)
        for name in names:
            n = self.spec.numel(name)
            chunk = arr[offset: offset + 4 * n]
            if chunk.nbytes != 4 * n:
                raise ValueError(f"payload too short for tensor {name}")
            out[name] = torch.from_numpy(chunk.copy().view("<f4")).reshape(self.spec.shapes[name]).to(device)
            offset += 4 * n
        return out

    def _values_to_update(self, values: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor]) -> tuple[
            dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        deltas = {n: values[n] - global_state[n] for n in values if n in self.spec.params}
        buffers = {n: values[n] for n in values if n in self.spec.buffers}
        return deltas, buffers
