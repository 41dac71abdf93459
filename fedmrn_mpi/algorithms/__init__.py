"""Algorithms behind one interface (see base.Algorithm); REGISTRY maps `algorithm.name` to a class.

The config accepts exactly the names in REGISTRY: an algorithm becomes selectable by being registered here.
"""

from .aggregate import BadUpdateError, aggregate, aggregate_round
from .base import Algorithm, ClientContext, LocalProblem, Update
from .eden import EDEN
from .fedavg import FedAvg
from .fedbat import FedBAT
from .fedmrn import FedMRN
from .fedpm import FedPM
from .qsgd import QSGD
from .signsgd import SignSGD
from .spec import ModelSpec, model_spec
from .topk import TopK

REGISTRY: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FedMRN, FedAvg, SignSGD, QSGD, TopK, EDEN,
                                                                   FedPM, FedBAT)}


def make_algorithm(cfg, spec: ModelSpec) -> Algorithm:
    """Instantiate the configured algorithm (the config has already checked the name against REGISTRY)."""
    return REGISTRY[cfg.algorithm.name](cfg, spec)


__all__ = ["Algorithm", "BadUpdateError", "ClientContext", "LocalProblem", "ModelSpec", "REGISTRY", "Update",
           "aggregate", "aggregate_round", "make_algorithm", "model_spec"]
