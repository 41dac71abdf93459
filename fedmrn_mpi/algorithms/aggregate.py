"""The server's reduction: decode validated uploads and average them in client-id order.

An upload whose training loss or decoded values are not finite (a diverged client) either ends the job
(`on_bad_update: abort`, `BadUpdateError`) or is left out of the round's mean (`skip`): the weights are
renormalised over the others and, as the decision depends only on the upload's bytes, every rank that
aggregates (rank 0, and every rank with `downlink: masks`) drops the same clients, whatever the rank count.
"""

from __future__ import annotations

import math

import torch

from ..comm.wire import Message, WireError
from .base import Algorithm, NonFiniteUpdate


class BadUpdateError(RuntimeError):
    """A client's upload is not finite and `on_bad_update` is abort; the text names client, rank and round."""


def nonfinite(train_loss: float, tensors: dict[str, torch.Tensor]) -> str | None:
    """What is not finite in one client's upload (None: all finite)."""
    if not math.isfinite(train_loss):
        return f"training loss {train_loss}"
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"{int((~torch.isfinite(t)).sum())} non-finite values in {name!r}"
    return None


def aggregate_round(algo: Algorithm, messages: list[tuple[int, Message]], global_state: dict[str, torch.Tensor],
                    server_lr: float, round_: int, device: torch.device, on_bad_update: str = "abort",
                    ) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    """New global = w + η Σ a_k Δ_k / Σ a_k for parameters; weighted mean of values for buffers. Returns it
    and the skipped clients (client id -> what was not finite); when every client is skipped the global state
    is returned unchanged.

    `messages` holds (rank, message) pairs; they are processed in client-id order so the floating-point sums,
    and therefore the results, do not depend on which rank trained which client.
    """
    spec = algo.spec
    if not messages:
        raise WireError(f"round {round_}: no client uploads arrived")
    acc = {n: torch.zeros_like(global_state[n]) for n in spec.names}
    total, skipped = 0.0, {}
    # FedMRN's fast path (Triton kernels on CUDA): `fused.decode` validates each payload and decodes its
    # unmasked tensors, and the masked tensors' weighted sums are computed for all clients at once at the end
    # (the same values, in the same client order, as adding each client's decoded Δ below).
    fused = algo.fused_sum(device)
    decode = algo.decode if fused is None else fused.decode
    for rank, msg in sorted(messages, key=lambda rm: rm[1].header.client_id):
        h = msg.header
        where = f"message from rank {rank}, client {h.client_id}, round {round_}"
        if not (h.weight > 0 and math.isfinite(h.weight)):
            raise WireError(f"{where}: weight {h.weight} is not a positive number")
        try:
            upd = decode(msg.payload, h.seed, global_state, device)
            bad = nonfinite(h.train_loss, {**upd.deltas, **upd.buffers})
        except NonFiniteUpdate as exc:  # a well-formed upload of a diverged client
            bad = str(exc)
        except ValueError as exc:
            raise WireError(f"{where}: {exc}") from exc
        if bad is not None:
            if on_bad_update != "skip":
                raise BadUpdateError(f"round {round_}: the update of client {h.client_id} (trained on rank {rank}) "
                                     f"is not finite: {bad}; set on_bad_update=skip to leave such clients out "
                                     f"of their round")
            skipped[h.client_id] = bad
            if fused is not None:
                fused.drop()
            continue
        a = h.weight if algo.weighted else 1.0
        if fused is not None:
            fused.weight(a)
        for name, t in (*upd.deltas.items(), *upd.buffers.items()):
            acc[name].add_(t, alpha=a)
        total += a
    if total == 0.0:  # every client skipped: the round keeps the model it started from
        return global_state, skipped
    if fused is not None:
        acc.update(fused.sums())
    return algo.server_step(global_state, {n: acc[n].div_(total) for n in spec.names}, server_lr), skipped
