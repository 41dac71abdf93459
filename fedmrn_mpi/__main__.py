"""Command line: `python -m fedmrn_mpi [run -c CONFIG.yaml [-o OUT.h5] [--resume] [key.sub=value ...]]`,
`python -m fedmrn_mpi report FILE.h5 [...] [-o DIR]`, `python -m fedmrn_mpi status FILE.h5`,
`python -m fedmrn_mpi data prepare|check -c CONFIG.yaml [...]`.

Under `mpirun -n P` every rank runs this same program; rank 0 is the server.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    from .config import config_keys
    p = argparse.ArgumentParser(prog="fedmrn-mpi", description="FedMRN federated learning over MPI.")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="run a federated training job (the default command)",
                       epilog="config keys: " + ", ".join(config_keys()))
    r.add_argument("-c", "--config", help="YAML config (default: the built-in main job)")
    r.add_argument("-o", "--output", help="results file (default: <results_dir>/<run_name>.h5)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    r.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config keys")
    sub.add_parser("report", help="tables and PNG plots from results files: report A.h5 [B.h5 ...] [-o DIR]")
    sub.add_parser("status", help="progress of a running or finished job: status RUN.h5")
    sub.add_parser("data", help="the config's dataset without training: data prepare -c CONFIG -o DATA.h5 "
                                "| data check -c CONFIG")
    return p


def _rank_from_env() -> int:
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # report and status read HDF5 only: dispatch before anything imports torch
    if argv and argv[0] == "report":
        from .report import main_report
        return main_report(argv[1:])
    if argv and argv[0] == "status":
        from .report import main_status
        return main_status(argv[1:])
    if argv and argv[0] == "data":
        from .run.data_commands import main_data
        return main_data(argv[1:])
    from .run.stop import SIGNALS
    SIGNALS.install()  # before the slow imports: a stop signal during start-up must not kill the rank
    from .config import ConfigError, load_config
    if not argv or argv[0] not in ("run", "-h", "--help"):
        argv = ["run"] + argv
    args, unknown = _parser().parse_known_args(argv)
    rank = _rank_from_env()
    if unknown:  # e.g. `-rounds=3` or `--round 3`: one config-error line, like any other bad override
        if rank == 0:
            print(f"fedmrn-mpi: config error: unknown option(s) {' '.join(unknown)!r}; overrides are written "
                  f"key.sub=value without dashes (options: -c, -o, --resume)", file=sys.stderr)
        return EXIT_CONFIG
    # Config errors are the same on every rank: report once, exit before MPI starts any collective.
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        if rank == 0:
            print(f"fedmrn-mpi: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from .run.machine import precision_problem
    if problem := precision_problem(cfg.precision, cfg.allow_emulated_bf16, cfg.device):
        if rank == 0:  # the same machine type on every rank: one line, before any MPI work
            print(f"fedmrn-mpi: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    out = args.output or os.path.join(cfg.results_dir, f"{cfg.run_name}.h5")

    from .algorithms.aggregate import BadUpdateError
    from .comm import Transport
    from .data.readers import DatasetError
    from .run import RoundTracker, run
    from .run.checkpoint import CheckpointError
    from .results.errors import WriteError
    from .run.watchdog import EXIT_ROUND_TIMEOUT, RoundTimeout
    from .rng.noise import KernelsUnavailable

    transport = Transport()
    tracker = RoundTracker()

    def fail(etype, value, tb) -> None:
        # a user's mistake (missing file, unusable checkpoint) needs no traceback; anything else does
        brief = isinstance(value, (CheckpointError, DatasetError, BadUpdateError, RoundTimeout, WriteError,
                                   KernelsUnavailable))
        text = "" if brief else "".join(traceback.format_exception(etype, value, tb))
        where = f"in round {tracker.round}" if tracker.round else "during set-up"
        sys.stderr.write(f"fedmrn-mpi: rank {transport.rank} failed {where}: {value}\n{text}")
        transport.abort(EXIT_ROUND_TIMEOUT if isinstance(value, RoundTimeout) else 1)

    sys.excepthook = fail
    try:
        status = run(cfg, out, transport, log=print if transport.is_server else (lambda *a, **k: None),
                     resume=args.resume, observers=[tracker])
        transport.barrier()
    except BaseException:  # noqa: BLE001 - any failure on any rank must end the whole job, never hang it
        fail(*sys.exc_info())
    sys.stdout.flush()
    sys.stderr.flush()
    transport.finalize()
    return status


if __name__ == "__main__":
    sys.exit(main())
