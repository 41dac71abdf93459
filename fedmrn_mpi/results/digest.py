"""The model digest every results file and log line names (`final_model_sha256`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np


def state_sha256(state: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the state: tensors in name order, float32 little-endian bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(np.ascontiguousarray(state[name], dtype="<f4").tobytes())
    return h.hexdigest()
