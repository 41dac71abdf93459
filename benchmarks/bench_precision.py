"""Local training step time in fp32 and bf16 (`precision`), and the resolution FedMRN's soft values keep in bf16.

    python benchmarks/bench_precision.py [--configs cnn4:64,cnn8:64] [--algorithms fedavg,fedmrn] [--steps 20]
                                         [--repeat 5] [--threads 1] [--out benchmarks/results/precision.json]

One client's real local step (`training.local._forward_backward` plus the SGD step, through `train_client`'s own
code path) on random inputs of the dataset's shape: CNN4 on 1x28x28 (FashionMNIST), CNN8 on 3x32x32 (CIFAR).
fp32 and bf16 alternate inside each repeat so that a busy machine slows both alike; the best of `--repeat` is
reported (ms per step) with the ratio fp32/bf16. Then, for FedMRN at its default σ = 0.01, after one step: how
coarse bf16 makes the soft weights w + n·q that the convolutions see (median bf16 rounding error relative to
|n·q|), and the cosine similarity and relative difference of the gradient into u between the two precisions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmrn_mpi.algorithms import make_algorithm, model_spec  # noqa: E402
from fedmrn_mpi.config import load_config  # noqa: E402
from fedmrn_mpi.models import build_model, global_state  # noqa: E402
from fedmrn_mpi.training import LocalTraining  # noqa: E402
from fedmrn_mpi.training.local import ClientRun, train_steps, _forward_backward  # noqa: E402
from fedmrn_mpi.run.machine import BF16_CPU_FLAGS, cpu_flags  # noqa: E402

SHAPES = {"cnn4": (1, 28), "cnn8": (3, 32)}
CPU = torch.device("cpu")


def _client(model_name: str, algorithm: str, batch: int, steps: int, precision: str):
    cfg = load_config(None, [f"algorithm.name={algorithm}"])
    c, h = SHAPES[model_name]
    model = build_model(model_name, c, h, 10, seed=0)
    spec = model_spec(model)
    algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    state = {k: v.detach().clone() for k, v in global_state(model).items()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * steps, c, h, h, generator=g)
    y = torch.randint(0, 10, (batch * steps,), generator=g)
    settings = LocalTraining(cfg.seed, cfg.lr, batch, 1, precision=precision)
    ctx = settings.context(1, 0, batch * steps, CPU)
    return model, algo, state, x, y, ctx, settings, spec


def step_ms(model_name: str, algorithm: str, batch: int, steps: int, precision: str) -> float:
    model, algo, state, x, y, ctx, settings, _ = _client(model_name, algorithm, batch, steps, precision)
    run = ClientRun(model, algo, state, x, y, ctx, settings)
    t0 = time.perf_counter()
    train_steps(model, [run], settings)
    return 1000 * (time.perf_counter() - t0) / steps


def resolution(model_name: str, batch: int) -> dict:
    """FedMRN after one step: bf16 rounding of the soft weights relative to |n·q|, and the gradient into u."""
    out = {}
    grads = {}
    for precision in ("fp32", "bf16"):
        model, algo, state, x, y, ctx, settings, spec = _client(model_name, "fedmrn", batch, 1, precision)
        run = ClientRun(model, algo, state, x, y, ctx, settings)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # mid-training latent updates: q uniform in [0, 1] (u starts at 0, where n·q = 0)
            for name in spec.masked:
                n = run.problem.extra["noise"][name]
                run.problem.trainables[name].copy_(torch.rand(n.shape, generator=g) * n)
        params = run.next_params()
        grads[precision], _ = _forward_backward(model, run, params, settings)
        if precision == "bf16":
            rel = []
            for name in spec.masked:
                nq = params[name].detach() - state[name]
                err = (params[name].detach().bfloat16().float() - params[name].detach()).abs()
                mask = nq.abs() > 0
                rel.append((err[mask] / nq.abs()[mask]).median().item())
            out["soft_value_rounding_rel_median"] = sorted(rel)
    cos = [F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item() for a, b in zip(grads["fp32"], grads["bf16"])]
    rel = [((a - b).norm() / a.norm()).item() for a, b in zip(grads["fp32"], grads["bf16"])]
    out["grad_u_cosine_min_max"] = [min(cos), max(cos)]
    out["grad_u_rel_diff_min_max"] = [min(rel), max(rel)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="cnn4:64,cnn8:64")
    ap.add_argument("--algorithms", default="fedavg,fedmrn")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/precision.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"native bf16 on this CPU: {bool(cpu_flags() & set(BF16_CPU_FLAGS))}; torch {torch.__version__}; {args.threads} thread(s)")
    print(f"{'model':6} {'batch':>5} {'algorithm':9} {'fp32 ms':>8} {'bf16 ms':>8} {'fp32/bf16':>9}")
    for item in args.configs.split(","):
        model_name, batch = item.split(":")
        for algorithm in args.algorithms.split(","):
            best = {"fp32": float("inf"), "bf16": float("inf")}
            step_ms(model_name, algorithm, int(batch), 3, "bf16")  # warm-up (oneDNN primitive caches)
            step_ms(model_name, algorithm, int(batch), 3, "fp32")
            for _ in range(args.repeat):
                for precision in ("fp32", "bf16"):
                    best[precision] = min(best[precision],
                                          step_ms(model_name, algorithm, int(batch), args.steps, precision))
            ratio = best["fp32"] / best["bf16"]
            rows.append({"model": model_name, "batch": int(batch), "algorithm": algorithm, **best, "ratio": ratio})
            print(f"{model_name:6} {batch:>5} {algorithm:9} {best['fp32']:8.1f} {best['bf16']:8.1f} {ratio:9.2f}")
    res = resolution("cnn4", 64)
    print(f"FedMRN CNN4 (σ 0.01): bf16 rounding of w + n·q, median per tensor relative to |n·q|: "
          f"{', '.join(f'{v:.3f}' for v in res['soft_value_rounding_rel_median'])}")
    print(f"gradient into u, bf16 vs fp32: cosine {res['grad_u_cosine_min_max'][0]:.4f}..."
          f"{res['grad_u_cosine_min_max'][1]:.4f}, relative difference {res['grad_u_rel_diff_min_max'][0]:.3f}..."
          f"{res['grad_u_rel_diff_min_max'][1]:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "resolution": res, "torch": torch.__version__,
                                          "machine": platform.processor() or platform.machine()}, indent=1))


if __name__ == "__main__":
    main()
