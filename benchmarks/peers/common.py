"""What the peer programs share: the task file, FashionMNIST, CNN4, local SGD and evaluation.

Needs only torch and numpy: it runs inside each peer's own virtual environment, where fedmrn_mpi is not
installed; the model comes from this checkout's `fedmrn_mpi/models.py` (which imports only torch).
`benchmarks/compare_peers.py` writes the task file (JSON) from `benchmarks/peer_task.yaml`: the training
settings, fedmrn_mpi's IID partition of the 60k training images (an .npz file beside it) and the seed
of fedmrn_mpi's initial model, so every side starts from the same weights and trains the same clients' data.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import struct
import sys
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from fedmrn_mpi.models import CNN4 as _CNN4, build_model  # noqa: E402


def load_task(path: str) -> dict:
    """The task JSON, with "client_indices": one int64 array of training-set indices per client (from the
    partition file beside it: all indices flat, and the offsets where each client's part starts and ends)."""
    with open(path) as f:
        task = json.load(f)
    with np.load(os.path.join(os.path.dirname(os.path.abspath(path)), task["partition_file"])) as part:
        flat, offsets = part["flat"], part["offsets"]
    task["client_indices"] = [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    return task


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(data_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and int64 labels of `split` ("train" or "t10k")."""
    x = _read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    y = _read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """float32 (pixel / 255 - mean) / std, as fedmrn_mpi's pipeline."""
    return (x.float() / 255.0 - mean) / std


class CNN4(_CNN4):
    """fedmrn_mpi's CNN4 itself (so the architecture cannot drift apart), for FashionMNIST by default."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__(in_channels, image_size, num_classes)


def build_cnn4(seed: int) -> nn.Module:
    """CNN4 with fedmrn_mpi's init (`fedmrn_mpi.models.build_model`, the same seed as our side)."""
    return build_model("cnn4", 1, 28, 10, seed)


def float_state(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Parameters and BN running statistics (not the integer batch counters): what FedAvg averages."""
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items() if v.is_floating_point())


def init_checksum(model: nn.Module) -> float:
    """Sum of |w| over the float state in float64: the compare script checks that all sides start alike."""
    return float(sum(v.double().abs().sum() for v in float_state(model).values()))


def amp(precision: str):
    """The user-side mixed precision a peer without a precision option of its own gets: torch.autocast to
    bfloat16 around the forward pass ("bf16"), nothing ("fp32")."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: use fp32 or bf16")
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def train_local(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, batch_size: int, epochs: int,
                seed: int, precision: str = "fp32") -> float:
    """Plain SGD (no momentum, no weight decay) over shuffled minibatches, the forward under `amp(precision)`;
    returns the mean batch loss."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    total, steps = 0.0, 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for b in range(0, len(x), batch_size):
            idx = perm[b:b + batch_size]
            with amp(precision):
                loss = F.cross_entropy(model(x[idx]).float(), y[idx])  # float32 logits, as on every side
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    return total / max(steps, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             precision: str = "fp32") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` in eval mode over fixed batches, the forward under
    `amp(precision)`."""
    model.eval()
    loss, correct = 0.0, 0
    for b in range(0, len(x), batch_size):
        with amp(precision):
            logits = model(x[b:b + batch_size]).float()
        loss += float(F.cross_entropy(logits, y[b:b + batch_size], reduction="sum"))
        correct += int((logits.argmax(1) == y[b:b + batch_size]).sum())
    return loss / len(x), correct / len(x)
