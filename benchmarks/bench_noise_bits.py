"""Throughput of the counter-based noise generator and of mask packing.

    python benchmarks/bench_noise_bits.py [--numel 1181536] [--repeat 20] [--device cpu|cuda]
                                          [--threads T] [--cpu-backend numpy|torch]

Default numel: the masked weights of CNN8 on CIFAR-10. Noise figures count float32 output bytes
(4 per element); pack/unpack figures count mask elements and packed bytes. Times are per call; the
median and the best of --repeat calls are shown (shared machines are noisy: trust the best more).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fedmrn_mpi.rng.bits as bits_mod  # noqa: E402
import fedmrn_mpi.rng.noise as noise_mod  # noqa: E402
from fedmrn_mpi.rng.bits import pack_bits, unpack_bits  # noqa: E402
from fedmrn_mpi.rng.noise import NOISE_KINDS, make_stream, noise, random_u32, uniform01  # noqa: E402


def _time(fn: Callable[[], object], repeat: int, device: torch.device) -> tuple[float, float]:
    """(median, best) seconds per call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1181536)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--cpu-backend", choices=("numpy", "torch"), default="numpy",
                    help="CPU integer path: NumPy uint32 (default) or torch int64 (the code CUDA runs)")
    args = ap.parse_args(argv)
    noise_mod._CPU_NUMPY = bits_mod._CPU_NUMPY = args.cpu_backend == "numpy"
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    n, seed, stream = args.numel, 0x1234_5678_9ABC_DEF0, make_stream(7, 0, 3)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    backend = f", {args.cpu_backend} integer path" if dev.type == "cpu" else ""
    print(f"numel={n}  device={dev} ({name}{backend})  torch={torch.__version__}  repeat={args.repeat}")
    print(f"{'op':<20}{'ms/call (median)':>18}{'ms/call (best)':>16}{'GB/s (best)':>13}{'Gelem/s':>10}")

    def row(label: str, fn: Callable[[], object], nbytes: int) -> None:
        med, best = _time(fn, args.repeat, dev)
        print(f"{label:<20}{med * 1e3:>18.3f}{best * 1e3:>16.3f}{nbytes / best / 1e9:>13.2f}{n / best / 1e9:>10.3f}")

    row("random_u32 (int64)", lambda: random_u32(seed, stream, n, dev), 8 * n)
    row("uniform01", lambda: uniform01(seed, stream, n, dev), 4 * n)
    for kind in NOISE_KINDS:
        row(f"noise {kind}", lambda k=kind: noise(seed, stream, n, k, 0.01, dev), 4 * n)
    mask = uniform01(seed, stream + 1, n, dev) < 0.5
    packed = pack_bits(mask)
    row("pack_bits", lambda: pack_bits(mask), packed.numel())
    row("unpack_bits", lambda: unpack_bits(packed, n), packed.numel())
    if dev.type == "cpu":
        import numpy as np

        m_np, p_np = mask.numpy(), packed.numpy()
        row("numpy.packbits", lambda: np.packbits(m_np, bitorder="little"), packed.numel())
        row("numpy.unpackbits", lambda: np.unpackbits(p_np, count=n, bitorder="little"), packed.numel())
    else:
        buf = torch.empty(n, dtype=torch.float32, device=dev)
        row("torch.rand_ (ref)", lambda: buf.uniform_(), 4 * n)


if __name__ == "__main__":
    main()
