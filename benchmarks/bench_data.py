"""Data at scale: set-up time to the first training step, with and without a prepared file, and one round's
time for each of the paper's four dataset/model pairs.

    python benchmarks/bench_data.py startup [--ranks 33] [--datasets fashion_mnist,cifar10]
    python benchmarks/bench_data.py rounds  [--ranks 5]  [--datasets fashion_mnist,svhn,cifar10,cifar100]
    (add --out FILE.json for the raw numbers; default benchmarks/results/data_<mode>.json)

FashionMNIST is the real one (the Debian package's files). CIFAR-10/100 and SVHN are not on this machine, so
the script writes files of their real size and format (random pixels, seeded): the figures measure reading,
splitting and training time, not accuracy.

startup: for each dataset, `fedmrn-mpi data prepare` once, then `mpirun -n RANKS` one short round (every
client rank trains one client) from the raw files and from the prepared file. Reported per run: the largest
`rank_setup_seconds` (a rank's process start to the end of its set-up: imports, data, model), the mean over
ranks, and mpirun's wall time for the whole one-round job.

rounds: the paper's IID FedAvg config of each pair (`configs/paper/<pair>_iid_fedavg.yaml`: 10 clients per
round, 10 local epochs, batch 64) for 2 rounds at `-n RANKS`; reported: each round's wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
from pathlib import Path

import h5py
import numpy as np

from launch import fedmrn

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {"fashion_mnist": "fmnist_cnn4", "svhn": "svhn_cnn4", "cifar10": "cifar10_cnn8", "cifar100": "cifar100_cnn8"}


def _cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: bytes) -> None:
    batch = {b"batch_label": b"benchmark", b"data": images.reshape(len(images), -1),
             label_key: [int(v) for v in labels], b"filenames": [b"%d.png" % i for i in range(len(images))]}
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)


def write_sized_files(name: str, root: Path) -> Path:
    """Files of dataset `name` at their real size and in their real format, random content."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(1, 6):
            _cifar_batch(d / f"data_batch_{i}", rng.integers(0, 256, (10000, 3, 32, 32), np.uint8),
                         rng.integers(0, 10, 10000), b"labels")
        _cifar_batch(d / "test_batch", rng.integers(0, 256, (10000, 3, 32, 32), np.uint8),
                     rng.integers(0, 10, 10000), b"labels")
    elif name == "cifar100":
        d = root / "cifar-100-python"
        d.mkdir(parents=True, exist_ok=True)
        _cifar_batch(d / "train", rng.integers(0, 256, (50000, 3, 32, 32), np.uint8),
                     rng.integers(0, 100, 50000), b"fine_labels")
        _cifar_batch(d / "test", rng.integers(0, 256, (10000, 3, 32, 32), np.uint8),
                     rng.integers(0, 100, 10000), b"fine_labels")
    elif name == "svhn":
        from scipy.io import savemat
        root.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", 73257), ("test", 26032)):
            savemat(root / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), np.uint8),
                                                  "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})
    return root


def _config(name: str) -> str:
    return str(ROOT / "configs" / "paper" / f"{PAIRS[name]}_iid_fedavg.yaml")


def startup(datasets: list[str], ranks: int, work: Path) -> list[dict]:
    rows = []
    for name in datasets:
        over = ["rounds=1", "local_epochs=1", f"clients_per_round={ranks - 1}", "eval_every=1", "device=cpu"]
        if name != "fashion_mnist":
            over.append(f"data.dir={write_sized_files(name, work / name)}")
        prepared = work / f"{name}.h5"
        t_prep = fedmrn(["data", "prepare", "-c", _config(name), "-o", str(prepared), *over], None, work)
        for how, extra in (("raw files", []), ("prepared", [f"data.prepared={prepared}"])):
            out = work / f"{name}-{how.split()[0]}.h5"
            wall = fedmrn(["run", "-c", _config(name), "-o", str(out), *over, *extra], ranks, work)
            with h5py.File(out, "r") as f:
                setup = f.attrs["rank_setup_seconds"][:]
            rows.append({"dataset": name, "data": how, "ranks": ranks, "setup_max_s": float(setup.max()),
                         "setup_mean_s": float(setup.mean()), "job_wall_s": wall,
                         "prepare_s": t_prep if how == "prepared" else None,
                         "prepared_mib": os.path.getsize(prepared) / 2**20})
            print(_fmt(rows[-1], STARTUP_COLS), flush=True)
    return rows


def rounds(datasets: list[str], ranks: int, work: Path) -> list[dict]:
    rows = []
    for name in datasets:
        over = ["rounds=2", "device=cpu", "checkpoint_every=0"]
        if name != "fashion_mnist":
            over.append(f"data.dir={write_sized_files(name, work / name)}")
        out = work / f"{name}-rounds.h5"
        wall = fedmrn(["run", "-c", _config(name), "-o", str(out), *over], ranks, work)
        with h5py.File(out, "r") as f:
            sec = f["rounds/wall_seconds"][:]
            phases = dict(zip(f["rounds/phase_seconds"].attrs["phases"], f["rounds/phase_seconds"][-1]))
        rows.append({"pair": PAIRS[name], "ranks": ranks, "round1_s": float(sec[0]), "round2_s": float(sec[1]),
                     "local_train_s": float(phases["local_train"]), "evaluate_s": float(phases["evaluate"]),
                     "job_wall_s": wall})
        print(_fmt(rows[-1], ROUND_COLS), flush=True)
    return rows


STARTUP_COLS = ("dataset", "data", "ranks", "setup_max_s", "setup_mean_s", "job_wall_s", "prepare_s", "prepared_mib")
ROUND_COLS = ("pair", "ranks", "round1_s", "round2_s", "local_train_s", "evaluate_s", "job_wall_s")


def _fmt(row: dict, cols) -> str:
    return "  ".join(f"{row[c]:>12.2f}" if isinstance(row[c], float) else f"{str(row[c]):>12}" for c in cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["startup", "rounds"])
    ap.add_argument("--ranks", type=int)
    ap.add_argument("--datasets")
    ap.add_argument("--out")
    args = ap.parse_args()
    ranks = args.ranks or (33 if args.mode == "startup" else 5)
    datasets = (args.datasets or ("fashion_mnist,cifar10" if args.mode == "startup" else ",".join(PAIRS))).split(",")
    cols = STARTUP_COLS if args.mode == "startup" else ROUND_COLS
    print("  ".join(f"{c:>12}" for c in cols), flush=True)
    with tempfile.TemporaryDirectory(prefix="fedmrn-bench-data-") as tmp:
        rows = (startup if args.mode == "startup" else rounds)(datasets, ranks, Path(tmp))
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"data_{args.mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"mode": args.mode, "cores": os.cpu_count(), "rows": rows}, indent=1))
    print(f"raw numbers: {out}")


if __name__ == "__main__":
    main()
