"""What the peer programs share: the task file, FashionMNIST, CNN4, local SGD and evaluation.

Needs only torch and numpy (it runs inside each peer's own virtual environment, without fedmrn_mpi).
`benchmarks/compare_peers.py` writes the task file (JSON) from `benchmarks/peer_task.yaml`: the training
settings, fedmrn_mpi's IID partition of the 60k training images (an .npz file beside it) and the seed
of fedmrn_mpi's initial model, so every side starts from the same weights and trains the same clients' data.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


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


class CNN4(nn.Module):
    """fedmrn_mpi.models.CNN4: four conv3x3(no bias)-BN-ReLU-maxpool2 blocks (32, 64, 128, 256 channels) and a
    bias-free Linear; the same module names, so the state dicts match key for key."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = in_channels, image_size
        for cout in (32, 64, 128, 256):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            cin, size = cout, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin * size * size, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_cnn4(seed: int) -> CNN4:
    """CNN4 with fedmrn_mpi's init: conv/linear weights ~ N(0, 0.01^2) drawn in module order from `seed`."""
    model = CNN4()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(0.0, 0.01, generator=gen)
    return model


def float_state(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Parameters and BN running statistics (not the integer batch counters): what FedAvg averages."""
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items() if v.is_floating_point())


def init_checksum(model: nn.Module) -> float:
    """Sum of |w| over the float state in float64: the compare script checks that all sides start alike."""
    return float(sum(v.double().abs().sum() for v in float_state(model).values()))


def train_local(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, batch_size: int, epochs: int,
                seed: int) -> float:
    """Plain SGD (no momentum, no weight decay) over shuffled minibatches; returns the mean batch loss."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    total, steps = 0.0, 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for b in range(0, len(x), batch_size):
            idx = perm[b:b + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    return total / max(steps, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` in eval mode over fixed batches."""
    model.eval()
    loss, correct = 0.0, 0
    for b in range(0, len(x), batch_size):
        logits = model(x[b:b + batch_size])
        loss += float(F.cross_entropy(logits, y[b:b + batch_size], reduction="sum"))
        correct += int((logits.argmax(1) == y[b:b + batch_size]).sum())
    return loss / len(x), correct / len(x)
