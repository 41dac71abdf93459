"""Where a run starts: fresh, resumed from its newest checkpoint, or already complete
(docs/design.md#checkpoints-and-stop-signals)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import yaml

from .checkpoint import CheckpointError, checkpoint_dir, latest_checkpoint, list_checkpoints
from ..config import Config, ConfigError, config_from_dict, config_to_dict, default_config
from ..results.schema import (CLIENT_FIELDS, CONFIG_YAML, FINAL_MODEL_SHA256, FORMAT_VERSION_ATTR, NOT_RECORDED,
                              PHASE_SECONDS, RANK_FIELDS, ROUND, ROUND_FIELDS, ClientColumns, RankColumns, RoundRow,
                              version_problem)


# keys that may change on resume: schedule, output, placement and fault policy (changing `device` or `threads`
# voids the bit-exact guarantee); `data.prepared` holds the same data, checked against the config when opened
FREE_ON_RESUME = frozenset({"run_name", "results_dir", "device", "threads", "log_every", "rounds", "eval_every",
                            "eval_batch_size", "checkpoint_every", "sync_every", "on_bad_update", "round_timeout",
                            "data.prepared"})


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def resume_identity(cfg: Config) -> str:
    """Hash of the keys that decide the model trajectory and differ from their defaults: a later version that
    adds a key (whose default keeps the old behaviour) still resumes an earlier version's checkpoints."""
    base = _leaves(config_to_dict(default_config()))
    kept = {k: v for k, v in _leaves(config_to_dict(cfg)).items()
            if k not in FREE_ON_RESUME and (k not in base or base[k] != v)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


@dataclass
class Start:
    """Where rank 0 starts: a fresh run, a resumed one, or one that is already complete."""

    round: int = 1                      # first round to run
    state: dict | None = None
    pending: RoundRow | None = None     # last completed round's row, not yet evaluated
    rows: int = 0                       # rounds already in the results file
    client_states: dict | None = None   # per-client algorithm state (see run/client_states.py)
    complete: bool = False
    note: str = ""


def plan_start(cfg: Config, out_path: str, resume: bool) -> Start:
    """Rank 0: decide from the results file and the checkpoints whether and where to resume. The results file is
    read as a SWMR reader, so the file of a killed run (which HDF5 opens for nothing else) resumes too."""
    from ..results.writer import completed_rows, open_for_reading  # rank 0 only: client ranks never load h5py
    ckdir = checkpoint_dir(out_path)
    finished, complete_rows, old_yaml, problem = False, 0, "", None
    if os.path.exists(out_path):
        try:
            with open_for_reading(out_path) as f:
                problem = version_problem(f.attrs.get(FORMAT_VERSION_ATTR)) if resume else None
                finished = FINAL_MODEL_SHA256 in f.attrs
                complete_rows = completed_rows(f) if resume else 0
                old_yaml = str(f.attrs.get(CONFIG_YAML, "")) if finished and resume else ""
        except Exception as exc:  # noqa: BLE001 - a damaged file: h5py raises OSError, RuntimeError, KeyError...
            if resume:
                why = " ".join(str(exc).split()) or type(exc).__name__
                raise CheckpointError(f"cannot resume: results file {out_path} is unreadable ({why})") from exc
        if problem:
            raise CheckpointError(f"cannot resume: {out_path}: {problem}")
    if not resume:
        for old in list_checkpoints(ckdir):  # a fresh run must never be resumed from an older run's state
            os.remove(old)
        return Start()
    if finished:
        try:
            old = config_from_dict(yaml.safe_load(old_yaml), source=out_path)
        except (ConfigError, yaml.YAMLError) as exc:
            raise CheckpointError(f"cannot resume: {out_path} holds no readable config ({exc})") from exc
        if resume_identity(old) != resume_identity(cfg) or old.rounds != cfg.rounds:
            raise CheckpointError(f"cannot resume: {out_path} is a finished run of a different configuration "
                                  f"(or another number of rounds); use another output file")
        return Start(complete=True, note=f"{out_path} is already complete; nothing to resume")
    ck = latest_checkpoint(ckdir)
    if ck is None:
        if os.path.exists(out_path):
            raise CheckpointError(f"cannot resume: no checkpoint in {ckdir} for the unfinished results file "
                                  f"{out_path}; run without --resume to start over (it overwrites the file)")
        return Start(note=f"--resume: no checkpoint in {ckdir} and no results file yet; starting a fresh run")
    if ck["identity"] != resume_identity(cfg):
        raise CheckpointError(f"cannot resume from {ck['path']}: it was written with a different configuration "
                              f"(only {', '.join(sorted(FREE_ON_RESUME))} "
                              f"may change on resume)")
    if not os.path.exists(out_path):
        raise CheckpointError(f"cannot resume from {ck['path']}: the results file {out_path} is missing")
    if ck["round"] > cfg.rounds:
        raise CheckpointError(f"cannot resume from {ck['path']}: checkpoint is at round {ck['round']} but "
                              f"rounds={cfg.rounds}")
    pending = _pending_row(ck)
    rows = ck["round"] - (1 if pending else 0)
    if complete_rows < rows:  # the rows before the checkpoint's are written (and flushed) before it is
        raise CheckpointError(f"cannot resume from {ck['path']}: the results file {out_path} holds "
                              f"{complete_rows} complete rounds, the checkpoint continues after {rows}")
    return Start(round=ck["round"] + 1, state=ck["state"], pending=pending,
                 client_states=ck.get("client_states") or None, rows=rows,
                 note=f"resuming after round {ck['round']} from {ck['path']}")


def _pending_row(ck: dict) -> RoundRow | None:
    """The checkpoint's unwritten results row, whichever checkpoint format holds it (run/checkpoint.py)."""
    d = ck.get("pending")
    if not d:
        return None
    try:
        return RoundRow.from_dict(d) if ck["format"] >= 2 else _format_1_row(d)
    except (TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot resume from {ck['path']}: its pending results row is unusable "
                              f"({type(exc).__name__}: {exc})") from exc


def _format_1_row(d: dict) -> RoundRow:
    """A checkpoint format 1 row: one flat dict with the rounds/ fields and phase_seconds by name, clients/<field>
    as clients_<field> and ranks/<field> as rank_<field>. Fields it lacks (written by a version before the field
    existed) become NaN or NOT_RECORDED, as the writer leaves them."""
    def scalar(name: str) -> float:
        return d.get(name, math.nan if np.dtype(ROUND_FIELDS[name]).kind == "f" else NOT_RECORDED)

    sampled = np.asarray(d["clients_sampled"])
    missing = np.full(sampled.shape, NOT_RECORDED)
    return RoundRow(**{name: scalar(name) for name in ROUND_FIELDS if name != ROUND}, round=int(d[ROUND]),
                    phase_seconds=np.asarray(d[PHASE_SECONDS]),
                    clients=ClientColumns(**{name: np.asarray(d.get(f"clients_{name}", missing), dtype=dtype)
                                             for name, dtype in CLIENT_FIELDS.items()}),
                    ranks=RankColumns(np.asarray(d[f"rank_{PHASE_SECONDS}"]),
                                      **{name: d.get(f"rank_{name}") for name in RANK_FIELDS}))
