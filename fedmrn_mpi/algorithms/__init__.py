"""Algorithms behind one interface (see base.Algorithm); REGISTRY maps `algorithm.name` to a class."""

from .base import Algorithm, ClientContext, LocalProblem, ModelSpec, Update
from .fedavg import FedAvg
from .fedmrn import FedMRN

REGISTRY: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FedMRN, FedAvg)}


def make_algorithm(cfg, spec: ModelSpec) -> Algorithm:
    """Instantiate the configured algorithm; a known-but-unimplemented name is a clear error."""
    name = cfg.algorithm.name
    if name not in REGISTRY:
        raise NotImplementedError(
            f"algorithm.name={name!r} is not implemented in this version; implemented: {', '.join(REGISTRY)}")
    return REGISTRY[name](cfg, spec)


__all__ = ["Algorithm", "ClientContext", "LocalProblem", "ModelSpec", "Update", "REGISTRY", "make_algorithm"]
