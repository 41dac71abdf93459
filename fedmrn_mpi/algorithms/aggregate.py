"""The server's reduction: decode validated uploads and average them in client-id order."""

from __future__ import annotations

import torch

from ..comm.wire import Message, WireError
from .base import Algorithm


def aggregate(algo: Algorithm, messages: list[tuple[int, Message]], global_state: dict[str, torch.Tensor],
              server_lr: float, round_: int, device: torch.device) -> dict[str, torch.Tensor]:
    """New global = w + η Σ a_k Δ_k / Σ a_k for parameters; weighted mean of values for buffers.

    `messages` holds (rank, message) pairs; they are processed in client-id order so the floating-point sums,
    and therefore the results, do not depend on which rank trained which client.
    """
    spec = algo.spec
    if not messages:
        raise WireError(f"round {round_}: no client uploads arrived")
    acc = {n: torch.zeros_like(global_state[n]) for n in spec.names}
    total = 0.0
    # FedMRN's fast path (Triton kernels on CUDA): `fused.decode` validates each payload and decodes its
    # unmasked tensors, and the masked tensors' weighted sums are computed for all clients at once at the end
    # (the same values, in the same client order, as adding each client's decoded Δ below).
    fused = algo.fused_sum(device)
    decode = algo.decode if fused is None else fused.decode
    for rank, msg in sorted(messages, key=lambda rm: rm[1].header.client_id):
        h = msg.header
        try:
            upd = decode(msg.payload, h.seed, global_state, device)
        except ValueError as exc:
            raise WireError(f"message from rank {rank}, client {h.client_id}, round {round_}: {exc}") from exc
        if not (h.weight > 0):
            raise WireError(f"message from rank {rank}, client {h.client_id}, round {round_}: weight {h.weight} <= 0")
        a = h.weight if algo.weighted else 1.0
        if fused is not None:
            fused.weight(a)
        for name, t in (*upd.deltas.items(), *upd.buffers.items()):
            acc[name].add_(t, alpha=a)
        total += a
    if fused is not None:
        acc.update(fused.sums())
    return algo.server_step(global_state, {n: acc[n].div_(total) for n in spec.names}, server_lr)
