"""A CNN4 model, its spec, a configured algorithm, the initial global state and one client's context: what the
algorithm unit tests start from."""

import torch
from torch import nn

from fedmrn_mpi.algorithms import make_algorithm, model_spec
from fedmrn_mpi.config import load_config
from fedmrn_mpi.models import build_model, global_state
from fedmrn_mpi.training import LocalTraining

CPU = torch.device("cpu")


def algo_setup(*overrides, total_steps=10):
    """(cfg, model, spec, algo, state, ctx) for round 3, client 7, `total_steps` local steps of batch 64."""
    cfg = load_config(None, list(overrides))
    model = build_model("cnn4", 1, 28, 10, seed=0)
    spec = model_spec(model)
    algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    state = {k: v.detach().clone() for k, v in global_state(model).items()}
    ctx = LocalTraining(cfg.seed, cfg.lr, 64, 1).context(3, 7, 64 * total_steps, CPU)
    return cfg, model, spec, algo, state, ctx


class TinyNet(nn.Module):
    """Conv (masked, 36 entries) + BatchNorm (parameters and running statistics) + Linear (masked, 140 entries):
    every tensor role in a model fast enough for many payloads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(20, 7)


def aggregate(algo, messages, global_state, server_lr, round_, device):
    """The server's aggregation with on_bad_update=abort: just the new global state."""
    from fedmrn_mpi.algorithms import aggregate_round
    return aggregate_round(algo, messages, global_state, server_lr, round_, device)[0]
