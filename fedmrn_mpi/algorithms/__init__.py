"""Algorithms behind one interface (see base.Algorithm); REGISTRY maps `algorithm.name` to a class.

The config accepts exactly the names in REGISTRY, and for each the keys of its `Options`: an algorithm becomes
selectable by being registered here.
"""

from typing import Any

from .aggregate import BadUpdateError, aggregate_round
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


def make_algorithm(options: Any, spec: ModelSpec, seed: int) -> Algorithm:
    """The registered algorithm whose `Options` `options` are (each has its own class), for the model `spec` and
    the run's root `seed`: `make_algorithm(cfg.algorithm.options, spec, cfg.seed)`."""
    for cls in REGISTRY.values():
        if type(options) is cls.Options:
            return cls(options, spec, seed)
    raise TypeError(f"{type(options).__qualname__} are the options of no registered algorithm")


__all__ = ["Algorithm", "BadUpdateError", "ClientContext", "LocalProblem", "ModelSpec", "REGISTRY", "Update",
           "aggregate_round", "make_algorithm", "model_spec"]
