"""QSGD's upload size and codec time on a real client update: one client of configs/default.yaml (FashionMNIST,
CNN4, IID over 100 clients) trains one local epoch from the initial model, then its update is encoded with
each coding (Elias, fixed width; buckets of 512 and one bucket per tensor) at levels 1, 2 and 4, and decoded.

    python benchmarks/bench_qsgd.py [--levels 1,2,4] [--repeat 5] [--client 0] [--out FILE]

Prints, per setting, the payload bytes, bits per model value (389,920 masked + 1,920 unmasked) without and with
the 56-byte message header, the stream's share of non-zero entries, and the median encode (quantisation and
coding, what a client pays) and decode (what the server pays per upload) times. Writes the table as JSON to
benchmarks/results/qsgd_cpu.json (or --out). One thread (the runner's default per rank).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmrn_mpi.algorithms import make_algorithm  # noqa: E402
from fedmrn_mpi.comm import HEADER_SIZE, Transport  # noqa: E402
from fedmrn_mpi.config import load_config  # noqa: E402
from fedmrn_mpi.run.setup import build_setup  # noqa: E402
from fedmrn_mpi.training import train_client  # noqa: E402
from fedmrn_mpi.training.schedule import sample_clients  # noqa: E402


def median_time(fn, repeat: int) -> tuple[float, object]:
    out, ts = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,2,4")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--client", type=int, default=0, help="which of round 1's sampled clients")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "qsgd_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    cfg = load_config(ROOT / "configs" / "default.yaml", ["algorithm.name=qsgd", "device=cpu", "threads=1"])
    su = build_setup(cfg, Transport())
    cid = int(sample_clients(cfg.seed, 1, cfg.num_clients, cfg.clients_per_round)[args.client])
    ctx = su.local.context(1, cid, int(su.sizes[cid]), su.device)
    captured = {}
    encode = su.algo.encode

    def capture(problem, c):
        captured["problem"] = problem
        return encode(problem, c)

    su.algo.encode = capture
    t0 = time.perf_counter()
    res = train_client(su.model, su.algo, su.state, *su.client_data(cid), ctx, su.local)
    train_s = time.perf_counter() - t0
    problem = captured["problem"]
    values = su.spec.num_masked + su.spec.num_unmasked
    print(f"client {cid}: {int(su.sizes[cid])} samples, 1 local epoch ({ctx.total_steps} steps, {train_s:.1f} s), "
          f"train loss {res.train_loss:.3f}; {su.spec.num_masked} masked + {su.spec.num_unmasked} unmasked values")
    rows = []
    settings = [(c, b) for c in ("elias", "fixed") for b in (512, 0)]
    for levels in [int(x) for x in args.levels.split(",")]:
        for coding, bucket in settings:
            c = load_config(ROOT / "configs" / "default.yaml",
                            ["algorithm.name=qsgd", f"algorithm.levels={levels}", f"algorithm.coding={coding}",
                             f"algorithm.bucket_size={bucket}"])
            algo = make_algorithm(c.algorithm.options, su.spec, c.seed)
            t_enc, payload = median_time(lambda a=algo: a.encode(problem, ctx), args.repeat)
            t_dec, upd = median_time(lambda a=algo, p=payload: a.decode(memoryview(p), ctx.noise_seed, su.state,
                                                                         su.device), args.repeat)
            nz = sum(int(torch.count_nonzero(upd.deltas[n])) for n in su.spec.masked)
            row = {"levels": levels, "coding": coding, "bucket_size": bucket, "payload_bytes": int(payload.nbytes),
                   "bound_bytes": int(algo.payload_nbytes()),
                   "bits_per_param": 8 * payload.nbytes / values,
                   "bits_per_param_with_header": 8 * (payload.nbytes + HEADER_SIZE) / values,
                   "masked_bits_per_entry": 8 * (payload.nbytes - 4 * su.spec.num_unmasked) / su.spec.num_masked,
                   "nonzero_fraction": nz / su.spec.num_masked,
                   "encode_ms": 1e3 * t_enc, "decode_ms": 1e3 * t_dec}
            rows.append(row)
            print(f"levels {levels} {coding:5s} bucket {bucket or 'tensor':>6}: {payload.nbytes:7d} B "
                  f"(bound {row['bound_bytes']:7d})  {row['bits_per_param']:.4f} bits/param, "
                  f"{row['bits_per_param_with_header']:.4f} with header; masked {row['masked_bits_per_entry']:.4f} "
                  f"bits/entry; non-zero {100 * row['nonzero_fraction']:.2f} %  "
                  f"encode {row['encode_ms']:.0f} ms  decode {row['decode_ms']:.0f} ms")
    meta = {"client": cid, "samples": int(su.sizes[cid]), "steps": ctx.total_steps, "train_seconds": train_s,
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": str(torch.__version__), "numpy": np.__version__, "threads": 1, "repeat": args.repeat}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
