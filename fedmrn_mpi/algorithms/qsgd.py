"""qsgd: unbiased stochastic quantisation of the update in buckets (Alistarh et al. 2017, docs/baselines.md §2).

**Quantisation.** Each masked tensor's update `v` (`d` entries, flattened) is cut into buckets of
`B = algorithm.bucket_size` consecutive entries (the last one shorter; `B = 0`: one bucket per tensor). With
`s = algorithm.levels` and `‖v_b‖` a bucket's L2 norm (float64, rounded once to float32; the float32 value is
used from then on on both sides), every entry `i` of bucket `b`:

- `r_i = |v_i| · float32(s / ‖v_b‖) ∈ [0, s]` (float32; float64 then rounded where `s / ‖v_b‖` overflows
  float32), `l_i = floor(r_i) + [U_i < r_i − floor(r_i)]` with `U_i = uniform01(draw_seed, make_stream(0, j))[i]`
  (`j` = masked-tensor index, `i` = the entry's index in its tensor), clamped to `s` (float32 rounding of the
  norm can push the largest `r_i` a hair above `s`). A bucket whose norm is 0 (or not finite: a diverged
  client, rejected by the server) sends all levels 0.
- decoded value `sgn_i · l_i · float32(‖v_b‖ / s)` (one float32 product), so `E[v̂] = v` up to the 2⁻²⁴ grid of
  `U` and float32 rounding; per bucket `E‖v̂_b − v_b‖² ≤ min(B/s², √B/s)·‖v_b‖²` (Lemma 3.1).
- a sign is sent only with a non-zero level (negative iff `v_i < 0`), so each value has exactly one code.

**`algorithm.coding: elias`** (default; the paper's encoding, variable size). The payload is

    norms   4·NB bytes: every bucket's norm, float32 little-endian, buckets in order (tensors in
            ModelSpec.masked order, buckets in entry order)
    stream  the Elias stream (elias.py) of the D = sum(d) masked entries as ONE vector (tensors concatenated in
            the same order): per non-zero entry omega(gap) · sign bit · omega(level), then omega(D + 1 − last
            non-zero position), MSB-first bytes, zero padding to a byte
    values  the unmasked tensors as float32, as every codec

The paper's Code_s writes each vector's 32-bit norm and then its Elias-coded gaps, signs and levels: the same
bits, with the norms gathered in front (they have a fixed size, so the decoder finds the stream without
parsing) and gaps running on across bucket and tensor boundaries (a gap is the distance between consecutive
non-zero entries of the whole masked vector). Size: `4·NB + ceil(S/8) + 4·U` bytes, `S` the stream's bits.

**The bound** (`payload_nbytes`, what the runner allows per upload, enforced by `decode` before anything is
allocated): `S <= D·(2 + L(s)) + 1` with `L(s)` the Elias omega length of `s` (proof in elias.py: every
non-zero entry costs at most `2 + L(s)` bits per position it covers; reached when every entry is non-zero at
level `s`, e.g. with bucket_size 1). L(1) = 1, L(2) = L(3) = 3, L(4) = 6: 3, 5, 5 and 8 bits per entry.

**`algorithm.coding: fixed`** (fixed size). Per masked tensor: `b = 1 + ceil(log2(s + 1))` bits per entry in bit
planes, plane-major, packed once with `pack_bits` (bit `p·d + i` of the field is bit `p` of entry `i`'s code
word `sign | level << 1`: plane 0 = the sign bits, planes 1..b−1 the level bits, least significant first),
`ceil(b·d/8)` bytes, then the tensor's bucket norms as float32 little-endian (`ceil(d/B)` of them). With
`bucket_size: 0` (or a bucket at least as long as every tensor) this is bit for bit the wire before buckets.

CNN4/FashionMNIST: D = 389,920 masked entries in 5 tensors (288, 18,432, 73,728, 294,912, 2,560), 7,680
unmasked bytes; bucket 512: NB = 1 + 36 + 144 + 576 + 5 = 762 norms (3,048 bytes).

| levels | fixed (b) | fixed bytes | elias bound bytes |
|---|---|---|---|
| 1 | 2 | 97,480 + 3,048 + 7,680 = 108,208 | 146,221 + 3,048 + 7,680 = 156,949 |
| 2 | 3 | 146,220 + 3,048 + 7,680 = 156,948 | 243,701 + 3,048 + 7,680 = 254,429 |
| 4 | 4 | 194,960 + 3,048 + 7,680 = 205,688 | 389,921 + 3,048 + 7,680 = 400,649 |

The server rejects (ValueError -> WireError) a size outside the coding's range, a negative norm, a level above
`s`, a non-zero level in a bucket whose norm is 0, and, with `fixed`, a sign bit on a zero level and non-zero
padding bits; with `elias`, every malformed stream (invalid code, a gap past the end, a missing end code, bytes
after it, non-zero padding; elias.decode_stream). A norm that is NaN/inf is a diverged client
(NonFiniteUpdate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..rng.bits import check_padding, pack_planes, packed_nbytes, unpack_planes
from ..rng.noise import make_stream, uniform01
from . import elias
from .base import ClientContext, LocalProblem, NonFiniteUpdate, Update, option
from .compress import DeltaCompression

# Stream purposes of this algorithm (one stream per purpose and masked-tensor index).
_ROUNDING = 0

# the values of `algorithm.coding`
ELIAS, FIXED = "elias", "fixed"
CODINGS: tuple[str, ...] = (ELIAS, FIXED)


def level_bits(levels: int) -> int:
    """ceil(log2(levels + 1)): bits for an integer level in 0..levels."""
    return int(levels).bit_length()


def unit_values(norms: np.ndarray, levels: int) -> np.ndarray:
    """float32(norm / s) per bucket: the value of one level (float64 division of the float32 norm, rounded)."""
    return (np.asarray(norms, dtype=np.float32).astype(np.float64) / levels).astype(np.float32)


def qsgd_values(negative: torch.Tensor, level: torch.Tensor, unit: torch.Tensor | float) -> torch.Tensor:
    """sgn · level · unit as float32, `unit` = float32(norm / s) per entry (or one for all): one float32
    product, so every device gives the same bits (the one decoding rule, shared by client and server)."""
    mag = level.to(torch.float32)
    mag = mag.mul_(unit) if isinstance(unit, float) else mag.mul_(unit.to(mag.device, torch.float32))
    return torch.where(negative, -mag, mag)


class QSGD(DeltaCompression):
    """Per bucket of a masked tensor: float32 L2 norm and, per entry, a sign and a stochastically rounded level,
    Elias-coded (default) or in fixed-width planes."""

    name = "qsgd"
    algo_id = 4

    @dataclass(frozen=True)
    class Options:
        levels: int = option(1, "qsgd: quantisation levels per sign", ge=1, lt=2**15)
        bucket_size: int = option(512, "qsgd: consecutive entries of a masked tensor that share one norm (the last "
                                  "bucket shorter); 0 = one bucket per tensor", ge=0, lt=2**31)
        coding: str = option(ELIAS, "qsgd: Elias-coded gaps, signs and levels of the non-zero entries (the paper's, "
                             "variable size) or a fixed-width sign and level per entry", choices=CODINGS)

    options: Options

    @property
    def levels(self) -> int:
        return self.options.levels

    @property
    def coding(self) -> str:
        return self.options.coding

    @property
    def variable_payload(self) -> bool:  # type: ignore[override]
        return self.coding == ELIAS

    # buckets ---------------------------------------------------------------------------------------------
    def bucket_len(self, numel: int) -> int:
        """B for a tensor of `numel` entries (bucket_size, or the whole tensor when 0)."""
        b = self.options.bucket_size
        return max(1, int(numel)) if b == 0 else b

    def num_buckets(self, numel: int) -> int:
        return -(-int(numel) // self.bucket_len(numel))

    @property
    def total_buckets(self) -> int:
        return sum(self.num_buckets(self.spec.numel(n)) for n in self.spec.masked)

    def entry_bits(self) -> int:
        """fixed coding: b = 1 + ceil(log2(s + 1)) bits per entry."""
        return 1 + level_bits(self.levels)

    # quantisation ----------------------------------------------------------------------------------------
    def quantize(self, v: torch.Tensor, index: int, draw_seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(negative, level, float32 norms per bucket) of the flattened tensor `v`; the rounding draws come from
        `draw_seed`. `negative`/`level` stay on `v`'s device, the norms are a NumPy float32 array."""
        s, flat = self.levels, v.detach().reshape(-1)
        d = flat.numel()
        B = self.bucket_len(d)
        nb = self.num_buckets(d)
        x64 = flat.to(torch.float64)
        if nb == 1:
            norm64 = torch.linalg.vector_norm(x64).reshape(1)
        else:
            x64 = torch.nn.functional.pad(x64, (0, nb * B - d)).view(nb, B)
            norm64 = torch.linalg.vector_norm(x64, dim=1)
        norms = norm64.to(torch.float32)
        valid = torch.isfinite(norms) & (norms > 0)
        if d == 0 or not bool(valid.any()):  # nothing to send; no draw needed
            zeros = torch.zeros(d, dtype=torch.int64, device=flat.device)
            return zeros.bool(), zeros, norms.cpu().numpy()
        scale64 = s / norms.to(torch.float64)
        scale32 = scale64.to(torch.float32)
        per = torch.arange(d, device=flat.device) // B if nb > 1 else None

        def spread(t: torch.Tensor) -> torch.Tensor:  # a per-bucket value for every entry
            return t[per] if per is not None else t.expand(d)

        # float32 (r − floor(r) is exact, and u lies on a 2^-24 grid anyway), unless s/‖v‖ overflows it
        r = flat.abs().to(torch.float32).mul_(spread(scale32))
        fast = torch.isfinite(scale32) | ~valid
        if not bool(fast.all()):
            slow = (flat.abs().to(torch.float64) * spread(scale64)).to(torch.float32)
            r = torch.where(spread(fast), r, slow)
        low = r.floor()
        u = uniform01(draw_seed, make_stream(_ROUNDING, index), d, flat.device)
        up = u < r.sub_(low)  # r now holds the fractional part
        level = low.add_(up).clamp_(max=s)
        level = torch.where(spread(valid), level, torch.zeros((), device=flat.device)).to(torch.int64)
        return (flat < 0) & (level > 0), level, norms.cpu().numpy()

    def _decoded(self, negative: torch.Tensor, level: torch.Tensor, norms: np.ndarray, shape) -> torch.Tensor:
        d = level.numel()
        units = torch.from_numpy(unit_values(norms, self.levels)).to(level.device)
        unit = units[torch.arange(d, device=level.device) // self.bucket_len(d)] if units.numel() > 1 else \
            units.expand(d)
        return qsgd_values(negative, level, unit).reshape(shape)

    # per-tensor codes ------------------------------------------------------------------------------------
    def tensor_nbytes(self, index: int, numel: int) -> int:
        """fixed: the exact code size of a tensor; elias: the bound of a tensor coded on its own."""
        nb = self.num_buckets(numel)
        if self.coding == FIXED:
            return packed_nbytes(self.entry_bits() * numel) + 4 * nb
        return 4 * nb + -(-elias.stream_bound_bits(numel, self.levels) // 8)

    def encode_tensor(self, delta: torch.Tensor, index: int, ctx: ClientContext) -> tuple[np.ndarray, torch.Tensor]:
        negative, level, norms = self.quantize(delta, index, ctx.draw_seed)
        decoded = self._decoded(negative, level, norms, delta.shape)
        if self.coding == FIXED:
            word = negative.to(torch.int64) | (level << 1)
            code = np.concatenate([pack_planes(word, self.entry_bits()).cpu().numpy(),
                                   norms.astype("<f4").view(np.uint8)])
        else:
            code = self._elias_code([level], [negative], [norms])
        return code, decoded

    def decode_tensor(self, code: np.ndarray, index: int, shape: tuple[int, ...], seed: int,
                      device: torch.device) -> torch.Tensor:
        name, s = self.spec.masked[index], self.levels
        d = int(np.prod(shape, dtype=np.int64))
        if self.coding == ELIAS:
            nbound = self.tensor_nbytes(index, d)
            if code.size > nbound:
                raise ValueError(f"qsgd code of {name} is {code.size} bytes, expected at most {nbound}")
            (values,) = self._elias_read(code, [d], [name])
            return torch.from_numpy(values).reshape(shape).to(device)
        b, nb = self.entry_bits(), self.num_buckets(d)
        npl = packed_nbytes(b * d)
        if code.size != npl + 4 * nb:
            raise ValueError(f"qsgd code of {name} is {code.size} bytes, expected {npl + 4 * nb}")
        norms = self._check_norms(code[npl:], [d], [name])
        check_padding(code[:npl], b * d, f"qsgd codes of {name}")
        word = unpack_planes(torch.from_numpy(code[:npl].copy()).to(device), d, b)
        negative, level = (word & 1).bool(), word >> 1
        top = int(level.max()) if d else 0
        if top > s:
            raise ValueError(f"qsgd level {top} in {name} exceeds levels={s}")
        if bool((negative & (level == 0)).any()):
            raise ValueError(f"qsgd code of {name} has a sign bit on a zero level")
        if bool((norms == 0).any()):
            self._check_zero_buckets(torch.nonzero(level).reshape(-1).cpu().numpy(), norms, [d], [name])
        return self._decoded(negative, level, norms, shape)

    # the elias layout ------------------------------------------------------------------------------------
    def _buckets_of(self, sizes: list[int], tensors: list[str]) -> tuple[np.ndarray, list[str]]:
        """Start (in the concatenation of tensors of `sizes` entries) of every bucket, plus one past the end, and
        the tensor name of every bucket."""
        starts, names, off = [], [], 0
        for d, name in zip(sizes, tensors):
            nb = self.num_buckets(d)
            starts.append(off + self.bucket_len(d) * np.arange(nb, dtype=np.int64))
            names += [name] * nb
            off += d
        return np.concatenate(starts + [np.array([off], dtype=np.int64)]), names

    def _check_norms(self, raw: np.ndarray, sizes: list[int], tensors: list[str]) -> np.ndarray:
        norms = raw.copy().view("<f4")
        _, names = self._buckets_of(sizes, tensors)
        bad = np.flatnonzero(~np.isfinite(norms))
        neg = np.flatnonzero(norms < 0)
        for idx, exc, text in ((bad, NonFiniteUpdate, "a finite value"), (neg, ValueError, "a value >= 0")):
            if idx.size:
                k = int(idx[0])
                first = names.index(names[k])
                raise exc(f"qsgd norm of {names[k]} is {norms[k]} (bucket {k - first}), expected {text}")
        return norms

    def _check_zero_buckets(self, positions: np.ndarray, norms: np.ndarray, sizes: list[int],
                            tensors: list[str]) -> np.ndarray:
        """The bucket of every non-zero entry (0-based positions in the concatenation); none may have norm 0."""
        starts, names = self._buckets_of(sizes, tensors)
        bucket = np.searchsorted(starts, positions, side="right") - 1
        zero = np.flatnonzero(norms[bucket] == 0)
        if zero.size:
            k = int(bucket[zero[0]])
            first = names.index(names[k])
            raise ValueError(f"qsgd level in {names[k]} bucket {k - first}, whose norm is 0")
        return bucket

    def _elias_code(self, levels: list[torch.Tensor], negatives: list[torch.Tensor],
                    norms: list[np.ndarray]) -> np.ndarray:
        lv = np.concatenate([t.to(torch.int32).cpu().numpy() for t in levels])
        ng = np.concatenate([t.cpu().numpy() for t in negatives])
        stream, _ = elias.encode_stream(lv, ng)
        return np.concatenate([np.concatenate(norms).astype("<f4").view(np.uint8), stream])

    def _elias_read(self, code: np.ndarray, sizes: list[int], tensors: list[str]) -> list[np.ndarray]:
        """The float32 values of tensors of `sizes` entries from their elias code (norms, then the stream)."""
        nb = sum(self.num_buckets(d) for d in sizes)
        if code.size < 4 * nb:
            raise ValueError(f"qsgd code of {', '.join(tensors)} is {code.size} bytes, shorter than its {nb} norms")
        norms = self._check_norms(code[: 4 * nb], sizes, tensors)
        total = sum(sizes)
        what = f"qsgd Elias stream of {tensors[0] if len(tensors) == 1 else 'the masked tensors'} ({total} entries)"
        pos, lvl, neg = elias.decode_stream(code[4 * nb:], total, self.levels, what)
        bucket = self._check_zero_buckets(pos, norms, sizes, tensors)
        values = np.zeros(total, dtype=np.float32)
        mag = lvl.astype(np.float32) * unit_values(norms, self.levels)[bucket]
        values[pos] = np.where(neg, -mag, mag)
        return np.split(values, np.cumsum(sizes)[:-1])

    # the interface ---------------------------------------------------------------------------------------
    def payload_nbytes(self) -> int:
        """fixed: the exact size; elias: the proven bound (module docstring), which `decode` enforces."""
        if self.coding == FIXED:
            return super().payload_nbytes()
        D = self.spec.num_masked
        return (4 * self.total_buckets + -(-elias.stream_bound_bits(D, self.levels) // 8)
                + 4 * self.spec.num_unmasked)

    def min_payload_nbytes(self) -> int:
        """The smallest well-formed payload (no non-zero entry: the end code alone)."""
        if self.coding == FIXED:
            return self.payload_nbytes()
        D = self.spec.num_masked
        return 4 * self.total_buckets + math.ceil(elias.omega_length(D + 1) / 8) + 4 * self.spec.num_unmasked

    def encode(self, problem: LocalProblem, ctx: ClientContext) -> np.ndarray:
        if self.coding == FIXED:
            return super().encode(problem, ctx)
        levels, negatives, norms = [], [], []
        with torch.no_grad():
            for j, name in enumerate(self.spec.masked):
                negative, level, nrm = self.quantize(problem.trainables[name] - problem.extra["w"][name], j,
                                                     ctx.draw_seed)
                levels.append(level)
                negatives.append(negative)
                norms.append(nrm)
        state = {**problem.trainables, **problem.buffers}
        return np.concatenate([self._elias_code(levels, negatives, norms),
                               self._float_payload([state[n] for n in self.spec.unmasked])])

    def decode(self, payload: memoryview, seed: int, global_state: dict[str, torch.Tensor],
               device: torch.device) -> Update:
        if self.coding == FIXED:
            return super().decode(payload, seed, global_state, device)
        n, hi, lo = payload.nbytes, self.payload_nbytes(), self.min_payload_nbytes()
        if not lo <= n <= hi:
            raise ValueError(f"qsgd payload is {n} bytes, expected at most {hi} (and at least {lo})")
        arr = np.frombuffer(payload, dtype=np.uint8)
        end = n - 4 * self.spec.num_unmasked
        values = self._elias_read(arr[:end], [self.spec.numel(m) for m in self.spec.masked], list(self.spec.masked))
        deltas = {name: torch.from_numpy(v).reshape(self.spec.shapes[name]).to(device)
                  for name, v in zip(self.spec.masked, values)}
        more, buffers = self._values_to_update(self._read_floats(payload, self.spec.unmasked, end, device),
                                               global_state)
        deltas.update(more)
        return Update(deltas, buffers)
