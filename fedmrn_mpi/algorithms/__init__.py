"""Algorithms behind one interface (see base.Algorithm); REGISTRY maps `algorithm.name` to a class.

The config accepts exactly the names in REGISTRY: an algorithm becomes selectable by being registered here.
"""

from .aggregate import aggregate
from .base import Algorithm, ClientContext, LocalProblem, Update
from .fedavg import FedAvg
from .fedmrn import FedMRN
from .spec import ModelSpec, model_spec

REGISTRY: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FedMRN, FedAvg)}


def make_algorithm(cfg, spec: ModelSpec) -> Algorithm:
    """Instantiate the configured algorithm (the config has already checked the name against REGISTRY)."""
    return REGISTRY[cfg.algorithm.name](cfg, spec)


__all__ = ["Algorithm", "ClientContext", "LocalProblem", "ModelSpec", "REGISTRY", "Update", "aggregate",
           "make_algorithm", "model_spec"]
