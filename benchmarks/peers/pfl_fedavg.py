"""The peers benchmark's task on pfl-research: its simulated FederatedAveraging on PyTorch.

    torchrun --standalone --nproc_per_node 2 benchmarks/peers/pfl_fedavg.py --task TASK.json --rounds N \
        --out RESULT.json

Run by benchmarks/compare_peers.py inside its pfl virtual environment (pfl[pytorch] + torch). pfl's own
machinery throughout: a FederatedDataset of the task's 100 clients (fedmrn_mpi's partition), the
"minimize_reuse" user sampler (no client twice in a round) over a seeded shuffle of the client ids, cohorts
of `clients_per_round` split over the torchrun processes (gloo all-reduce of the updates), local SGD from
NNTrainHyperParams (pfl iterates a user's data in order, without shuffling), the central SGD optimizer with
lr 1.0 (= FedAvg), and CentralEvaluationCallback on the whole test set every round, sharded over the
processes and all-reduced. pfl averages the trainable parameters only: the BN running statistics stay those
each process's model accumulated while training its users.

pfl's CentralEvaluationCallback evaluates the initial model before round 1 and then after rounds 2..N (it skips
iteration 0): as many evaluations as the other sides, one round earlier; round 1's accuracy is therefore not
measured. Seconds per round: on rank 0, from the end of one round's evaluation to the next (round 1 from just
before the initial evaluation). The per-user evaluation before/after local training, which pfl runs in rounds
where `iteration % evaluation_frequency == 0`, is turned off by evaluation_frequency = rounds + 1 except in
round 1 (iteration 0 always matches).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import common  # noqa: E402
from pfl.aggregate.simulate import SimulatedBackend  # noqa: E402
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams  # noqa: E402
from pfl.callback.base import TrainingProcessCallback  # noqa: E402
from pfl.callback.central_evaluation import CentralEvaluationCallback  # noqa: E402
from pfl.data.dataset import Dataset  # noqa: E402
from pfl.data.federated_dataset import FederatedDataset  # noqa: E402
from pfl.data.sampling import get_user_sampler  # noqa: E402
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams  # noqa: E402
from pfl.internal.ops.selector import get_default_framework_module as get_ops  # noqa: E402
from pfl.metrics import Metrics, Weighted  # noqa: E402
from pfl.model.pytorch import PyTorchModel  # noqa: E402

ACCURACY, LOSS = "Central val | accuracy", "Central val | loss"


class PflCNN4(common.CNN4):
    """CNN4 with the `loss` and `metrics` methods that pfl's PyTorchModel calls."""

    def loss(self, x, y, eval=False):  # noqa: A002 - pfl's keyword
        self.eval() if eval else self.train()
        return F.cross_entropy(self(x).float(), y)  # float32 logits under autocast, as on every side

    @torch.no_grad()
    def metrics(self, x, y, eval=True):  # noqa: A002
        self.eval() if eval else self.train()
        logits = self(x).float()
        return {"loss": Weighted(float(F.cross_entropy(logits, y, reduction="sum")), len(x)),
                "accuracy": Weighted(float((logits.argmax(1) == y).sum()), len(x))}


class RoundClock:
    """Two callbacks sharing one clock: `start` goes first in the list (its on_train_begin runs before the
    central evaluation's), `rounds` goes last (its after_central_iteration sees that round's metrics)."""

    def __init__(self) -> None:
        self.t = 0.0
        self.rows: list[dict] = []
        self.initial: dict = {}
        clock = self

        class Start(TrainingProcessCallback):
            def on_train_begin(self, *, model):
                clock.t = time.perf_counter()
                return Metrics()

        class Rounds(TrainingProcessCallback):
            def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
                now = time.perf_counter()
                vals = aggregate_metrics.to_simple_dict()
                row = {"round": central_iteration + 1, "wall_seconds": now - clock.t,
                       "test_accuracy": vals.get(ACCURACY), "test_loss": vals.get(LOSS)}
                if central_iteration == 0:  # what the metrics hold here is the initial model's evaluation
                    clock.initial = {"test_accuracy": row["test_accuracy"], "test_loss": row["test_loss"]}
                    row.update(test_accuracy=None, test_loss=None)
                clock.rows.append(row)
                clock.t = now
                if get_ops().distributed.global_rank == 0:
                    print(f"pfl round {central_iteration + 1}: acc {vals.get(ACCURACY)} "
                          f"{clock.rows[-1]['wall_seconds']:.2f} s", file=sys.stderr, flush=True)
                return False, Metrics()

        self.start, self.rounds = Start(), Rounds()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: pfl's own mixed precision, PyTorchModel(amp_dtype=torch.bfloat16), which autocasts "
                         "local training and evaluation")
    ap.add_argument("--compile", action="store_true",
                    help="pfl's own use_torch_compile=True (torch.compile of the model in every process)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = common.load_task(args.task)
    dist = get_ops().distributed
    np.random.seed(task["seed"] & 0xFFFFFFFF)  # the same on every process: pfl's samplers must agree
    torch.manual_seed(task["seed"])

    x, y = common.load_fashion_mnist(task["data_dir"], "train")
    users = {}
    for cid, idx in enumerate(task["client_indices"]):
        idx = torch.from_numpy(idx)
        users[cid] = [common.normalize(x[idx], *task["train_norm"]), y[idx]]
    order = np.random.RandomState(task["seed"] & 0xFFFFFFFF).permutation(len(users)).tolist()
    train_data = FederatedDataset.from_slices(users, get_user_sampler("minimize_reuse", order))
    x_test, y_test = common.load_fashion_mnist(task["data_dir"], "t10k")
    central_data = Dataset(raw_data=[common.normalize(x_test, *task["test_norm"]), y_test])

    net = PflCNN4()
    init = common.build_cnn4(task["init_seed"])
    net.load_state_dict(init.state_dict())
    model = PyTorchModel(model=net, local_optimizer_create=torch.optim.SGD,
                         central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
                         amp_dtype=torch.bfloat16 if args.precision == "bf16" else None,
                         use_torch_compile=args.compile)
    backend = SimulatedBackend(training_data=train_data, val_data=None, postprocessors=[])
    params = NNAlgorithmParams(central_num_iterations=args.rounds, evaluation_frequency=args.rounds + 1,
                               train_cohort_size=task["clients_per_round"], val_cohort_size=0)
    train_params = NNTrainHyperParams(local_learning_rate=task["lr"], local_num_epochs=task["local_epochs"],
                                      local_batch_size=task["batch_size"])
    eval_params = NNEvalHyperParams(local_batch_size=task["eval_batch_size"])
    clock = RoundClock()
    callbacks = [clock.start, CentralEvaluationCallback(central_data, model_eval_params=eval_params, frequency=1),
                 clock.rounds]
    FederatedAveraging().run(algorithm_params=params, backend=backend, model=model,
                             model_train_params=train_params, model_eval_params=eval_params, callbacks=callbacks)

    if dist.global_rank == 0:
        import importlib.metadata as md
        result = {"side": "pfl", "rows": clock.rows, "initial_model_eval": clock.initial, "init_checksum": common.init_checksum(init),
                  "in_process_seconds": time.perf_counter() - T_START,
                  "versions": {p: md.version(p) for p in ("pfl", "torch", "numpy")},
                  "threads": torch.get_num_threads(), "world_size": dist.world_size, "precision": args.precision,
                  "torch_compile": args.compile,
                  "processes": f"{dist.world_size} torchrun workers (gloo) + the torchrun agent"}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
