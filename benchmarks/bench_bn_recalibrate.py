"""Extra cost per client of `bn_recalibrate: true` (training/bn_recalibrate.py) against the client's training.

    python benchmarks/bench_bn_recalibrate.py [--device cpu|cuda] [--algorithms fedmrn,fedmrn:post,fedavg,...]
                                              [--samples 600] [--batch 64] [--epochs 2] [--repeat 5]
                                              [--threads 1] [--out benchmarks/results/bn_recalibrate_<device>.json]

CNN4 on FashionMNIST-sized data: one client with `--samples` random 1x28x28 uint8 images (600 = FashionMNIST's
60,000 over 100 clients), normalised per batch as the runner does, batch 64, `--epochs` local epochs. Each
algorithm's client round runs with recalibration off and on (same round and client, so the same training);
`train_client`'s phases are timed as the runner books them: "local_train" (the SGD loop) and "encode" (the
upload; with recalibration also the decode of the client's own payload, the rebuilt model and the one
forward pass over the first epoch's batches). The extra cost is encode(on) - encode(off), the best of
`--repeat` timed runs each (after one warm-up); it is also split into its two parts, timed alone:
"rebuild" (decode + server_step + eval_state) and "BN pass" (the statistics' forward pass). The table gives
it in ms per client and as a share of the client's training time at `--epochs` and, scaled by epochs (the
pass costs the same whatever the epoch count), at 10 local epochs (the paper's setting).
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
from fedmrn_mpi.training import LocalTraining, train_client  # noqa: E402
from fedmrn_mpi.training.bn_recalibrate import estimate_bn_stats, served_state  # noqa: E402
from fedmrn_mpi.training.local import ClientRun  # noqa: E402

from bench_batched import PhaseClock  # noqa: E402  (the same CUDA-synced phase timer)

ALGORITHMS = {
    "fedmrn": ["algorithm.name=fedmrn"],
    "fedmrn:post": ["algorithm.name=fedmrn", "algorithm.training=post"],
    "fedavg": ["algorithm.name=fedavg"],
    "signsgd": ["algorithm.name=signsgd", "algorithm.error_feedback=true"],
    "qsgd": ["algorithm.name=qsgd"],
    "topk": ["algorithm.name=topk", "algorithm.error_feedback=true"],
    "eden": ["algorithm.name=eden"],
    "fedpm": ["algorithm.name=fedpm"],
    "fedbat": ["algorithm.name=fedbat"],
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_one(label: str, args, dev: torch.device) -> dict:
    model = build_model("cnn4", 1, 28, 10, seed=0).to(dev)
    spec = model_spec(model)
    cfg = load_config(None, ALGORITHMS[label])
    algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    state = {n: t.detach().clone() for n, t in global_state(model).items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (args.samples, 1, 28, 28), generator=g, dtype=torch.uint8).to(dev)
    y = torch.randint(0, 10, (args.samples,), generator=g).to(dev)
    transform = functools.partial(normalize_images, mean=[0.2860], std=[0.3530])
    settings = {on: LocalTraining(cfg.seed, cfg.lr, args.batch, args.epochs, transform=transform,
                                  bn_recalibrate=on) for on in (False, True)}

    def client(on: bool):
        s = settings[on]
        ctx = s.context(2, 5, args.samples, dev)
        ctx.state = {n: torch.zeros(shape, device=dev) for n, shape in algo.client_state_shapes().items()}
        clock = PhaseClock(dev)
        res = train_client(model, algo, state, x, y, ctx, s, timer=clock)
        return clock.seconds, res, ctx

    best = {}
    for on in (False, True):
        client(on)  # warm-up
        runs = [client(on)[0] for _ in range(args.repeat)]
        best[on] = {k: min(r[k] for r in runs) for k in ("local_train", "encode")}

    # the two parts alone: rebuilding the served model from the payload, and the statistics' pass
    _, res, ctx = client(False)
    run = ClientRun(model, algo, state, x, y, ctx, settings[True])
    rebuild, bn_pass = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        served = served_state(algo, res.payload, res.seed, state, ctx.round, 1.0, dev)
        _sync(dev)
        t1 = time.perf_counter()
        estimate_bn_stats(model, served, run.first_epoch_inputs())
        _sync(dev)
        t2 = time.perf_counter()
        rebuild.append(t1 - t0)
        bn_pass.append(t2 - t1)

    train = best[False]["local_train"]
    extra = best[True]["encode"] - best[False]["encode"]
    per_epoch = train / args.epochs
    return {"algorithm": label, "samples": args.samples, "batch": args.batch, "epochs": args.epochs,
            "train_ms": 1e3 * train, "encode_off_ms": 1e3 * best[False]["encode"],
            "encode_on_ms": 1e3 * best[True]["encode"], "extra_ms": 1e3 * extra,
            "rebuild_ms": 1e3 * min(rebuild), "bn_pass_ms": 1e3 * min(bn_pass),
            "extra_share": extra / train, "extra_share_10_epochs": extra / (10 * per_epoch)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS), help=f"comma-separated, of {', '.join(ALGORITHMS)}")
    ap.add_argument("--samples", type=int, default=600, help="samples of the client")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="local epochs")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the runner's default is 1)")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/bn_recalibrate_<device>.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device={dev} ({name})  torch={torch.__version__}  CNN4 1x28x28  samples={args.samples}  "
          f"batch={args.batch}  epochs={args.epochs}  repeat={args.repeat} (best)")
    print(f"{'algorithm':<13}{'train ms':>10}{'encode ms':>11}{'+recal ms':>11}{'rebuild':>9}{'BN pass':>9}"
          f"{'% of train':>12}{'% at E=10':>11}")
    rows = []
    for label in args.algorithms.split(","):
        r = bench_one(label, args, dev)
        rows.append(r)
        print(f"{label:<13}{r['train_ms']:>10.1f}{r['encode_off_ms']:>11.1f}{r['extra_ms']:>11.1f}"
              f"{r['rebuild_ms']:>9.1f}{r['bn_pass_ms']:>9.1f}{100 * r['extra_share']:>11.1f}%"
              f"{100 * r['extra_share_10_epochs']:>10.1f}%")
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"bn_recalibrate_{dev.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "torch": torch.__version__, "python": platform.python_version(),
                               "machine": platform.machine(), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
