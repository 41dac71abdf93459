"""Time the per-round hot paths outside MPI: one client's local training and encode, and the server's
decode + aggregate of K uploads, for each algorithm.

    python benchmarks/bench_round.py [--model cnn4] [--clients 10] [--samples 600] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from fedmrn_mpi.algorithms import aggregate_round, make_algorithm, model_spec
from fedmrn_mpi.comm.wire import decode_messages, encode_message
from fedmrn_mpi.config import load_config
from fedmrn_mpi.models import build_model, global_state
from fedmrn_mpi.training import LocalTraining, train_client


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="cnn4", choices=["cnn4", "cnn8"])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--algorithms", default="fedavg,fedmrn")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    shape = (1, 28) if args.model == "cnn4" else (3, 32)
    model = build_model(args.model, shape[0], shape[1], 10, seed=0).to(dev)
    spec = model_spec(model)
    state = {k: v.detach().clone() for k, v in global_state(model).items()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, shape[0], shape[1], shape[1], generator=g).to(dev)
    y = torch.randint(0, 10, (args.samples,), generator=g).to(dev)
    print(f"{args.model}: {spec.num_masked} masked, {spec.num_unmasked} unmasked; {args.samples} samples/client, "
          f"device {dev}, {args.threads} thread(s)")
    for name in args.algorithms.split(","):
        cfg = load_config(None, [f"algorithm.name={name}"])
        algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
        times: dict[str, float] = {"local_train": 0.0, "encode": 0.0}

        def timer(phase, _t=times):
            class _T:
                def __enter__(self):
                    self.t0 = time.perf_counter()

                def __exit__(self, *exc):
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    _t[phase] += time.perf_counter() - self.t0
            return _T()

        msgs = []
        local = LocalTraining(root_seed=1, lr=0.1, batch_size=64, local_epochs=1)
        for cid in range(args.clients):
            ctx = local.context(1, cid, args.samples, dev)
            res = train_client(model, algo, state, x, y, ctx, local, timer=timer)
            buf = encode_message(algo.algo_id, 1, cid, res.seed, res.weight, res.train_loss, res.payload)
            msgs += [(1, m) for m in decode_messages(buf, rank=1, round_=1, algo_id=algo.algo_id)]
        t0 = time.perf_counter()
        aggregate_round(algo, msgs, state, 1.0, 1, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_dec = time.perf_counter() - t0
        steps = -(-args.samples // 64)
        print(f"{name:8s} train {1000 * times['local_train'] / args.clients / steps:7.1f} ms/step  "
              f"encode {1000 * times['encode'] / args.clients:6.2f} ms/client  "
              f"decode+aggregate {1000 * t_dec / args.clients:6.2f} ms/client  "
              f"upload {algo.payload_nbytes()} B/client")


if __name__ == "__main__":
    main()
