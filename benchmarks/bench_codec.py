"""Micro-benchmarks of FedMRN's codec: noise, the per-step mask draw, the final draw + packing, unpacking and the
server's decode + weighted sum of K clients, against the device's copy bandwidth.

    python benchmarks/bench_codec.py --device cpu|cuda [--numel N] [--clients K] [--repeat R] [--out FILE]

CPU: the reference implementation (NumPy/torch); default 1.12M parameters (a tenth of the GPU size, so the run
takes well under a minute on two cores). CUDA: the Triton kernels ("triton") and the eager torch path they
replace ("eager"), default 11.2M parameters (one flat tensor, ResNet-18-sized) and K = 32 clients.

Every row gives the bytes an op must move at least (its inputs and outputs once: noise writes 4 B/element; the
mask draw reads u, w and writes w + Δ - u; the final draw reads u and writes 1 bit; decode reads K bits and
writes 4 B per element; regenerated noise and draws cost no traffic), the achieved GB/s and "x floor": the time
over bytes / copy bandwidth, the copy bandwidth measured here as a large tensor copy (read + write). On CUDA,
times are GPU times of back-to-back calls replayed from a CUDA graph (the kernels' own cost, without Python
launch overhead); the eager-launch time per call (CUDA events around a loop of calls) is in the JSON too.
Targets (an NVIDIA H200): noise >= 3 TB/s of float32 output, final draw + packing of 11.2M parameters
<= 0.1 ms, decode + weighted sum of 32 clients x 11.2M parameters <= 0.5 ms; they are checked on CUDA only.
The table is printed and written as JSON to benchmarks/results/codec_<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmrn_mpi.algorithms import make_algorithm  # noqa: E402
from fedmrn_mpi.algorithms.base import ClientContext  # noqa: E402
from fedmrn_mpi.algorithms.fedmrn import _FINAL, _NOISE, mask_probability, masked_noise  # noqa: E402
from fedmrn_mpi.algorithms.spec import ModelSpec  # noqa: E402
from fedmrn_mpi.config import load_config  # noqa: E402
from fedmrn_mpi.rng.bits import pack_bits, unpack_bits  # noqa: E402
from fedmrn_mpi.rng.noise import NOISE_KINDS, make_stream, noise, uniform01  # noqa: E402

GPU_NUMEL, CPU_NUMEL = 11_200_000, 1_120_000
TARGETS = {  # op -> (text, check(seconds, GB/s) -> bool); H200, full size only
    "noise uniform": ("≥ 3 TB/s", lambda s, gbps: gbps >= 3000.0),
    "noise rademacher": ("≥ 3 TB/s", lambda s, gbps: gbps >= 3000.0),
    "final draw + pack": ("≤ 0.1 ms", lambda s, gbps: s <= 1e-4),
    "decode + sum": ("≤ 0.5 ms", lambda s, gbps: s <= 5e-4),
}


class Timer:
    def __init__(self, device: torch.device, repeat: int) -> None:
        self.device, self.repeat = device, repeat

    def __call__(self, fn: Callable[[], object], graph_ok: bool = True) -> dict:
        if self.device.type == "cpu":
            fn()
            ts = []
            for _ in range(self.repeat):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return {"s": min(ts), "s_median": statistics.median(ts)}
        return self._cuda(fn, graph_ok)

    def _cuda(self, fn: Callable[[], object], graph_ok: bool) -> dict:
        for _ in range(3):  # compile / autotune / allocate
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        one = time.perf_counter() - t0
        inner = max(3, min(200, int(0.05 / max(one, 1e-6))))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        eager = []
        for _ in range(self.repeat):
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            eager.append(start.elapsed_time(end) / 1e3 / inner)
        out = {"s_eager": min(eager), "s_eager_median": statistics.median(eager)}
        if graph_ok:
            try:
                g = torch.cuda.CUDAGraph()
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    fn()  # warm the side stream's allocator
                torch.cuda.current_stream().wait_stream(s)
                with torch.cuda.graph(g):
                    for _ in range(inner):
                        fn()
                g.replay()
                torch.cuda.synchronize()
                graph = []
                for _ in range(self.repeat):
                    start.record()
                    g.replay()
                    end.record()
                    end.synchronize()
                    graph.append(start.elapsed_time(end) / 1e3 / inner)
                out.update(s_graph=min(graph), s_graph_median=statistics.median(graph))
                del g
            except Exception as exc:  # not capturable: report the eager figure
                out["graph_error"] = f"{type(exc).__name__}: {exc}"[:200]
                torch.cuda.synchronize()
        out["s"] = out.get("s_graph", out["s_eager"])
        return out


def copy_bandwidth(device: torch.device, timer: Timer) -> float:
    """GB/s of a large tensor copy, counting the bytes read and written."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB on the GPU, 128 MiB on the CPU
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    r = timer(lambda: dst.copy_(src))
    return 2 * 4 * n / r["s"] / 1e9


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--numel", type=int, default=None, help=f"parameters (default {GPU_NUMEL:,} on CUDA, "
                                                             f"{CPU_NUMEL:,} on the CPU)")
    ap.add_argument("--clients", type=int, default=32, help="clients in decode + sum (default 32)")
    ap.add_argument("--repeat", type=int, default=None, help="timed repeats (default 5 on CUDA, 3 on the CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/codec_<device>.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    N = args.numel or (GPU_NUMEL if dev.type == "cuda" else CPU_NUMEL)
    K = args.clients
    timer = Timer(dev, args.repeat or (5 if dev.type == "cuda" else 3))
    impls = ("triton", "eager") if dev.type == "cuda" else ("reference",)
    impl_arg = {"triton": "triton", "eager": "reference", "reference": "reference"}
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        import triton
        triton_version = triton.__version__
    else:
        cpu = platform.processor() or platform.machine()
        name, triton_version = f"cpu ({cpu}, {torch.get_num_threads()} threads)", None

    copy_gbps = copy_bandwidth(dev, timer)
    print(f"device {name}  torch {torch.__version__}  triton {triton_version}  numel {N:,}  clients {K}  "
          f"copy {copy_gbps:,.0f} GB/s")

    # One flat masked tensor of N parameters, FedMRN binary masks over uniform noise (the paper's default).
    cfg = load_config(None, ["algorithm.name=fedmrn"])
    spec = ModelSpec(names=("w",), shapes={"w": (N,)}, params=("w",), buffers=(), masked=("w",))
    algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    sigma, kind, mask = algo.options.effective_sigma, algo.options.noise, algo.options.mask
    seed, draw_seed, T = 0x1234_5678_9ABC_DEF0, 0x0FED_CBA9_8765_4321, 7
    ctx = ClientContext(round=1, client_id=0, noise_seed=seed, draw_seed=draw_seed, num_samples=64 * T,
                        num_batches=T, total_steps=T, device=dev)
    g = torch.Generator().manual_seed(0)
    n = noise(seed, make_stream(_NOISE, 0), N, kind, sigma, dev)
    u = (torch.rand(N, generator=g) * 3 - 1.5).to(dev) * n      # r = u / n over [-1.5, 1.5]
    w = (torch.randn(N, generator=g) * 0.01).to(dev)
    mask_bits = (torch.rand(N, generator=g) < 0.5).to(dev)
    packed = pack_bits(mask_bits)
    rows = torch.randint(0, 256, (K, packed.numel()), generator=g, dtype=torch.uint8).to(dev)
    if N % 8:
        rows[:, -1] &= (1 << (N % 8)) - 1
    seeds = [seed + 7919 * k for k in range(K)]
    weights_list = [float(64 * (k % 5 + 1) + k) for k in range(K)]
    weights = torch.tensor(weights_list, dtype=torch.float32, device=dev)
    out_packed = torch.empty_like(packed)

    rows_out: list[dict] = []

    def record(op: str, impl: str, nbytes: int, fn: Callable[[], object], graph_ok: bool = True) -> None:
        r = timer(fn, graph_ok)
        s = r["s"]
        gbps = nbytes / s / 1e9
        row = {"op": op, "impl": impl, "ms": s * 1e3, "bytes": nbytes, "GBps": gbps,
               "x_floor": s / (nbytes / (copy_gbps * 1e9)), "bw_fraction": gbps / copy_gbps}
        for key, v in r.items():  # s_eager, s_graph, ... as milliseconds; graph_error as text
            if key.startswith("s_"):
                row["ms_" + key[2:]] = v * 1e3
            elif key != "s":
                row[key] = v
        if op in TARGETS:
            text, check = TARGETS[op]
            row["target_h200"] = text
            if dev.type == "cuda" and impl == "triton" and N == GPU_NUMEL and (op != "decode + sum" or K == 32):
                row["meets_target"] = bool(check(s, gbps))
        rows_out.append(row)
        mark = {True: "ok", False: "MISS"}.get(row.get("meets_target"), "")
        tgt = f"{row.get('target_h200', '')} {mark}".strip()
        print(f"{op:<20}{impl:<10}{s * 1e3:>11.4f}{nbytes / 1e6:>11.1f}{gbps:>11.1f}{row['x_floor']:>9.2f}  {tgt}")

    print(f"{'op':<20}{'impl':<10}{'ms':>11}{'MB moved':>11}{'GB/s':>11}{'x floor':>9}  target (H200)")
    torch.set_grad_enabled(False)
    for impl in impls:
        ia = impl_arg[impl]
        algo.kernels = ia
        for k in NOISE_KINDS:
            record(f"noise {k}", impl, 4 * N,
                   lambda k=k: noise(seed, make_stream(_NOISE, 0), N, k, sigma, dev, impl=ia))
        record("uniform01", impl, 4 * N, lambda: uniform01(draw_seed, 5, N, dev, impl=ia))
        # one local step's mask draw (psm, p = 3/7 mixes hard and soft): what materialize computes per tensor
        record("mask draw (psm)", impl, 12 * N, lambda: algo.sample_base(u, n, w, 0, 3, ctx))
        record("mask draw (sm)", impl, 12 * N, lambda: algo.sample_base(u, n, w, 0, T, ctx))
        # the final draw into packed bytes: encode's device part
        if ia == "triton":
            record("final draw + pack", impl, 4 * N + N // 8, lambda: algo._final_pack(out_packed, 0, 0, u, n, ctx))
        else:
            def final_ref():
                q = mask_probability(u, n, mask)
                return pack_bits(uniform01(draw_seed, make_stream(_FINAL, 0), N, dev, impl=ia) < q, impl=ia)
            record("final draw + pack", impl, 4 * N + N // 8, final_ref)
        record("pack", impl, N + N // 8, lambda: pack_bits(mask_bits, impl=ia))
        record("unpack", impl, N + N // 8, lambda: unpack_bits(packed, N, impl=ia))
        # the server: K clients' bits + seeds + weights -> Σ a_k Δ_k (aggregate.py's sum for the masked tensors)
        dec_bytes = K * packed.numel() + 4 * N
        if ia == "triton":
            from fedmrn_mpi.algorithms import fedmrn_kernels as fk
            keys = torch.from_numpy(fk.mask_sum_keys(seeds, make_stream(_NOISE, 0), kind)).to(dev)
            acc = torch.empty(N, dtype=torch.float32, device=dev)
            record("decode + sum", impl, dec_bytes,
                   lambda: fk.mask_sum(rows, 0, N, keys, weights, kind=kind, sigma=sigma, signed=mask == "signed",
                                       out=acc))
            record("decode + sum (api)", impl, dec_bytes, lambda: algo._mask_sums(rows, seeds, weights),
                   graph_ok=False)  # includes the keys' host-to-device copy
        else:
            def decode_ref():
                acc = torch.zeros(N, dtype=torch.float32, device=dev)
                for k in range(K):
                    m = unpack_bits(rows[k], N, impl=ia)
                    acc.add_(masked_noise(noise(seeds[k], make_stream(_NOISE, 0), N, kind, sigma, dev, impl=ia), m,
                                          mask), alpha=weights_list[k])
                return acc
            record("decode + sum", impl, dec_bytes, decode_ref)

    result = {"device": name, "device_type": dev.type, "torch": torch.__version__, "triton": triton_version,
              "numel": N, "clients": K, "copy_GBps": copy_gbps, "noise": kind, "mask": mask, "sigma": sigma,
              "timing": ("GPU time per call from a replayed CUDA graph (ms_eager: CUDA events around eager calls)"
                         if dev.type == "cuda" else f"best of {timer.repeat} calls (wall clock)"),
              "rows": rows_out}
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"codec_{dev.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
