"""Fused Triton kernels of FedMRN's codec (docs/design.md#noise-generator, "Kernels").

Imported lazily by `fedmrn.py` (this module imports Triton) when the tensors are on a CUDA device or a caller
forces the kernels. Each kernel makes one pass over memory and regenerates the noise and the uniform draws
from their counter-hash keys instead of reading them; each reproduces the reference (`fedmrn.py`'s eager ops
and `aggregate.py`'s sums) bit for bit, in the same float32 operation order:

- `sample_base`: one local step's masked noise Δ (soft / hard / progressive mix, binary or signed) and the
  straight-through base `(w + Δ) - u`, as `materialize` computes it;
- `final_pack`: the final draw `U_final < q(u)` written straight into the packed upload bytes (bit k of the
  concatenated masks = bit k % 8 of byte k // 8; a tensor may start mid-byte);
- `mask_sum`: the server's weighted sum over K clients of `Δ_k = n_k ⊙ m_k` for one masked tensor, in client
  order, each step `acc = fma(Δ_k, float32(a_k), acc)` exactly as torch's `acc.add_(Δ_k, alpha=a_k)`.

Launches use ``enable_fp_fusion=False``: the reference rounds `c * n`, `w + Δ` and `- u` separately.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from ..rng.kernels import (KIND_IDS, hash32, i32_key, key32, noise_args, noise_keys, noise_value, pid64,
                           uniform01_of)
from ..rng.noise import stream_key

__all__ = ["MODE_SOFT", "MODE_HARD", "MODE_MIX", "sample_base", "final_pack", "mask_sum", "mask_sum_keys"]

MODE_SOFT, MODE_HARD, MODE_MIX = 0, 1, 2   # p <= 0 (no draws), p >= 1 (no selector draw), 0 < p < 1

SAMPLE_BLOCK = 1024
FINAL_BYTES = 256          # packed bytes per program of final_pack (2048 mask bits)
SUM_BLOCK = 1024


@triton.jit
def _noise_at(i, n_ptr, offs, m, k0, k1, k0b, k1b, s32, sig_bits, tp_bits,
              KIND: tl.constexpr, READ_NOISE: tl.constexpr):
    """The noise at counters `i`: read from n_ptr[offs] or regenerated from the keys."""
    if READ_NOISE:
        n = tl.load(n_ptr + offs, mask=m, other=1.0)
    else:
        n = noise_value(i, key32(k0), key32(k1), key32(k0b), key32(k1b), s32, sig_bits, tp_bits, KIND)
    return n


@triton.jit
def _clipped_ratio(u, n, SIGNED: tl.constexpr):
    """clamp(u / n, lo, 1) with torch.clamp's semantics (NaN kept, -0.0 kept), IEEE division."""
    r = tl.div_rn(u, n)
    if SIGNED:
        r = tl.where(r < -1.0, -1.0, r)
    else:
        r = tl.where(r < 0.0, 0.0, r)
    return tl.where(r > 1.0, 1.0, r)


@triton.jit
def _masked(n, bit, SIGNED: tl.constexpr):
    if SIGNED:
        d = tl.where(bit, n, -n)
    else:
        d = tl.where(bit, n, 0.0)
    return d


@triton.jit(do_not_specialize=["k0", "k1", "k0b", "k1b", "sig_bits", "tp_bits", "h0", "h1", "s0", "s1"])
def _sample_base_kernel(u_ptr, w_ptr, n_ptr, out_ptr, numel,
                        k0, k1, k0b, k1b, s32, sig_bits, tp_bits,
                        h0, h1, s0, s1, p,
                        KIND: tl.constexpr, READ_NOISE: tl.constexpr, SIGNED: tl.constexpr,
                        MODE: tl.constexpr, BLOCK: tl.constexpr):
    offs = pid64(BLOCK)
    m = offs < numel
    i = offs.to(tl.uint32)
    u = tl.load(u_ptr + offs, mask=m, other=0.0)
    w = tl.load(w_ptr + offs, mask=m, other=0.0)
    n = _noise_at(i, n_ptr, offs, m, k0, k1, k0b, k1b, s32, sig_bits, tp_bits, KIND, READ_NOISE)
    c = _clipped_ratio(u, n, SIGNED)
    if MODE == 0:
        d = c * n
    else:
        if SIGNED:
            q = (c + 1.0) * 0.5
        else:
            q = c
        hard = _masked(n, uniform01_of(hash32(i, key32(h0), key32(h1))) < q, SIGNED)
        if MODE == 1:
            d = hard
        else:
            sel = uniform01_of(hash32(i, key32(s0), key32(s1))) < p
            d = tl.where(sel, hard, c * n)
    tl.store(out_ptr + offs, (w + d) - u, mask=m)


@triton.jit(do_not_specialize=["bit_off", "k0", "k1", "k0b", "k1b", "sig_bits", "tp_bits", "f0", "f1"])
def _final_pack_kernel(u_ptr, n_ptr, out_ptr, numel, bit_off, nbytes,
                       k0, k1, k0b, k1b, s32, sig_bits, tp_bits, f0, f1,
                       KIND: tl.constexpr, READ_NOISE: tl.constexpr, SIGNED: tl.constexpr,
                       BYTES: tl.constexpr):
    # bytes [b0, b0 + nbytes) of the packed field hold bits [bit_off, bit_off + numel)
    b0 = bit_off // 8
    sub = bit_off - b0 * 8                     # bit position of element 0 in byte b0
    lb = pid64(BYTES)                          # byte index relative to b0
    t = tl.arange(0, 8)
    li = lb[:, None] * 8 + t[None, :] - sub    # element index of each bit slot
    m = (li >= 0) & (li < numel)
    i = li.to(tl.uint32)
    u = tl.load(u_ptr + li, mask=m, other=0.0)
    n = _noise_at(i, n_ptr, li, m, k0, k1, k0b, k1b, s32, sig_bits, tp_bits, KIND, READ_NOISE)
    c = _clipped_ratio(u, n, SIGNED)
    if SIGNED:
        q = (c + 1.0) * 0.5
    else:
        q = c
    bit = (uniform01_of(hash32(i, key32(f0), key32(f1))) < q) & m
    byte = tl.sum(bit.to(tl.int32) << t[None, :], axis=1)
    # a tensor that starts mid-byte shares its first byte with the previous tensor (written by an earlier
    # launch on the same stream): OR into it; every other byte is written whole (padding bits zero)
    first = lb < tl.minimum(sub, 1)            # byte b0, and only when the tensor starts mid-byte
    old = tl.load(out_ptr + b0 + lb, mask=first, other=0).to(tl.int32)
    tl.store(out_ptr + b0 + lb, (byte | old).to(tl.uint8), mask=lb < nbytes)


@triton.jit(do_not_specialize=["bit_off", "row_stride", "sig_bits", "tp_bits"])
def _mask_sum_kernel(packed_ptr, row_stride, bit_off, keys_ptr, wts_ptr, out_ptr, numel, K,
                     s32, sig_bits, tp_bits,
                     KIND: tl.constexpr, SIGNED: tl.constexpr, BLOCK: tl.constexpr):
    offs = pid64(BLOCK)
    m = offs < numel
    i = offs.to(tl.uint32)
    g = offs + bit_off                          # bit index in each client's packed field
    byte_off = g >> 3
    shift = (g & 7).to(tl.int32)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    kp = keys_ptr
    wp = wts_ptr
    rp = packed_ptr + byte_off                  # pointers advance row by row (no 32-bit k * stride product)
    for _k in range(0, K):
        n = noise_value(i, key32(tl.load(kp)), key32(tl.load(kp + 1)), key32(tl.load(kp + 2)),
                        key32(tl.load(kp + 3)), s32, sig_bits, tp_bits, KIND)
        byte = tl.load(rp, mask=m, other=0).to(tl.int32)
        d = _masked(n, ((byte >> shift) & 1) != 0, SIGNED)
        acc = tl.fma(d, tl.load(wp), acc)       # torch: acc.add_(d, alpha=a) == fma(float32(a), d, acc)
        kp += 4
        wp += 1
        rp += row_stride
    tl.store(out_ptr + offs, acc, mask=m)


# --- launchers ----------------------------------------------------------------------------------------------

def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous()


def _noise_launch_args(n: torch.Tensor | None, noise_seed: int, noise_stream: int, kind: str, sigma: float,
                       like: torch.Tensor):
    """(n_ptr tensor, READ_NOISE, key and sigma arguments): read `n` if given, else regenerate it."""
    keys = (0, 0, 0, 0) if n is not None else noise_keys(noise_seed, noise_stream, kind)
    return (_flat(n) if n is not None else like), n is not None, keys, noise_args(kind, sigma)


def sample_base(u: torch.Tensor, w: torch.Tensor, n: torch.Tensor | None, *, noise_seed: int, noise_stream: int,
                kind: str, sigma: float, draw_seed: int, hard_stream: int, select_stream: int, p: float,
                signed: bool) -> torch.Tensor:
    """(w + Δ) - u for one local step, Δ as `FedMRN.sample_delta` draws it with hard share `p` (a new tensor
    of u's shape). The noise is read from `n` when given, else regenerated from (noise_seed, noise_stream)."""
    uf, wf = _flat(u), _flat(w)
    numel = uf.numel()
    out = torch.empty(numel, dtype=torch.float32, device=uf.device)
    if numel == 0:
        return out.view(u.shape)
    n_arg, read, keys, nargs = _noise_launch_args(n, noise_seed, noise_stream, kind, sigma, uf)
    mode = MODE_SOFT if p <= 0.0 else MODE_HARD if p >= 1.0 else MODE_MIX
    h = stream_key(draw_seed, hard_stream) if mode != MODE_SOFT else (0, 0)
    s = stream_key(draw_seed, select_stream) if mode == MODE_MIX else (0, 0)
    p32 = float(np.float32(p))       # torch compares the float32 draws with float32(p)
    grid = (triton.cdiv(numel, SAMPLE_BLOCK),)
    _sample_base_kernel[grid](uf, wf, n_arg, out, numel, *keys, *nargs,
                              i32_key(h[0]), i32_key(h[1]), i32_key(s[0]), i32_key(s[1]), p32,
                              KIND=KIND_IDS[kind], READ_NOISE=read, SIGNED=signed, MODE=mode, BLOCK=SAMPLE_BLOCK,
                              num_warps=4, enable_fp_fusion=False)
    return out.view(u.shape)


def final_pack(out: torch.Tensor, bit_off: int, u: torch.Tensor, n: torch.Tensor | None, *, noise_seed: int,
               noise_stream: int, kind: str, sigma: float, draw_seed: int, final_stream: int,
               signed: bool) -> None:
    """Write the final mask bits `U_final < q(u)` of one tensor into the packed field `out` (uint8, 1-D),
    starting at bit `bit_off`. Tensors must be written in increasing `bit_off` order on one stream: a tensor
    that starts mid-byte ORs its first byte into what the previous one wrote; the other bytes it touches are
    overwritten (so `out` may start uninitialised)."""
    uf = _flat(u)
    numel = uf.numel()
    if numel == 0:
        return
    nbytes = (bit_off + numel + 7) // 8 - bit_off // 8
    if (bit_off + numel + 7) // 8 > out.numel():
        raise ValueError(f"packed field of {out.numel()} bytes is too short for bits [{bit_off}, {bit_off + numel})")
    n_arg, read, keys, nargs = _noise_launch_args(n, noise_seed, noise_stream, kind, sigma, uf)
    f0, f1 = stream_key(draw_seed, final_stream)
    grid = (triton.cdiv(nbytes, FINAL_BYTES),)
    _final_pack_kernel[grid](uf, n_arg, out, numel, bit_off, nbytes, *keys, *nargs, i32_key(f0), i32_key(f1),
                             KIND=KIND_IDS[kind], READ_NOISE=read, SIGNED=signed, BYTES=FINAL_BYTES,
                             num_warps=4, enable_fp_fusion=False)


def mask_sum_keys(seeds: list[int], noise_stream: int, kind: str) -> np.ndarray:
    """int32 [K, 4] noise keys of K clients' seeds for one tensor's stream (host array)."""
    return np.array([noise_keys(s, noise_stream, kind) for s in seeds], dtype=np.int32).reshape(-1, 4)


def mask_sum(packed: torch.Tensor, bit_off: int, numel: int, keys: torch.Tensor, weights: torch.Tensor, *,
             kind: str, sigma: float, signed: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_k a_k ⊙ Δ_k over the K clients of the rows of `packed` (uint8 [K, bytes], client order), one masked
    tensor at bits [bit_off, bit_off + numel) of each row, Δ_k = n_k ⊙ m_k with n_k from `keys` (int32 [K, 4],
    see `mask_sum_keys`) and a_k = `weights` (float32 [K]). Float32, accumulated from +0 in row order with one
    fused multiply-add per client, as the reference `acc.add_(Δ_k, alpha=a_k)` loop. Returns flat [numel]."""
    K = packed.shape[0]
    if keys.shape != (K, 4) or weights.shape != (K,):
        raise ValueError(f"{K} packed rows need keys [K, 4] and weights [K], got {tuple(keys.shape)}, "
                         f"{tuple(weights.shape)}")
    if packed.stride(1) != 1:
        packed = packed.contiguous()
    if out is None:
        out = torch.empty(numel, dtype=torch.float32, device=packed.device)
    if numel == 0:
        return out
    if K == 0:
        return out.zero_()
    if (bit_off + numel + 7) // 8 > packed.shape[1]:
        raise ValueError(f"packed rows of {packed.shape[1]} bytes are too short for bits "
                         f"[{bit_off}, {bit_off + numel})")
    kid = KIND_IDS[kind]
    grid = (triton.cdiv(numel, SUM_BLOCK),)
    _mask_sum_kernel[grid](packed, packed.stride(0), bit_off, keys.contiguous(), weights.contiguous(), out, numel,
                           K, *noise_args(kind, sigma), KIND=kid, SIGNED=signed, BLOCK=SUM_BLOCK,
                           num_warps=4, enable_fp_fusion=False)
    return out

