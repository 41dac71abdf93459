"""Elias omega ("recursive") integer coding and the QSGD sparse stream built from it, vectorised with NumPy.

**Elias omega** (`omega(k)`, integer `k >= 1`), the "Elias integer encoding" of QSGD (Alistarh et al. 2017,
§3.2): start from the string "0"; while `k > 1`, prepend the binary digits of `k` (most significant first) and
set `k` to their count minus 1. So `omega(1) = 0`, `omega(2) = 100`, `omega(4) = 101000`,
`omega(21) = 10 100 10101 0`. Decoding: `N = 1`; while the next bit is 1, read it and `N` more bits as the new
`N`; a 0 bit ends the code with value `N`. Its length is `L(1) = 1`, `L(k) = bitlen(k) + L(bitlen(k) - 1)`
for `k >= 2` (`L` depends on `bitlen(k)` only, so it is non-decreasing in `k`).

**Sparse stream** of a vector of `n` entries with integer levels `l_i in 0..s` and signs (`neg_i` = the entry
is negative, only where `l_i > 0`), the non-zero entries at 1-based positions `p_1 < ... < p_m`: for each
non-zero entry in order

    omega(g_k)  sign_k  omega(l_{p_k})       g_1 = p_1, g_k = p_k - p_{k-1} (the gap), sign_k = 1 iff negative

then the end-of-vector code `omega(n + 1 - p_m)` (`omega(n + 1)` when `m = 0`): the gap to the position one
past the last entry. The paper codes the gaps, signs and levels this way but leaves the end of a vector to the
decoder; the end code is this project's, the cheapest self-delimiting choice that keeps every code an Elias
gap. Bits are written most significant first into bytes filled from their most significant bit
(`np.packbits(..., bitorder="big")`): stream bit `t` is bit `7 - t % 8` of byte `t // 8`; the last byte is
padded with zero bits.

**Worst case** (the bound the wire enforces), `stream_bound_bits(n, s) = n · (2 + L(s)) + 1` bits, reached when
every entry is non-zero at level `s` (every gap 1, end gap 1). Proof: (a) `L(g) <= 3g - 2` for `g >= 1`: true
for `g = 1`; for `g >= 2` with `b = bitlen(g) >= 2`, by induction `L(g) = b + L(b - 1) <= 4b - 5 <= 3g - 2`
since `g >= 2^(b-1)` and `3 · 2^(b-1) >= 4b - 3` for `b >= 2`. (b) With `c = L(s) >= L(l)` for every level
`l <= s` (monotone `L`), one non-zero entry costs `L(g) + 1 + L(l) <= 3g - 1 + c <= g · (2 + c)`, because the
difference is `(c - 1)(g - 1) >= 0`. (c) The gaps `g_1..g_m` and the end gap `e` sum to `n + 1`, so the stream
has at most `(n + 1 - e)(2 + c) + 3e - 2 = (n + 1)(2 + c) - 2 - e(c - 1) <= n(2 + c) + 1` bits (`e >= 1`,
`c >= 1`). The all-non-zero, all-level-`s` vector has exactly `m = n`, every gap 1: `n(1 + 1 + c) + 1` bits.

**Encoding** computes every code's value and length at once, places them by the lengths' running sum into 64-bit
words (`write_fields`) and writes the words big-endian: no loop over entries or buckets.

**Decoding** without a loop over entries: the omega code that would start at every bit position of the stream
is decoded at once (codes of up to 16 bits, values < 512, from one look-up of the next 16 bits in a table; the
few longer ones a vectorised pass per nesting level); that gives, for every position `p`, where a (gap, sign,
level) triple starting at `p` would end, `next(p)`. The triples actually in the stream are the orbit
`0, next(0), next(next(0)), ...`, found by pointer doubling (about log2(m) passes over the positions); the
gaps' running sum marks the end code, after which only zero padding (< 8 bits) may follow. Every malformed
stream raises `ValueError` naming what and the bit where. CNN4 (389,920 entries), one CPU thread: a stream of
15 % non-zero entries at s = 4 encodes in ~10 ms and decodes in ~50 ms; the worst case (every entry non-zero,
3.1 Mbit) in ~0.1 s and ~0.3 s.
"""

from __future__ import annotations

import numpy as np

_U64 = np.uint64


def _bitlen(x: np.ndarray) -> np.ndarray:
    """bitlen of positive integers below 2**53 (exact through float64's exponent), int64."""
    return np.frexp(np.asarray(x, dtype=np.float64))[1].astype(np.int64)


def omega_length(k: int) -> int:
    """L(k): bits of omega(k), k >= 1."""
    k = int(k)
    if k < 1:
        raise ValueError(f"omega codes integers >= 1, not {k}")
    n = 1
    while k > 1:
        b = k.bit_length()
        n += b
        k = b - 1
    return n


def omega_lengths(x: np.ndarray) -> np.ndarray:
    """L(x) for every entry of `x` (integers >= 1, below 2**53), int64."""
    n = np.asarray(x, dtype=np.int64).copy()
    out = np.ones(n.shape, dtype=np.int64)
    act = np.flatnonzero(n >= 2)
    while act.size:
        b = _bitlen(n[act])
        out[act] += b
        n[act] = b - 1
        act = act[n[act] >= 2]
    return out


def omega_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code, length): omega(x) as an integer read most significant bit first, and its bit count, for every
    entry of `x` (integers >= 1 whose code fits 63 bits: x < 2**40 is plenty)."""
    n = np.asarray(x, dtype=np.int64).copy()
    code = np.zeros(n.shape, dtype=_U64)
    length = np.ones(n.shape, dtype=np.int64)  # the final "0"
    act = np.flatnonzero(n >= 2)
    while act.size:
        b = _bitlen(n[act])
        code[act] |= n[act].astype(_U64) << length[act].astype(_U64)  # prepend the digits of n
        length[act] += b
        n[act] = b - 1
        act = act[n[act] >= 2]
    if length.size and int(length.max()) > 63:
        raise ValueError("omega code longer than 63 bits")
    return code, length


def write_fields(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """Concatenate bit fields (each `lengths[i]` in 1..63 bits, `values[i]` most significant bit first) into
    bytes, MSB-first within each byte, zero-padded: (uint8 array, number of bits). Each field lands in one or
    two 64-bit words; fields are in order, so each word is one `bitwise_or.reduceat` segment."""
    values = np.asarray(values, dtype=_U64)
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    nbits = int(ends[-1]) if ends.size else 0
    words = np.zeros((nbits + 63) // 64 + 1, dtype=_U64)
    if nbits:
        starts = ends - lengths
        word, off = starts >> 6, (starts & 63).astype(_U64)
        aligned = values << (64 - lengths).astype(_U64)   # the field at the top of a 64-bit word
        hi = aligned >> off
        _or_into(words, word, hi)
        spill = np.flatnonzero(off.astype(np.int64) + lengths > 64)   # off >= 1 there
        if spill.size:
            _or_into(words, word[spill] + 1, aligned[spill] << (64 - off[spill]))
    out = words.astype(">u8").view(np.uint8)[: (nbits + 7) // 8]
    return out.copy(), nbits


def _or_into(words: np.ndarray, index: np.ndarray, parts: np.ndarray) -> None:
    """words[index] |= parts, `index` non-decreasing (parts sharing a word are OR-ed together first)."""
    first = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    words[index[first]] |= np.bitwise_or.reduceat(parts, first)


def stream_bound_bits(n: int, levels: int) -> int:
    """The most bits `encode_stream` can produce for `n` entries with levels in 0..`levels` (proof above)."""
    return int(n) * (2 + omega_length(levels)) + 1


def encode_stream(level: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, int]:
    """The sparse stream (module docstring) of integer levels (>= 0) and sign flags: (uint8 bytes, bits)."""
    level = np.asarray(level).reshape(-1)
    n = level.size
    nz = np.flatnonzero(level)
    pos = nz.astype(np.int64) + 1
    gaps = np.diff(pos, prepend=0, append=n + 1)             # m gaps, then the end gap
    gcode, glen = omega_encode(gaps)
    lvl = level[nz].astype(np.int64)
    lcode, llen = omega_encode(lvl)
    sign = np.asarray(negative).reshape(-1)[nz].astype(_U64)
    m = nz.size
    values = np.empty(2 * m + 1, dtype=_U64)
    lengths = np.empty(2 * m + 1, dtype=np.int64)
    values[0:2 * m:2], lengths[0:2 * m:2] = gcode[:m], glen[:m]
    values[1:2 * m:2] = (sign << llen.astype(_U64)) | lcode     # sign bit, then omega(level)
    lengths[1:2 * m:2] = llen + 1
    values[-1], lengths[-1] = gcode[m], glen[m]
    return write_fields(values, lengths)


def _windows(stream: np.ndarray, npos: int) -> np.ndarray:
    """For p in 0..npos-1: the 64 stream bits from bit p on as a uint64 (bit p most significant); bits past
    the stream read as 0."""
    nb = stream.size
    m = nb // 8 + 2
    buf = np.zeros(8 * m + 16, dtype=np.uint8)
    buf[:nb] = stream
    u = np.empty(8 * m + 8, dtype=_U64)   # u[q]: the 8 bytes from byte q, big-endian
    for k in range(8):
        u[k::8][: m + 1] = buf[k: k + 8 * (m + 1)].view(">u8")
    p = np.arange(npos, dtype=np.int64)
    q, r = p >> 3, (p & 7).astype(_U64)
    return (u[q] << r) | (buf[q + 8].astype(_U64) >> (np.uint64(8) - r))


_TABLE_BITS = 16


def _prefix_table() -> tuple[np.ndarray, np.ndarray]:
    """(value, length) of the omega code at the start of every 16-bit prefix, length 0 where the code is longer
    than 16 bits (every value below 512 fits). Built once, at import (a 0.6 MB table)."""
    return _TABLE


def _decode_omega_loop(win: np.ndarray, pos0: np.ndarray, nbits: int, max_group: int) -> tuple[np.ndarray, np.ndarray]:
    """(value, end) of the omega code whose first bit is stream bit `pos0[i]`, `win[i]` holding the 64 bits from
    there, read group by group. end = -1 for a code running past `nbits`, with a group longer than
    `max_group` bits, or longer than the window (with max_group <= 40 no legal code is: at most 52 bits)."""
    npos = win.size
    value = np.zeros(npos, dtype=_U64)
    end = np.full(npos, -1, dtype=np.int64)
    act = np.arange(npos, dtype=np.int64)     # codes still being read
    pos = pos0.astype(np.int64)               # their next bit
    off = np.zeros(npos, dtype=np.int64)      # that bit's offset in the window
    n = np.ones(npos, dtype=_U64)             # their current N
    w = win
    while act.size:
        keep = (pos < nbits) & (off < 64)
        if not keep.all():
            act, pos, off, n, w = act[keep], pos[keep], off[keep], n[keep], w[keep]
        cur = w << off.astype(_U64)
        top = (cur >> np.uint64(63)).astype(bool)
        fin = np.flatnonzero(~top)
        value[act[fin]] = n[fin]
        end[act[fin]] = pos[fin] + 1
        go = np.flatnonzero(top)
        k = n[go].astype(np.int64) + 1
        ok = k <= max_group
        go, k = go[ok], k[ok]
        k_fits = off[go] + k <= 64
        go, k = go[k_fits], k[k_fits]
        act, w, n = act[go], w[go], cur[go] >> (64 - k).astype(_U64)
        pos, off = pos[go] + k, off[go] + k
    end[end > nbits] = -1
    return value, end


def decode_omega_everywhere(win: np.ndarray, nbits: int, max_group: int) -> tuple[np.ndarray, np.ndarray]:
    """(value, end) of the omega code starting at every bit position `p < win.size` (`win[p]`: the 64 bits
    from `p` on): `end` = the position after its last bit, or -1 where no valid code starts (it runs past
    `nbits`, or a group is longer than `max_group` bits, i.e. the value could not be legal). Codes of at most
    16 bits (values < 512) come from one table look-up, longer ones are read group by group."""
    tv, tl = _prefix_table()
    prefix = (win >> np.uint64(64 - _TABLE_BITS)).astype(np.intp)
    length = tl[prefix].astype(np.int64)
    value = tv[prefix]
    p = np.arange(win.size, dtype=np.int64)
    end = np.where(length > 0, p + length, -1)
    long = np.flatnonzero(length == 0)
    if long.size:
        value[long], end[long] = _decode_omega_loop(win[long], long, nbits, max_group)
    if max_group < 63:
        end[value >> np.uint64(max_group) != 0] = -1
    end[end > nbits] = -1
    return value, end


def decode_stream(stream: np.ndarray, n: int, levels: int, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse `encode_stream`'s output for `n` entries with levels in 1..`levels`: (0-based positions, levels,
    negative flags) of the non-zero entries. `stream` must be exactly the stream's bytes: ValueError (naming
    `what` and the bit) for an invalid code, a gap past the end, a level above `levels`, a missing end code,
    bytes after it or non-zero padding."""
    stream = np.ascontiguousarray(stream, dtype=np.uint8).reshape(-1)
    nbits = 8 * stream.size
    if nbits == 0:
        raise ValueError(f"{what}: empty Elias stream (the end-of-vector code is missing)")
    max_group = max(n + 1, levels, 2).bit_length()   # no legal value has more binary digits
    if max_group > 40:
        raise ValueError(f"{what}: {n} entries or {levels} levels is beyond this decoder (< 2**40)")
    win = _windows(stream, nbits + 2)
    value, end = decode_omega_everywhere(win, nbits, max_group)
    # a (gap, sign, level) triple at p: gap code p..eg, sign bit at eg, level code eg+1..nxt
    eg = end[:nbits]
    lv_at = np.where(eg >= 0, eg + 1, nbits + 1)
    nxt = np.where(eg >= 0, end[lv_at], -1)
    sink = nbits
    f = np.empty(nbits + 1, dtype=np.int64)
    f[:nbits] = np.where(nxt >= 0, nxt, sink)
    f[nbits] = sink
    f[f >= nbits] = sink      # a triple that ends exactly at the end has no successor triple either
    # the orbit of 0 under f: X = {f^i(0) : i < 2^k}, doubled each pass (X ∪ f^(2^k)(X)) until it stops growing
    on = np.zeros(nbits + 1, dtype=bool)
    on[0] = True
    jump, count = f, 1
    while True:
        on[jump[np.flatnonzero(on)]] = True
        c = int(np.count_nonzero(on))
        if c == count:
            break
        count, jump = c, jump[jump]
    tok = np.flatnonzero(on[:nbits])   # increasing = stream order
    gaps = value[tok].astype(np.int64)
    at = np.cumsum(gaps)              # 1-based position each token's gap reaches
    i = int(np.searchsorted(at, n + 1))   # the first token reaching past the last entry: the end code
    if i == tok.size:  # the walk fell off: the last token it reached is not a complete, valid triple
        last = int(tok[-1])
        entry = int(at[-2]) if at.size > 1 else 0
        raise ValueError(f"{what}: invalid or truncated Elias code at bit {last} of {nbits} (after entry {entry}); "
                         f"the end-of-vector code is missing")
    p_end = int(tok[i])
    if end[p_end] < 0:
        raise ValueError(f"{what}: invalid or truncated end-of-vector code at bit {p_end}")
    if int(at[i]) != n + 1:
        raise ValueError(f"{what}: the gap at bit {p_end} reaches entry {int(at[i])}, past the {n} entries")
    stop = int(end[p_end])
    if (stop + 7) // 8 != stream.size:
        raise ValueError(f"{what}: {stream.size - (stop + 7) // 8} byte(s) after the end-of-vector code "
                         f"(it ends at bit {stop} of {nbits})")
    if stop % 8 and int(stream[-1]) & ((1 << (8 - stop % 8)) - 1):
        raise ValueError(f"{what}: non-zero padding bits after the end-of-vector code (bit {stop})")
    tok = tok[:i]
    lvl = value[lv_at[tok]].astype(np.int64)
    over = np.flatnonzero(lvl > levels)
    if over.size:
        j = int(over[0])
        raise ValueError(f"{what}: level {int(lvl[j])} at entry {int(at[j]) - 1} (bit {int(lv_at[tok[j]])}) "
                         f"exceeds levels={levels}")
    negative = (win[eg[tok]] >> np.uint64(63)).astype(bool)
    return at[:i] - 1, lvl, negative


def _build_table() -> tuple[np.ndarray, np.ndarray]:
    prefix = np.arange(1 << _TABLE_BITS, dtype=_U64) << np.uint64(64 - _TABLE_BITS)
    value, end = _decode_omega_loop(prefix, np.zeros(prefix.size, dtype=np.int64), _TABLE_BITS, 63)
    return value, np.where(end > 0, end, 0).astype(np.int8)


_TABLE = _build_table()
