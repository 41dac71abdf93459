"""`precision: bf16`: the forward and backward passes of local training and of evaluation under autocast (CPU
or CUDA); everything the method's numbers rest on stays float32 (docs/precision.md).

Under bf16, autocast runs the convolutions and the linear layer (CPU: oneDNN/AMX; CUDA: cuBLAS/cuDNN) in
bfloat16 on bfloat16 copies of the float32 weights; the loss is computed from float32 logits. Float32 stay: the
master weights and every parameter the client trains (FedMRN's latent update `u`, the soft values `n·q` it
forms in float32 before the forward casts them), the noise, the mask probabilities and draws, every codec's
encode and decode, the server's aggregation, and the BatchNorm running statistics (float32 buffers, and the
re-estimate of bn_recalibrate runs in float32).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch import nn

from ..models import forward


def logits(model: nn.Module, tensors: dict[str, torch.Tensor], x: torch.Tensor, precision: str) -> torch.Tensor:
    """`model` run with `tensors` on `x` (models.forward) under `precision`'s autocast, logits ready for the loss:
    the one forward of local training and of evaluation."""
    with autocast(precision, x.device):
        return full_precision(forward(model, tensors, x))


def full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Logits for the loss: bfloat16 ones widened to float32; float32 and float64 ones unchanged."""
    return logits.float() if logits.dtype == torch.bfloat16 else logits


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The context the forward (and so the backward) of training and evaluation run in."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
