"""The peers benchmark's task on Flower's Simulation Engine (Ray backend): a ClientApp and a ServerApp with FedAvg.

    python benchmarks/peers/flower_app.py --task TASK.json --rounds N --out RESULT.json [--cpus-per-client 1]

Run by benchmarks/compare_peers.py inside its Flower virtual environment (flwr[simulation] + torch). 100 virtual
SuperNodes, one per client of the task's partition (partition-id = client id); FedAvg samples
`clients_per_round / num_clients` of them per round (fraction_train), weights replies by "num-examples", and
averages the parameters and the BN running statistics (the float state dict), as fedmrn_mpi does. No client-side
evaluation (fraction_evaluate = 0); the ServerApp evaluates the global model on the whole test set after every
round (evaluate_fn; the call for the initial model, round 0, only starts the clock). Seconds per round: between
consecutive evaluate_fn calls on the server (training round + aggregation + central evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network here; before flwr is imported

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

import common

# The ServerApp runs in a thread of the driver process: main() hands it the run settings through this dict.
# The ClientApp runs in Ray actors, which import this module by name: they get everything from the messages.
RUN: dict = {}
_CACHE: dict = {}  # per process (each Ray actor): the task, the normalised training set


def _client_data(task_path: str, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
    if _CACHE.get("path") != task_path:
        task = common.load_task(task_path)
        x, y = common.load_fashion_mnist(task["data_dir"], "train")
        _CACHE.update(path=task_path, x=common.normalize(x, *task["train_norm"]), y=y,
                      idx=task["client_indices"])
    idx = torch.from_numpy(_CACHE["idx"][cid])
    return _CACHE["x"][idx], _CACHE["y"][idx]


def _make_apps() -> tuple[ClientApp, ServerApp]:
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = msg.content["config"]
        torch.set_num_threads(int(cfg["threads"]))
        cid = int(context.node_config["partition-id"])
        x, y = _client_data(str(cfg["task"]), cid)
        model = common.CNN4()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=False)
        rnd = int(cfg["server-round"])
        t0 = time.perf_counter()
        loss = common.train_local(model, x, y, float(cfg["lr"]), int(cfg["batch_size"]), int(cfg["local_epochs"]),
                                  seed=int(cfg["seed"]) * 1_000_003 + rnd * 1_009 + cid,
                                  precision=str(cfg["precision"]))
        content = RecordDict({"arrays": ArrayRecord(common.float_state(model)),
                              "metrics": MetricRecord({"train_loss": loss, "num-examples": len(x),
                                                       "train_seconds": time.perf_counter() - t0})})
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        task, rounds = RUN["task"], RUN["rounds"]
        torch.set_num_threads(RUN["threads"])
        x_test, y_test = common.load_fashion_mnist(task["data_dir"], "t10k")
        x_test = common.normalize(x_test, *task["test_norm"])
        model = common.build_cnn4(task["init_seed"])
        RUN["init_checksum"] = common.init_checksum(model)
        n = task["num_clients"]
        strategy = FedAvg(fraction_train=task["clients_per_round"] / n, fraction_evaluate=0.0,
                          min_train_nodes=task["clients_per_round"], min_available_nodes=n)
        clock = {"t": None}

        def evaluate_fn(server_round: int, arrays: ArrayRecord):
            if server_round == 0:  # the initial model: not evaluated (the other sides do not), the clock starts
                clock["t"] = time.perf_counter()
                return None
            model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
            loss, acc = common.evaluate(model, x_test, y_test, task["eval_batch_size"], RUN["precision"])
            now = time.perf_counter()
            RUN["rows"].append({"round": server_round, "wall_seconds": now - clock["t"], "test_accuracy": acc,
                                "test_loss": loss})
            clock["t"] = now
            print(f"flower round {server_round}/{rounds}: acc {acc:.4f} {RUN['rows'][-1]['wall_seconds']:.2f} s",
                  file=sys.stderr, flush=True)
            return MetricRecord({"accuracy": acc, "loss": loss})

        train_config = ConfigRecord({"lr": float(task["lr"]), "batch_size": int(task["batch_size"]),
                                     "local_epochs": int(task["local_epochs"]), "seed": int(task["seed"]),
                                     "threads": int(RUN["threads"]), "task": RUN["task_path"],
                                     "precision": RUN["precision"]})
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(common.float_state(model)),
                                num_rounds=rounds, train_config=train_config, evaluate_fn=evaluate_fn)
        for row in RUN["rows"]:  # FedAvg's weighted mean over the round's clients (equal sizes: the plain mean)
            metrics = result.train_metrics_clientapp.get(row["round"], {})
            row["client_train_seconds_mean"] = metrics.get("train_seconds")
            row["train_loss"] = metrics.get("train_loss")

    return client_app, server_app


client_app, server_app = _make_apps()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray resources per ClientApp (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: torch.autocast around the ClientApp's training and the ServerApp's evaluation "
                         "(Flower has no precision option: training is the user's code)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    import flwr
    import numpy
    import ray
    from flwr.simulation import run_simulation

    task = common.load_task(args.task)
    RUN.update(task=task, task_path=os.path.abspath(args.task), rounds=args.rounds, threads=args.threads, rows=[],
               precision=args.precision)
    cpus = os.cpu_count() or 1
    backend_config = {"client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
                      "init_args": {"num_cpus": cpus}}
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=task["num_clients"],
                   backend_config=backend_config)
    if len(RUN["rows"]) != args.rounds:
        print(f"flower: {len(RUN['rows'])} of {args.rounds} rounds evaluated", file=sys.stderr)
        return 1
    result = {"side": "flower", "rows": RUN["rows"], "init_checksum": RUN.get("init_checksum"),
              "in_process_seconds": time.perf_counter() - t0,
              "versions": {"flwr": flwr.__version__, "ray": ray.__version__, "torch": torch.__version__,
                           "numpy": numpy.__version__},
              "threads": args.threads, "cpus_per_client": args.cpus_per_client, "precision": args.precision,
              "ray_actors": int(cpus // args.cpus_per_client),
              "processes": f"1 driver (ServerApp + simulation engine) + {int(cpus // args.cpus_per_client)} "
                           f"Ray actors (+ Ray's own daemons)"}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    # Ray actors must find the ClientApp's functions by module name, not in __main__: run main() from the
    # module `flower_app` (this same file, imported once more).
    import flower_app
    sys.exit(flower_app.main())
