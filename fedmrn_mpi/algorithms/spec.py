"""`ModelSpec`: names, shapes and roles of the tensors in the federated state, built from a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..models import global_state, masked_names


@dataclass(frozen=True)
class ModelSpec:
    """Names, shapes and roles of the tensors in the federated state (in state-dict order)."""

    names: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    params: tuple[str, ...]    # trainable parameters
    buffers: tuple[str, ...]   # floating buffers (BatchNorm running statistics), averaged as values
    masked: tuple[str, ...]    # Conv*/Linear weights

    def numel(self, name: str) -> int:
        return int(np.prod(self.shapes[name], dtype=np.int64))

    @property
    def unmasked(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n not in set(self.masked))

    @property
    def num_masked(self) -> int:
        return sum(self.numel(n) for n in self.masked)

    @property
    def num_unmasked(self) -> int:
        return sum(self.numel(n) for n in self.unmasked)


def model_spec(model: nn.Module) -> ModelSpec:
    """The spec of `model`'s federated state (parameters, floating buffers, masked Conv*/Linear weights)."""
    state = global_state(model)
    params = {n for n, _ in model.named_parameters()}
    return ModelSpec(
        names=tuple(state), shapes={n: tuple(t.shape) for n, t in state.items()},
        params=tuple(n for n in state if n in params), buffers=tuple(n for n in state if n not in params),
        masked=tuple(masked_names(model)))
