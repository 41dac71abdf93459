"""Checkpoints (docs/design.md#checkpoints-and-stop-signals): written atomically beside the results file, the
newest two kept.

A checkpoint holds everything needed to continue a run exactly: the global state after the last completed
round, that round's results row when it has not been evaluated and written yet, the resume identity, the
config hash and the package version. Every random stream is a pure function of the root
seed, the round and the client id, so no generator state needs saving.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import numpy as np
import torch

FORMAT = 1
KEEP = 2
_NAME = re.compile(r"round-(\d{6,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, corrupt, or from another config)."""


def checkpoint_dir(results_path: str) -> str:
    """`run.h5` -> `run.ckpt` (a directory beside the results file)."""
    base = results_path[:-3] if results_path.endswith(".h5") else results_path
    return base + ".ckpt"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(obj: Any) -> Any:
    """numpy -> lists/scalars so that `torch.load(weights_only=True)` can read the file back."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unplain(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _unplain(v) for k, v in obj.items()}
    return obj


def save_checkpoint(directory: str, round_: int, payload: dict[str, Any]) -> str:
    """Write `round-NNNNNN.pt` atomically (temp file, fsync, rename, fsync dir); keep the newest two."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, f"round-{round_:06d}.pt")
    tmp = final + f".tmp{os.getpid()}"
    data = {"format": FORMAT, "round": round_, **_plain(payload)}
    data["state"] = {k: v.detach().to("cpu") for k, v in payload["state"].items()}
    with open(tmp, "wb") as fh:
        torch.save(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-KEEP]:
        os.remove(old)
    return final


def list_checkpoints(directory: str) -> list[str]:
    """Checkpoint files, oldest first."""
    files = [f for f in glob.glob(os.path.join(directory, "round-*.pt")) if _NAME.search(f)]
    return sorted(files, key=lambda f: int(_NAME.search(f).group(1)))


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint (tensors on the CPU); CheckpointError names the file if it is unreadable."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fedmrn_mpi checkpoint of format {FORMAT}")
    state = data.pop("state")
    out = _unplain(data)
    out["state"] = state
    return out


def latest_checkpoint(directory: str) -> dict[str, Any] | None:
    """The newest readable checkpoint (falls back to the previous one if the newest is corrupt)."""
    errors = []
    for path in reversed(list_checkpoints(directory)):
        try:
            ck = load_checkpoint(path)
            ck["path"] = path
            return ck
        except CheckpointError as exc:
            errors.append(str(exc))
    if errors:
        raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
    return None
