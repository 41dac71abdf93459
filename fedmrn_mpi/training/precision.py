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

# x86 /proc/cpuinfo flags of native bf16 arithmetic: AVX512-BF16 (dot products) and AMX-BF16 (tile matmuls)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of the first processor (empty where /proc/cpuinfo has none)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """AVX512-BF16 or AMX-BF16 (x86), or BF16 on Arm (`bf16` feature)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in (*BF16_CPU_FLAGS, "bf16"))


def precision_problem(precision: str, allow_emulated: bool, device: str, flags: set[str] | None = None,
                      cuda_bf16: bool | None = None) -> str | None:
    """Why `precision` cannot run on this machine's `device` ("cpu", "cuda" or "auto"), or None."""
    if precision != "bf16" or allow_emulated:
        return None
    uses_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if uses_cuda:
        ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return None if ok else ("precision: bf16 needs a GPU with native bfloat16 (compute capability 8.0 or newer); "
                                "set allow_emulated_bf16: true to run it emulated (slow)")
    flags = cpu_flags() if flags is None else flags
    if cpu_has_native_bf16(flags):
        return None
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "sse4", "asimd", "sve")))
    return (f"precision: bf16 needs native bfloat16 on the CPU (AVX512-BF16 or AMX-BF16), and this CPU has "
            f"{', '.join(isa[-6:]) or 'no such extension'}; set allow_emulated_bf16: true to run bf16 emulated "
            f"(slower than fp32), or keep precision: fp32")


def full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Logits for the loss: bfloat16 ones widened to float32; float32 and float64 ones unchanged."""
    return logits.float() if logits.dtype == torch.bfloat16 else logits


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The context the forward (and so the backward) of training and evaluation run in."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
