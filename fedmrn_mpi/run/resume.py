"""Where a run starts: fresh, resumed from its newest checkpoint, or already complete
(docs/design.md#checkpoints-and-stop-signals)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import yaml

from .checkpoint import CheckpointError, checkpoint_dir, latest_checkpoint, list_checkpoints
from ..config import Config, config_from_dict, config_hash


def resume_identity(cfg: Config) -> str:
    """Hash of the keys that decide the model trajectory; schedule/output-only keys may change on resume, and so
    may `data.prepared` (a prepared file holds the same data, checked against the config when it is opened)."""
    same = dataclasses.replace(cfg, run_name="", results_dir="", device="auto", threads=0, log_every=1,
                               rounds=1, eval_every=0, eval_batch_size=0, checkpoint_every=0, sync_every=1,
                               data=dataclasses.replace(cfg.data, prepared=None))
    return config_hash(same)


@dataclass
class Start:
    """Where rank 0 starts: a fresh run, a resumed one, or one that is already complete."""

    round: int = 1                      # first round to run
    state: dict | None = None
    pending: dict | None = None         # last completed round's row, not yet evaluated
    rows: int = 0                       # rounds already in the results file
    client_states: dict | None = None   # per-client algorithm state (see run/client_states.py)
    complete: bool = False
    note: str = ""


def plan_start(cfg: Config, out_path: str, resume: bool) -> Start:
    """Rank 0: decide from the results file and the checkpoints whether and where to resume."""
    import h5py  # rank 0 only: client ranks never load h5py
    ckdir = checkpoint_dir(out_path)
    finished = False
    if os.path.exists(out_path):
        try:
            with h5py.File(out_path, "r") as f:
                finished = "final_model_sha256" in f.attrs
        except OSError as exc:
            if resume:
                raise CheckpointError(f"cannot resume: results file {out_path} is unreadable ({exc})") from exc
    if not resume:
        for old in list_checkpoints(ckdir):  # a fresh run must never be resumed from an older run's state
            os.remove(old)
        return Start()
    if finished:
        with h5py.File(out_path, "r") as f:
            old = config_from_dict(yaml.safe_load(f.attrs["config_yaml"]), source=out_path)
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
                              f"(only rounds, eval/checkpoint/sync intervals, device, threads, data.prepared and "
                              f"output keys may change on resume)")
    if not os.path.exists(out_path):
        raise CheckpointError(f"cannot resume from {ck['path']}: the results file {out_path} is missing")
    if ck["round"] > cfg.rounds:
        raise CheckpointError(f"cannot resume from {ck['path']}: checkpoint is at round {ck['round']} but "
                              f"rounds={cfg.rounds}")
    pending = ck.get("pending")
    return Start(round=ck["round"] + 1, state=ck["state"], pending=pending or None,
                 client_states=ck.get("client_states") or None,
                 rows=ck["round"] - (1 if pending else 0),
                 note=f"resuming after round {ck['round']} from {ck['path']}")
