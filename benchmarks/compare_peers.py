"""Run the same FedAvg task on fedmrn_mpi and on two peer frameworks, one after the other on the same cores, and
compare seconds per round, total wall time (start-up included) and final accuracy (issue 10, part 4), in fp32
and in bf16 mixed precision (issue 19).

    .venv/bin/python benchmarks/compare_peers.py [--rounds 20 | --quick] [--sides ours,flower,pfl]
        [--precisions fp32,bf16] [--ranks 3] [--pfl-procs 2] [--out benchmarks/results/peers.json] [--reinstall]

The task is benchmarks/peer_task.yaml (FashionMNIST, CNN4, 100 IID clients, 10 per round, 1 local epoch,
batch 64, SGD lr 0.03, test-set evaluation after every round). The peers get it through a task file written
here: the same numbers, fedmrn_mpi's partition of the training set and the seed of fedmrn_mpi's initial model.

Sides:
  ours    .venv/bin/mpirun -n RANKS .venv/bin/python -m fedmrn_mpi run -c benchmarks/peer_task.yaml -o RUN.h5;
          s/round and accuracy from RUN.h5 (rounds/wall_seconds, rounds/test_accuracy)
  flower  flwr[simulation] (Ray backend): benchmarks/peers/flower_app.py, ClientApp + ServerApp + FedAvg under
          flwr.simulation.run_simulation, one CPU per ClientApp (Ray actors), central evaluation every round
  pfl     pfl[pytorch] (pfl-research): torchrun --standalone --nproc_per_node PFL_PROCS
          benchmarks/peers/pfl_fedavg.py, simulated FederatedAveraging with CentralEvaluationCallback
  pfl-compile  (only when named) pfl as above with its own option use_torch_compile=True

Precisions (every side runs once per precision; fp32 first, then bf16):
  ours    `precision=bf16` (autocast for local training and evaluation; docs/precision.md)
  pfl     its own option: PyTorchModel(amp_dtype=torch.bfloat16), autocast for local training and evaluation
  flower  no precision option (Flower leaves training to the user's ClientApp): torch.autocast around the
          ClientApp's forward pass and the ServerApp's evaluation, as a Flower user would write it
The ratio columns divide a side's time by ours in the same precision; the last line divides the best total of
the fastest peer (over precisions) by ours in bf16 (issue 19's goal: at least 2).

Each peer is installed into its own virtual environment, ~/.cache/fedmrn_mpi-bench/<name>-<version> (created
once and reused; --reinstall rebuilds it), with the torch version of this environment, never as a dependency
of fedmrn_mpi. Every process of every side runs one torch thread (OMP_NUM_THREADS=1, torch.set_num_threads(1)).
Total wall time is the launcher command's, from start to exit, measured here. The mean s/round leaves out
round 1 (warm-up). A peer that cannot be installed or fails is reported as failed with the end of its stderr;
the exit status is non-zero only when our side fails.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata as md
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS = REPO / "benchmarks" / "peers"
VENV_BIN = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin" / "mpirun").exists() else Path(sys.prefix) / "bin"
CACHE = Path(os.environ.get("FEDMRN_BENCH_CACHE", Path.home() / ".cache" / "fedmrn_mpi-bench"))
FLOWER_VERSION = "1.42.0"  # the latest 1.x pip resolves here (the issue measured 1.42)
PFL_VERSION = "0.6.0"      # the version the issue measured
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
TAIL_LINES = 25


def log(msg: str) -> None:
    print(f"[compare_peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tail(path: Path, n: int = TAIL_LINES) -> str:
    """The last `n` lines of a log, without terminal colour codes (Flower and Ray colour theirs)."""
    try:
        lines = re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace")).splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------------------------------
# the task


def write_task(cfg, work: Path) -> dict:
    """The task file the peers read (JSON + the partition as .npz), from our config; refuses a config the peer
    programs do not implement."""
    import numpy as np
    from fedmrn_mpi.data.partition import partition
    from fedmrn_mpi.data.readers import NORMALIZATION
    from fedmrn_mpi.data.registry import DEFAULT_DIRS
    from fedmrn_mpi.rng.seeds import derive_seed

    sys.path.insert(0, str(PEERS))
    import common

    want = {"algorithm.name": (cfg.algorithm.name, "fedavg"), "model.name": (cfg.model.name, "cnn4"),
            "data.name": (cfg.data.name, "fashion_mnist"), "server_lr": (cfg.server_lr, 1.0),
            "data.augment": (cfg.data.augment, "none"), "device": (cfg.device, "cpu")}
    bad = [f"{k}={v!r} (the peers implement {w!r})" for k, (v, w) in want.items() if v != w]
    if bad:
        raise SystemExit("compare_peers: the peer programs implement FedAvg + CNN4 on FashionMNIST only: "
                         + ", ".join(bad))
    data_dir = cfg.data.dir or DEFAULT_DIRS["fashion_mnist"]
    _, y = common.load_fashion_mnist(data_dir, "train")
    parts = partition(y.numpy(), cfg.data.partition, cfg.num_clients, derive_seed(cfg.seed, "partition") & 0x7FFFFFFF,
                      cfg.data.alpha, cfg.data.classes_per_client)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    np.savez(work / "partition.npz", flat=np.concatenate(parts).astype(np.int64), offsets=offsets)
    norm = NORMALIZATION["fashion_mnist"]
    task = {"data_dir": data_dir, "partition_file": "partition.npz", "seed": cfg.seed,
            "init_seed": derive_seed(cfg.seed, "init"), "num_clients": cfg.num_clients,
            "clients_per_round": cfg.clients_per_round, "local_epochs": cfg.local_epochs,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "eval_batch_size": cfg.eval_batch_size or 100,
            "train_norm": [norm["train"][0][0], norm["train"][1][0]],
            "test_norm": [norm["test"][0][0], norm["test"][1][0]], "partition": cfg.data.partition}
    (work / "task.json").write_text(json.dumps(task, indent=1))
    return task


def our_init_checksum(task: dict) -> float:
    from fedmrn_mpi.models import build_model, global_state
    model = build_model("cnn4", 1, 28, 10, task["init_seed"])
    return float(sum(v.double().abs().sum() for v in global_state(model).values()))


# --------------------------------------------------------------------------------------------------
# environments


class PeerMissing(RuntimeError):
    """A peer that is not installed and cannot be installed here (or whose environment is broken); the message
    is one line naming the peer and how to install it."""


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    return (errs or lines or ["no output"])[-1]


def torch_pin() -> str:
    return md.version("torch").split("+")[0]


def ensure_env(name: str, version: str, requirements: list[str], imports: list[str], reinstall: bool,
               work: Path) -> tuple[Path, dict]:
    """The peer's virtual environment (created on first use) and its package versions; raises PeerMissing (one
    line: the peer, pip's last error, how to install it) when it cannot be installed or its imports fail."""
    env = CACHE / f"{name}-{version}"
    marker = env / "fedmrn_bench_installed.json"
    if reinstall and env.exists():
        shutil.rmtree(env)
    if marker.exists():
        return env, json.loads(marker.read_text())
    if env.exists():  # a half-made environment from an interrupted install
        shutil.rmtree(env)
    CACHE.mkdir(parents=True, exist_ok=True)
    install_log = work / f"{name}-install.log"
    how = (f"install it with `{sys.executable} {Path(__file__).resolve()} --sides {name}` where pip can reach PyPI "
           f"(it installs {' '.join(requirements)} torch=={torch_pin()} into {env}), or leave it out of --sides")
    log(f"installing {name} {version} into {env} (once; log {install_log})")
    with open(install_log, "w") as out:
        steps = [[sys.executable, "-m", "venv", str(env)],
                 [str(env / "bin" / "python"), "-m", "pip", "install", *requirements, f"torch=={torch_pin()}"]]
        for cmd in steps:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                shutil.rmtree(env, ignore_errors=True)
                raise PeerMissing(f"{name} {version} is not installed and pip could not install it "
                                  f"({_last_error(tail(install_log))}; log {install_log}); {how}")
    probe = ("import importlib, importlib.metadata as m, json, sys\n"
             f"for mod in {imports!r}: importlib.import_module(mod)\n"
             "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))")
    res = subprocess.run([str(env / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    if res.returncode != 0:
        shutil.rmtree(env, ignore_errors=True)
        raise PeerMissing(f"{name} {version} was installed into {env} but does not import "
                          f"({_last_error(res.stderr)}); {how}")
    versions = json.loads(res.stdout.strip().splitlines()[-1])
    marker.write_text(json.dumps(versions, indent=1, sort_keys=True))
    return env, versions


# --------------------------------------------------------------------------------------------------
# sides


def run_cmd(cmd: list[str], stem: Path, timeout: float, env_extra: dict | None = None) -> tuple[int, float]:
    """Run `cmd` from the repository root with stdout/stderr to STEM.out/.err; (exit status, wall seconds)."""
    env = {**os.environ, **THREAD_ENV, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    log("running: " + " ".join(cmd))
    with open(f"{stem}.out", "w") as out, open(f"{stem}.err", "w") as err:
        t0 = time.perf_counter()
        # its own process group, so that a timeout ends the launcher's children too (ranks, actors, workers)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            err.write(f"\ncompare_peers: killed after {timeout:.0f} s\n")
            rc = 124
        return rc, time.perf_counter() - t0


def side_ours(args, cfg_path: Path, work: Path, precision: str) -> dict:
    import h5py
    import numpy as np

    import fedmrn_mpi
    stem = work / f"ours-{precision}"
    h5 = stem.with_suffix(".h5")
    cmd = [str(VENV_BIN / "mpirun"), "-n", str(args.ranks), str(VENV_BIN / "python"), "-m", "fedmrn_mpi", "run",
           "-c", str(cfg_path), "-o", str(h5), f"rounds={args.rounds}", f"precision={precision}"]
    rc, wall = run_cmd(cmd, stem, args.timeout)
    if rc != 0:
        raise RuntimeError(f"exit status {rc}\n{tail(stem.with_suffix('.err'))}")
    with h5py.File(h5, "r") as f:
        r = f["rounds"]
        rows = [{"round": int(a), "wall_seconds": float(w), "test_accuracy": float(acc), "test_loss": float(lo)}
                for a, w, acc, lo in zip(r["round"][()], r["wall_seconds"][()], r["test_accuracy"][()],
                                         r["test_loss"][()])]
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()
                 if k in ("torch_version", "threads_per_rank", "world_size", "total_seconds", "mpi_library",
                          "precision")}
    mpich = subprocess.run([str(VENV_BIN / "mpichversion")], capture_output=True, text=True).stdout
    versions = {"fedmrn_mpi": fedmrn_mpi.__version__, "torch": md.version("torch"), "numpy": md.version("numpy"),
                "mpi4py": md.version("mpi4py"), "h5py": md.version("h5py")}
    for line in mpich.splitlines():
        if line.lower().startswith("mpich version"):
            versions["mpich"] = line.split(":", 1)[1].strip()
    return {"command": cmd, "wall": wall, "rows": rows, "versions": versions, "results_file": str(h5),
            "threads": attrs.get("threads_per_rank"), "file_attrs": attrs,
            "processes": f"{args.ranks} MPI ranks (rank 0 server + {args.ranks - 1} client ranks)"}


def side_flower(args, work: Path, precision: str) -> dict:
    env, versions = ensure_env("flower", args.flower_version, [f"flwr[simulation]=={args.flower_version}"],
                               ["flwr.simulation", "ray", "torch"], args.reinstall, work)
    stem = work / f"flower-{precision}"
    out = stem.with_name(stem.name + "_result.json")
    cmd = [str(env / "bin" / "python"), str(PEERS / "flower_app.py"), "--task", str(work / "task.json"),
           "--rounds", str(args.rounds), "--out", str(out), "--precision", precision]
    rc, wall = run_cmd(cmd, stem, args.timeout, {"FLWR_TELEMETRY_ENABLED": "0"})
    res = peer_result(rc, out, args.rounds, stem.with_suffix(".err"))
    return {"command": cmd, "wall": wall, "env": str(env), **res, "versions": pick(versions, res["versions"]),
            "env_packages": versions}


def side_pfl(args, work: Path, precision: str, compile_model: bool = False) -> dict:
    env, versions = ensure_env("pfl", args.pfl_version, [f"pfl[pytorch]=={args.pfl_version}"],
                               ["pfl.model.pytorch", "torch"], args.reinstall, work)
    stem = work / f"pfl{'-compile' if compile_model else ''}-{precision}"
    out = stem.with_name(stem.name + "_result.json")
    cmd = [str(env / "bin" / "torchrun"), "--standalone", "--nproc_per_node", str(args.pfl_procs),
           str(PEERS / "pfl_fedavg.py"), "--task", str(work / "task.json"), "--rounds", str(args.rounds),
           "--out", str(out), "--precision", precision] + (["--compile"] if compile_model else [])
    rc, wall = run_cmd(cmd, stem, args.timeout)
    res = peer_result(rc, out, args.rounds, stem.with_suffix(".err"))
    return {"command": cmd, "wall": wall, "env": str(env), **res, "versions": pick(versions, res["versions"]),
            "env_packages": versions}


def peer_result(rc: int, out: Path, rounds: int, err: Path) -> dict:
    """A peer's result file. A peer that wrote every round and then died while exiting (pfl 0.6.0 under torchrun
    aborts in teardown: "terminate called without an active exception") still counts, with a note; its wall
    time includes the crash."""
    if not out.exists():
        raise RuntimeError(f"exit status {rc}\n{tail(err)}")
    res = json.loads(out.read_text())
    if rc != 0:
        if len(res.get("rows", [])) < rounds or rc == 124:
            raise RuntimeError(f"exit status {rc}\n{tail(err)}")
        res["exit_note"] = f"exit status {rc} after writing all {rounds} rounds: {tail(err, 3).strip()}"
        log(res["exit_note"].splitlines()[0])
    return res


def pick(installed: dict, reported: dict) -> dict:
    """The versions that matter: what the program reported, plus the env's copies of the usual suspects."""
    keys = ("flwr", "ray", "pfl", "torch", "numpy", "grpcio", "protobuf", "scipy")
    return {**{k: installed[k] for k in keys if k in installed}, **reported}


# --------------------------------------------------------------------------------------------------
# summary


def summarize(rec: dict) -> dict:
    rows = rec["rows"]
    later = [r["wall_seconds"] for r in rows if r["round"] >= 2] or [r["wall_seconds"] for r in rows]
    accs = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None
            and not math.isnan(r["test_accuracy"])]
    return {"s_per_round_mean": sum(later) / len(later) if later else None,
            "round_seconds_sum": sum(r["wall_seconds"] for r in rows),
            "total_wall_s": rec["wall"], "final_accuracy": accs[-1] if accs else None,
            "rounds_completed": len(rows)}


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def side_key(name: str, precision: str) -> str:
    return f"{name} {precision}"


def goal(sides: dict) -> dict | None:
    """Issue 19's goal: the fastest peer's best total (over its precisions) against ours in bf16."""
    ours = sides.get(side_key("ours", "bf16"))
    peers = [(s["total_wall_s"], key) for key, s in sides.items()
             if not key.startswith("ours ") and s["status"] == "ok"]
    if not ours or ours["status"] != "ok" or not peers:
        return None
    best_total, best_key = min(peers)
    return {"fastest_peer_best_setting": best_key, "its_total_wall_s": best_total,
            "ours_bf16_total_wall_s": ours["total_wall_s"], "ratio": best_total / ours["total_wall_s"], "target": 2.0}


def table(sides: dict) -> str:
    head = ["side", "version", "processes", "s/round (2..N)", "total s", "final acc", "x ours s/round", "x ours total"]
    lines = []
    for name, s in sides.items():
        if s["status"] != "ok":
            lines.append([name, s.get("version", "-"), s["status"].upper() + " (below)", "-", "-", "-", "-", "-"])
            continue
        lines.append([name, s.get("version", "-"), s["processes_short"], fmt(s["s_per_round_mean"], ".2f"),
                      fmt(s["total_wall_s"], ".1f"), fmt(s["final_accuracy"], ".4f"),
                      fmt(s.get("ratio_s_per_round"), ".2f"), fmt(s.get("ratio_total"), ".2f")])
    widths = [max(len(str(r[i])) for r in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default: the config's, 20)")
    ap.add_argument("--quick", action="store_true", help="2 rounds: a smoke test")
    ap.add_argument("--sides", default="ours,flower,pfl",
                    help="comma-separated subset of ours,flower,pfl,pfl-compile (pfl-compile: pfl with its own "
                         "use_torch_compile=True, not run by default)")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="comma-separated subset of fp32,bf16 (default both; each side runs once per precision)")
    ap.add_argument("--ranks", type=int, default=3, help="MPI ranks of our side (default 3: server + 2)")
    ap.add_argument("--pfl-procs", type=int, default=2, help="torchrun --nproc_per_node of pfl (default 2)")
    ap.add_argument("--config", default=str(REPO / "benchmarks" / "peer_task.yaml"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "peers.json"))
    ap.add_argument("--work", default=None, help="folder for logs, task file, results of each side "
                                                 "(default: a new folder under the cache's runs/)")
    ap.add_argument("--reinstall", action="store_true", help="rebuild the peers' virtual environments")
    ap.add_argument("--flower-version", default=FLOWER_VERSION)
    ap.add_argument("--pfl-version", default=PFL_VERSION)
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds per side (default 7200)")
    args = ap.parse_args(argv)
    sides_wanted = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(sides_wanted) - {"ours", "flower", "pfl", "pfl-compile"}
    if unknown or not sides_wanted:
        ap.error(f"--sides: unknown {sorted(unknown)}; choose from ours,flower,pfl,pfl-compile")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or set(precisions) - {"fp32", "bf16"}:
        ap.error(f"--precisions {args.precisions!r}: choose from fp32,bf16")
    if args.ranks < 1 or args.pfl_procs < 1:
        ap.error("--ranks and --pfl-procs must be at least 1")

    sys.path.insert(0, str(REPO))
    from fedmrn_mpi.config import load_config
    cfg_path = Path(args.config).resolve()
    rounds = 2 if args.quick else args.rounds
    cfg = load_config(str(cfg_path), [f"rounds={rounds}"] if rounds else [])
    args.rounds = cfg.rounds
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = Path(args.work) if args.work else CACHE / "runs" / stamp
    work.mkdir(parents=True, exist_ok=True)
    task = write_task(cfg, work)
    init_ours = our_init_checksum(task)
    log(f"{args.rounds} rounds; work folder {work}")

    sides: dict[str, dict] = {}
    runs = {"ours": lambda p: side_ours(args, cfg_path, work, p), "flower": lambda p: side_flower(args, work, p),
            "pfl": lambda p: side_pfl(args, work, p), "pfl-compile": lambda p: side_pfl(args, work, p, True)}
    for precision, name in [(p, n) for p in precisions for n in sides_wanted]:
        key = side_key(name, precision)
        log(f"--- side {key}")
        try:
            rec = runs[name](precision)
        except PeerMissing as exc:  # reported in one line; the other sides still run
            sides[key] = {"status": "missing", "reason": str(exc)}
            log(f"{key} missing (how to install it: at the end); going on with the other sides")
            continue
        except Exception as exc:  # noqa: BLE001 - a failed side is reported, the others still run
            sides[key] = {"status": "failed", "reason": str(exc)}
            log(f"{key} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        rec = {"status": "ok", "precision": precision, **rec, **summarize(rec)}
        rec["version"] = rec["versions"].get({"ours": "fedmrn_mpi", "flower": "flwr"}.get(name, "pfl"), "-")
        rec["processes_short"] = {"ours": f"{args.ranks} ranks", "flower": f"1+{rec.get('ray_actors', '?')} actors"
                                  }.get(name, f"{rec.get('world_size', '?')} workers")
        if name == "ours":
            rec["init_checksum"], rec["same_initial_model"] = init_ours, "reference"
        elif "init_checksum" in rec:
            rec["same_initial_model"] = abs(rec["init_checksum"] - init_ours) < 1e-9 * max(1.0, init_ours)
        rec["total_wall_s"] = rec.pop("wall")
        sides[key] = rec
        log(f"{key}: {rec['rounds_completed']} rounds, {fmt(rec['s_per_round_mean'], '.2f')} s/round, "
            f"total {rec['total_wall_s']:.1f} s, final acc {fmt(rec['final_accuracy'], '.4f')}")

    for precision in precisions:  # ratios against ours in the same precision
        ours = sides.get(side_key("ours", precision))
        if not ours or ours["status"] != "ok":
            continue
        for key, s in sides.items():
            if s["status"] == "ok" and key.endswith(" " + precision):
                s["ratio_total"] = s["total_wall_s"] / ours["total_wall_s"]
                if s["s_per_round_mean"] and ours["s_per_round_mean"]:
                    s["ratio_s_per_round"] = s["s_per_round_mean"] / ours["s_per_round_mean"]
    target = goal(sides)

    report = {
        "issue": "10 part 4 and 19: peers benchmark in fp32 and bf16", "precisions": precisions, "when": _dt.datetime.now().isoformat(timespec="seconds"),
        "rounds": args.rounds, "config": str(cfg_path.relative_to(REPO) if cfg_path.is_relative_to(REPO)
                                                 else cfg_path),
        "task": {k: v for k, v in task.items() if k != "partition_file"}, "work_dir": str(work),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor()},
        "threads": "1 torch thread per process on every side (OMP_NUM_THREADS=1 and torch.set_num_threads(1))",
        "s_per_round": "mean of rounds/wall_seconds over rounds 2..N (all rounds when N = 1)",
        "total_wall_s": "wall time of the side's launcher command, start-up and shutdown included",
        "ratios": "a side's time / ours in the same precision",
        "goal": target,
        "sides": sides,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(table(sides))
    if target:
        print(f"\nfastest peer, best setting: {target['fastest_peer_best_setting']} {target['its_total_wall_s']:.1f} s;"
              f" ours bf16 {target['ours_bf16_total_wall_s']:.1f} s: {target['ratio']:.2f}x (goal >= 2)")
    for name, s in sides.items():
        if s["status"] == "missing":
            print(f"\n{name} missing: {s['reason']}")
        elif s["status"] != "ok":
            print(f"\n{name} failed:\n{s['reason']}")
        elif s.get("exit_note"):
            print(f"\n{name}: {s['exit_note']}")
    print(f"\nraw numbers: {out}; logs: {work}")
    failed_ours = [k for k, s in sides.items() if k.startswith("ours ") and s["status"] != "ok"]
    return 1 if failed_ours else 0


if __name__ == "__main__":
    sys.exit(main())
