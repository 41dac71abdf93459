"""Checkpoints (docs/design.md#checkpoints-and-stop-signals): written atomically beside the results file, the
newest two kept.

A checkpoint holds everything needed to continue a run exactly: the global state after the last completed
round, that round's results row when it has not been evaluated and written yet, the resume identity, the
config hash and the package version. Every random stream is a pure function of the root
seed, the round and the client id, so no generator state needs saving.

A checkpoint that cannot be written (full disk, file size limit) raises `WriteError` naming it; its temp file is
removed and the earlier checkpoints are left as they were. A writer killed while writing leaves only a temp
file, which `list_checkpoints` ignores and the next save removes.
"""

from __future__ import annotations

import glob
import os
import re
import reprlib
import zipfile
from typing import Any, Callable

import numpy as np
import torch

from ..compat import load_weights_only
from ..results.errors import WriteError, describe_write_failure, fsync_path, has_os_error

# the layout of `pending` (the last round's results row when not yet written): 1, a flat dict (run/resume.py reads
# it); 2, RoundRow.to_dict()
FORMAT = 2
READABLE_FORMATS = (1, 2)
KEEP = 2
_NAME = re.compile(r"round-(\d{6,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, corrupt, or from another config)."""


def checkpoint_dir(results_path: str) -> str:
    """`run.h5` -> `run.ckpt` (a directory beside the results file)."""
    base = results_path[:-3] if results_path.endswith(".h5") else results_path
    return base + ".ckpt"


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


class _Partway:
    """The temp file as torch.save sees it: calls `fault` once, when its first write has reached the file."""

    def __init__(self, fh: Any, fault: Callable[[], None]) -> None:
        self.fh, self.fault = fh, fault

    def write(self, data: Any) -> int:
        n = self.fh.write(data)
        if self.fault is not None:
            fault, self.fault = self.fault, None
            self.fh.flush()
            fault()
        return n

    def flush(self) -> None:
        self.fh.flush()


def save_checkpoint(directory: str, round_: int, payload: dict[str, Any],
                    fault: Callable[[], None] | None = None) -> str:
    """Write `round-NNNNNN.pt` atomically (temp file, fsync, rename, fsync dir); keep the newest two. A failed
    write raises WriteError naming the file, after removing the temp file. `fault` (tests only): called once part
    of the temp file is written, before the rest and the rename."""
    final = os.path.join(directory, f"round-{round_:06d}.pt")
    tmp = final + f".tmp{os.getpid()}"
    data = {"format": FORMAT, "round": round_, **_plain(payload)}
    data["state"] = {k: v.detach().to("cpu") for k, v in payload["state"].items()}
    try:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(directory), "round-*.pt.tmp*")):
            os.remove(stale)  # left by a writer killed while writing
        with open(tmp, "wb") as fh:
            torch.save(data, fh if fault is None else _Partway(fh, fault))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_path(directory)
    except Exception as exc:  # noqa: BLE001 - removes the temp file, then re-raised
        try:
            os.remove(tmp)
        except OSError:
            pass
        if has_os_error(exc):  # torch reports a failed write as a RuntimeError raised while handling it
            raise WriteError(f"cannot write checkpoint {final}: {describe_write_failure(exc)}") from exc
        raise
    for old in list_checkpoints(directory)[:-KEEP]:
        os.remove(old)
    return final


def list_checkpoints(directory: str) -> list[str]:
    """Checkpoint files, oldest first."""
    files = [f for f in glob.glob(os.path.join(directory, "round-*.pt")) if _NAME.search(f)]
    return sorted(files, key=lambda f: int(_NAME.search(f).group(1)))


def _why(exc: BaseException) -> str:
    """An exception as a short single line (torch's and zipfile's messages can span many lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _check_archive(path: str) -> None:
    """Every member's CRC32: torch's reader does not check them, so a flipped bit in a tensor would load silently."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types on a damaged archive
        raise CheckpointError(f"{path}: unreadable checkpoint (damaged archive: {_why(exc)})") from exc
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint (CRC32 mismatch in {bad!r})")


def _is_tensor_map(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _check_contents(path: str, data: dict[str, Any]) -> None:
    """The fields a resume relies on have the types it expects (an intact archive can still hold anything)."""
    problems = []
    rnd = data.get("round")
    if type(rnd) is not int or rnd < 0:
        problems.append(f"round is {reprlib.repr(rnd)}, expected an integer >= 0")
    if not _is_tensor_map(data.get("state")) or not data.get("state"):
        problems.append("state is not a mapping of tensor names to tensors")
    if not isinstance(data.get("identity"), str):
        problems.append(f"identity is {reprlib.repr(data.get('identity'))}, expected a string")
    if not isinstance(data.get("pending"), (dict, type(None))):
        problems.append(f"pending is {reprlib.repr(data.get('pending'))}, expected a results row or None")
    states = data.get("client_states")
    if states is not None and not (isinstance(states, dict) and all(isinstance(c, str) and _is_tensor_map(s)
                                                                    for c, s in states.items())):
        problems.append("client_states is not a mapping of client ids to tensors")
    if problems:
        raise CheckpointError(f"{path}: not a usable checkpoint: {'; '.join(problems)}")


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint (tensors on the CPU); CheckpointError names the file if it is unreadable, damaged (the
    archive's CRC32s) or does not hold what a checkpoint holds."""
    _check_archive(path)
    try:
        data = load_weights_only(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"{path}: unreadable checkpoint ({_why(exc)})") from exc
    if not isinstance(data, dict) or type(data.get("format")) is not int or data["format"] not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: not a fedmrn_mpi checkpoint of format "
                              f"{' or '.join(map(str, READABLE_FORMATS))}")
    _check_contents(path, data)
    state = data.pop("state")
    try:
        out = _unplain(data)
    except Exception as exc:  # noqa: BLE001 - a stored array without its dtype, or with an unknown one
        raise CheckpointError(f"{path}: not a usable checkpoint: unreadable array ({_why(exc)})") from exc
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
