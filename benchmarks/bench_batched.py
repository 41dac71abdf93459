"""Samples/s of a rank's local training: K clients one after another (`train_client`) against all K in one
vectorised step per local step (`train_clients_batched`).

    python benchmarks/bench_batched.py [--device cpu|cuda] [--clients 1,4,16,32] [--samples 600]
                                       [--configs cnn4:64,cnn8:32,cnn8:64] [--algorithm fedavg] [--epochs 1]
                                       [--repeat 3] [--warmup 1] [--threads T]
                                       [--out benchmarks/results/batched_<device>.json]

Configs are model:batch; CNN4 trains on 1x28x28 inputs (FashionMNIST's shape), CNN8 on 3x32x32 (CIFAR's).
Every client holds `--samples` random uint8 images (normalised per batch as the runner does) and trains
`--epochs` local epochs. Samples/s = K * samples * epochs / seconds; "train" counts the local training
alone (the part the batched path vectorises), "total" adds each client's encode. The best of `--repeat`
timed rounds is reported after `--warmup` untimed ones (shared machines are noisy: trust the best).
The table prints the speed-up of batched over sequential; the JSON keeps every row and the environment.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmrn_mpi.algorithms import make_algorithm, model_spec  # noqa: E402
from fedmrn_mpi.config import load_config  # noqa: E402
from fedmrn_mpi.data.readers import normalize_images  # noqa: E402
from fedmrn_mpi.models import build_model, global_state  # noqa: E402
from fedmrn_mpi.training import LocalTraining, train_client, train_clients_batched  # noqa: E402

SHAPES = {"cnn4": (1, 28), "cnn8": (3, 32)}


class PhaseClock:
    """A `timer(phase)` for train_client / train_clients_batched that syncs CUDA at the end of each phase."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, {"local_train": 0.0, "encode": 0.0}

    def __call__(self, phase: str):
        clock = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                if clock.device.type == "cuda":
                    torch.cuda.synchronize(clock.device)
                clock.seconds[phase] += time.perf_counter() - self.t0

        return _Phase()


def bench_one(model_name: str, batch: int, k: int, args, dev: torch.device) -> dict:
    c, s = SHAPES[model_name]
    model = build_model(model_name, c, s, 10, seed=0).to(dev)
    spec = model_spec(model)
    cfg = load_config(None, [f"algorithm.name={args.algorithm}"])
    algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    state = {n: t.detach().clone() for n, t in global_state(model).items()}
    g = torch.Generator().manual_seed(k)
    data = [(torch.randint(0, 256, (args.samples, c, s, s), generator=g, dtype=torch.uint8).to(dev),
             torch.randint(0, 10, (args.samples,), generator=g).to(dev)) for _ in range(k)]
    settings = LocalTraining(cfg.seed, cfg.lr, batch, args.epochs,
                             transform=functools.partial(normalize_images, mean=[0.5] * c, std=[0.25] * c))

    def contexts(round_):
        return [settings.context(round_, cid, args.samples, dev) for cid in range(k)]

    def sequential(clock, round_):
        for (x, y), ctx in zip(data, contexts(round_)):
            train_client(model, algo, state, x, y, ctx, settings, timer=clock)

    def batched(clock, round_):
        train_clients_batched(model, algo, state, data, contexts(round_), settings, timer=clock)

    # a one-step warm-up of both paths (lazy initialisation, first-call allocations), then `--warmup` rounds
    small = [(x[:batch], y[:batch]) for x, y in data[:2]]
    one = LocalTraining(cfg.seed, cfg.lr, batch, 1, transform=settings.transform)
    for i, (x, y) in enumerate(small):
        train_client(model, algo, state, x, y, one.context(0, i, len(x), dev), one)
    train_clients_batched(model, algo, state, small, [one.context(0, i, len(x), dev) for i, (x, _) in
                                                      enumerate(small)], one)

    row = {"model": model_name, "input": f"{c}x{s}x{s}", "batch": batch, "clients": k, "samples": args.samples,
           "epochs": args.epochs, "algorithm": args.algorithm}
    n = k * args.samples * args.epochs
    for label, fn in (("sequential", sequential), ("batched", batched)):
        for _ in range(args.warmup):
            fn(PhaseClock(dev), 1)  # warm-up (CUDA context, cuDNN plans, allocator)
        best_train = best_total = float("inf")
        for r in range(args.repeat):
            clock = PhaseClock(dev)
            fn(clock, 2 + r)
            best_train = min(best_train, clock.seconds["local_train"])
            best_total = min(best_total, clock.seconds["local_train"] + clock.seconds["encode"])
        row[f"{label}_train_samples_per_s"] = n / best_train
        row[f"{label}_total_samples_per_s"] = n / best_total
    row["speedup_train"] = row["batched_train_samples_per_s"] / row["sequential_train_samples_per_s"]
    row["speedup_total"] = row["batched_total_samples_per_s"] / row["sequential_total_samples_per_s"]
    if dev.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        torch.cuda.reset_peak_memory_stats(dev)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--clients", default="1,4,16,32", help="clients per rank, comma-separated")
    ap.add_argument("--samples", type=int, default=600, help="samples per client")
    ap.add_argument("--configs", default="cnn4:64,cnn8:32,cnn8:64", help="model:batch, comma-separated")
    ap.add_argument("--algorithm", default="fedavg")
    ap.add_argument("--epochs", type=int, default=1, help="local epochs")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/batched_<device>.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device={dev} ({name})  torch={torch.__version__}  algorithm={args.algorithm}  "
          f"samples/client={args.samples}  epochs={args.epochs}  repeat={args.repeat} (best)")
    header = (f"{'model':<6}{'input':>9}{'batch':>6}{'K':>4}{'seq train/s':>13}{'batched/s':>11}{'speed-up':>10}"
              f"{'seq total/s':>13}{'batched/s':>11}{'speed-up':>10}")
    print(header)
    rows = []
    for spec in args.configs.split(","):
        model_name, batch = spec.split(":")
        for k in (int(v) for v in args.clients.split(",")):
            row = bench_one(model_name, int(batch), k, args, dev)
            rows.append(row)
            print(f"{row['model']:<6}{row['input']:>9}{row['batch']:>6}{k:>4}"
                  f"{row['sequential_train_samples_per_s']:>13.0f}{row['batched_train_samples_per_s']:>11.0f}"
                  f"{row['speedup_train']:>9.2f}x"
                  f"{row['sequential_total_samples_per_s']:>13.0f}{row['batched_total_samples_per_s']:>11.0f}"
                  f"{row['speedup_total']:>9.2f}x", flush=True)
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"batched_{dev.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"device": name, "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "threads": torch.get_num_threads()}
    out.write_text(json.dumps({"env": env, "args": vars(args), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
