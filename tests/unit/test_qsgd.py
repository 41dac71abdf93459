"""QSGD with buckets and the paper's Elias coding (issue 17): the omega code, the stream's identity, canonical
form and proven bound, unbiasedness with buckets, the payload bound on the wire, corrupted payloads, and the
fixed coding's sizes (bit for bit the pre-bucket wire with bucket_size 0)."""

import dataclasses
import functools
import hashlib
import math
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedmrn_mpi.algorithms import BadUpdateError, elias, make_algorithm, model_spec
from fedmrn_mpi.algorithms.qsgd import QSGD, unit_values
from fedmrn_mpi.comm.wire import HEADER_SIZE, WireError, decode_messages, encode_message
from fedmrn_mpi.config import ConfigError, load_config
from fedmrn_mpi.models import global_state
from fedmrn_mpi.training import LocalTraining, train_client

from algo_helpers import aggregate, algo_setup, TinyNet  # noqa: E402

CPU = torch.device("cpu")
D_CNN4, U_CNN4 = 389_920, 1_920          # masked entries, unmasked float32 values
NB_CNN4 = 1 + 36 + 144 + 576 + 5         # buckets of 512 in the five masked tensors
PROPS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Elias omega codes from the published table (OEIS A281193 / the standard definition)
OMEGA = {1: "0", 2: "100", 3: "110", 4: "101000", 5: "101010", 6: "101100", 7: "101110", 8: "1110000",
         12: "1111000", 16: "10100100000", 21: "10100101010", 100: "1011011001000", 345: "1110001010110010",
         1000: "11100111111010000", 6789: "11110011010100001010", 10000: "111101100111000100000",
         1000000: "1010010011111101000010010000000"}


@functools.cache
def tiny(*overrides):
    torch.manual_seed(0)
    model = TinyNet()
    cfg = load_config(None, ["algorithm.name=qsgd", *overrides])
    spec = model_spec(model)
    state = {k: v.detach().clone() for k, v in global_state(model).items()}
    return cfg, spec, make_algorithm(cfg.algorithm.options, spec, cfg.seed), state


@functools.cache
def cnn4(*overrides):
    return algo_setup("algorithm.name=qsgd", *overrides)


def problem(algo, state, ctx, seed=1, scale=0.01, fill=None):
    """A local problem whose trainables and buffers moved as if trained (or, with `fill(name, shape)`, by a
    chosen update)."""
    prob = algo.begin(state, ctx)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in (*prob.trainables.items(), *prob.buffers.items()):
            t.add_(fill(name, t.shape) if fill is not None and name in algo.spec.masked
                   else torch.randn(t.shape, generator=g) * scale)
    return prob


def ctx_for(cfg, client=7, round_=3, samples=128):
    return LocalTraining(cfg.seed, cfg.lr, 64, 1).context(round_, client, samples, CPU)


def message(algo, payload, client=7, round_=3, rank=1):
    (m,) = decode_messages(encode_message(algo.algo_id, round_, client, 11, 2.0, 0.5, payload), rank=rank,
                           round_=round_, algo_id=algo.algo_id)
    return rank, m


def bits(codes):
    return "".join(codes)


def pack(bitstring):
    """A '0'/'1' string as MSB-first bytes, zero padded."""
    b = np.array([c == "1" for c in bitstring], dtype=np.uint8)
    return np.packbits(b, bitorder="big")


# ------------------------------------------------------------------------------------------- omega code

def test_omega_codes_match_the_published_table():
    code, length = elias.omega_encode(np.array(list(OMEGA)))
    for (k, want), c, n in zip(OMEGA.items(), code, length):
        assert format(int(c), "b").zfill(int(n)) == want, k
        assert elias.omega_length(k) == len(want)
    # the decoder reads them back from one stream: values at their starts
    stream = pack(bits(OMEGA.values()))
    nbits = sum(map(len, OMEGA.values()))
    win = elias._windows(stream, 8 * stream.size + 2)
    value, end = elias.decode_omega_everywhere(win, nbits, 40)
    pos = 0
    for k, want in OMEGA.items():
        assert (int(value[pos]), int(end[pos])) == (k, pos + len(want))
        pos += len(want)


def test_omega_length_is_monotone_and_at_most_3k_minus_2():
    k = np.arange(1, 1 << 17)
    L = elias.omega_lengths(k)
    assert np.all(np.diff(L) >= 0) and np.all(L <= 3 * k - 2)
    assert [elias.omega_length(s) for s in (1, 2, 3, 4, 7, 8, 2**15 - 1)] == [1, 3, 3, 6, 6, 7, 22]
    assert all(elias.omega_length(int(x)) == int(y) for x, y in zip(k[::997], L[::997]))


# ------------------------------------------------------------------------------------------ the stream

def random_levels(seed, n, s, density):
    rng = np.random.default_rng(seed)
    level = rng.integers(1, s + 1, n) * (rng.random(n) < density)
    negative = (rng.random(n) < 0.5) & (level > 0)
    return level, negative


@PROPS
@given(n=st.integers(0, 700), s=st.one_of(st.sampled_from([1, 2, 3, 4]), st.integers(1, 2**15 - 1)),
       density=st.sampled_from([0.0, 0.01, 0.2, 0.7, 1.0]), seed=st.integers(0, 2**31))
@example(n=0, s=1, density=0.0, seed=0)
@example(n=1, s=4, density=1.0, seed=0)
def test_stream_identity_size_and_bound(n, s, density, seed):
    level, negative = random_levels(seed, n, s, density)
    stream, nbits = elias.encode_stream(level, negative)
    assert stream.size == (nbits + 7) // 8 and nbits <= elias.stream_bound_bits(n, s)
    # the exact length: per non-zero entry L(gap) + 1 + L(level), then L(end gap)
    pos = np.flatnonzero(level) + 1
    gaps = np.diff(pos, prepend=0, append=n + 1)
    assert nbits == int(elias.omega_lengths(gaps).sum() + pos.size + elias.omega_lengths(level[pos - 1]).sum())
    got_pos, got_level, got_negative = elias.decode_stream(stream, n, s, "t")
    assert np.array_equal(got_pos, pos - 1)
    assert np.array_equal(got_level, level[pos - 1]) and np.array_equal(got_negative, negative[pos - 1])


@pytest.mark.parametrize("s", [1, 2, 3, 4, 1000])
@pytest.mark.parametrize("n", [1, 7, 512, 5000])
def test_the_bound_is_reached_by_every_entry_non_zero_at_level_s(n, s):
    _, nbits = elias.encode_stream(np.full(n, s), np.ones(n, dtype=bool))
    assert nbits == elias.stream_bound_bits(n, s) == n * (2 + elias.omega_length(s)) + 1
    # any other pattern is shorter (a few adversarial ones: one gap 2, lower levels, alternating)
    for level in (np.r_[np.full(n - 1, s), 0], np.full(n, max(1, s - 1)), np.tile([s, 0], n)[:n]):
        assert elias.encode_stream(level, level > 0)[1] <= nbits


@PROPS
@given(data=st.binary(min_size=1, max_size=80), n=st.integers(0, 120), s=st.sampled_from([1, 2, 3, 4, 300]))
def test_stream_decoder_refuses_or_reads_a_canonical_stream(data, n, s):
    """Random bytes either raise ValueError (never another exception) or are exactly the encoding of what they
    decode to: every stream has one reading and every reading one stream."""
    stream = np.frombuffer(data, np.uint8)
    try:
        pos, level, negative = elias.decode_stream(stream, n, s, "t")
    except ValueError as exc:
        assert str(exc).startswith("t: ")
        return
    full, neg = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    full[pos], neg[pos] = level, negative
    assert np.all(level >= 1) and np.all(level <= s)
    assert np.array_equal(elias.encode_stream(full, neg)[0], stream)


@PROPS
@given(seed=st.integers(0, 2**31), flips=st.lists(st.integers(0, 10**6), min_size=1, max_size=3),
       s=st.sampled_from([1, 2, 4]))
def test_stream_bit_flips_are_refused_or_canonical(seed, flips, s):
    level, negative = random_levels(seed, 300, s, 0.1)
    stream = elias.encode_stream(level, negative)[0].copy()
    for f in flips:
        stream[(f // 8) % stream.size] ^= 1 << (f % 8)
    try:
        pos, lv, ng = elias.decode_stream(stream, 300, s, "t")
    except ValueError:
        return
    full, neg = np.zeros(300, dtype=np.int64), np.zeros(300, dtype=bool)
    full[pos], neg[pos] = lv, ng
    assert np.array_equal(elias.encode_stream(full, neg)[0], stream)


def test_stream_errors_name_what_and_where():
    good = bits([OMEGA[2], "1", OMEGA[1], OMEGA[3]])      # n = 4: entry 2 (index 1) negative, level 1; end gap 3
    assert elias.decode_stream(pack(good), 4, 1, "t")[0].tolist() == [1]
    cases = [  # (stream, n, levels, message)
        (bits([OMEGA[2], "0", OMEGA[2], OMEGA[3]]), 4, 1, r"level 2 at entry 1 \(bit 4\) exceeds levels=1"),
        (bits([OMEGA[2], "0", OMEGA[1], OMEGA[4]]), 4, 1, "the gap at bit 5 reaches entry 6, past the 4 entries"),
        (bits([OMEGA[2], "0", OMEGA[1]]), 4, 1, "invalid or truncated Elias code"),            # no end code
        (good + "0" * 8, 4, 1, r"1 byte\(s\) after the end-of-vector code"),
        (bits([OMEGA[2], "1", OMEGA[1], OMEGA[4]]) + "1", 5, 1,                            # 11 bits + padding
         r"non-zero padding bits after the end-of-vector code \(bit 11\)"),
        ("1" * 40, 4, 1, "invalid or truncated Elias code at bit 0"),                     # groups too long
    ]
    assert elias.decode_stream(pack(cases[4][0][:-1]), 5, 1, "t")[0].tolist() == [1]
    for text, n, s, match in cases:
        with pytest.raises(ValueError, match=f"^t: {match}"):
            elias.decode_stream(pack(text), n, s, "t")
    with pytest.raises(ValueError, match="empty Elias stream"):
        elias.decode_stream(np.zeros(0, np.uint8), 4, 1, "t")


def test_stream_speed_is_vectorised():
    """CNN4-sized streams (389,920 entries): a loop per entry or bucket would take seconds."""
    import time
    level, negative = random_levels(3, D_CNN4, 4, 0.15)
    t0 = time.perf_counter()
    stream, _ = elias.encode_stream(level, negative)
    t1 = time.perf_counter()
    elias.decode_stream(stream, D_CNN4, 4, "t")
    t2 = time.perf_counter()
    assert t1 - t0 < 2.0 and t2 - t1 < 4.0, (t1 - t0, t2 - t1)   # measured ~0.01 s and ~0.05 s


# ------------------------------------------------------------------------------ quantisation, per tensor

@functools.cache
def small_algo(levels, bucket, coding):
    *_, algo, _state, ctx = cnn4(f"algorithm.levels={levels}", f"algorithm.bucket_size={bucket}",
                                f"algorithm.coding={coding}")
    return algo, ctx


@PROPS
@given(d=st.integers(1, 3000), levels=st.sampled_from([1, 2, 3, 4]), bucket=st.sampled_from([0, 1, 7, 64, 512]),
       coding=st.sampled_from(["elias", "fixed"]), seed=st.integers(0, 2**31),
       kind=st.sampled_from(["normal", "heavy", "spikes", "zeros", "constant", "tiny"]))
@example(d=1, levels=1, bucket=512, coding="elias", seed=0, kind="zeros")
@example(d=600, levels=4, bucket=1, coding="elias", seed=0, kind="constant")
def test_encode_decode_identity_levels_and_size(d, levels, bucket, coding, seed, kind):
    algo, ctx = small_algo(levels, bucket, coding)
    g = torch.Generator().manual_seed(seed)
    v = {"normal": lambda: torch.randn(d, generator=g),
         "heavy": lambda: torch.randn(d, generator=g) ** 5,
         "spikes": lambda: torch.where(torch.rand(d, generator=g) < 0.01, 1e3, 1e-3) * torch.randn(d, generator=g),
         "zeros": lambda: torch.randn(d, generator=g) * (torch.rand(d, generator=g) < 0.5),
         "constant": lambda: torch.full((d,), -0.25),
         "tiny": lambda: torch.randn(d, generator=g) * 1e-42}[kind]()
    j = int(seed % 5)
    code, dec = algo.encode_tensor(v, j, dataclasses.replace(ctx, draw_seed=seed))
    # the server reads exactly the client's values from the bytes
    assert torch.equal(algo.decode_tensor(code, j, (d,), 0, CPU), dec)
    # levels: per bucket, |value| / unit is an integer next to r = s |v| / ||v_b||, signs agree
    B = bucket or d
    nb = -(-d // B)
    norms = code[-4 * nb:] if coding == "fixed" else code[: 4 * nb]
    norms = norms.copy().view("<f4")
    per = np.arange(d) // B
    want = np.linalg.norm(np.pad(v.double().numpy(), (0, nb * B - d)).reshape(nb, B), axis=1).astype(np.float32)
    assert np.array_equal(norms, want)
    unit = unit_values(norms, levels)[per].astype(np.float64)
    vd, out = v.double().numpy(), dec.double().numpy()
    ok = unit > 0
    lvl = np.zeros(d)
    lvl[ok] = np.abs(out[ok]) / unit[ok]
    assert np.all(out[~ok] == 0) and np.allclose(lvl, np.round(lvl), atol=1e-4)
    lvl = np.round(lvl)
    r = np.zeros(d)
    r[ok] = levels * np.abs(vd[ok]) / norms.astype(np.float64)[per][ok]
    assert np.all(lvl <= levels) and np.all((lvl >= np.floor(r) - 1e-6 * levels) & (lvl <= np.floor(r) + 1 + 1e-6))
    assert np.all((out == 0) | (np.sign(out) == np.sign(vd)))
    # size: fixed exact, elias = norms + the stream's bytes, within the bound
    if coding == "fixed":
        assert code.size == algo.tensor_nbytes(j, d) == math.ceil((1 + levels.bit_length()) * d / 8) + 4 * nb
    else:
        nz = lvl > 0
        stream_bits = elias.encode_stream(lvl.astype(np.int64), nz & (out < 0))[1]
        assert code.size == 4 * nb + (stream_bits + 7) // 8 <= algo.tensor_nbytes(j, d)


def test_bucket_norms_and_the_last_short_bucket():
    algo, ctx = small_algo(2, 4, "elias")
    v = torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0])   # buckets 4, 4, 2
    code, dec = algo.encode_tensor(v, 0, ctx)
    assert code[:12].view("<f4").tolist() == [5.0, 0.0, pytest.approx(math.sqrt(2), rel=1e-7)]
    assert torch.equal(dec[4:8], torch.zeros(4))       # the zero bucket sends nothing
    assert algo.num_buckets(10) == 3 and algo.bucket_len(10) == 4


@pytest.mark.parametrize("levels", [1, 3])
def test_unbiased_with_buckets(levels):
    """The server's values average to the input, bucket by bucket (buckets of very different scales), and the
    variance is Σ unit² p(1−p) per bucket, within Lemma 3.1's bound for the bucket."""
    algo, ctx = small_algo(levels, 32, "elias")
    d, draws = 96, 2000
    g = torch.Generator().manual_seed(5)
    v = torch.randn(d, generator=g)
    v[32:64] *= 100.0          # a loud bucket next to quiet ones: per-bucket norms keep the quiet ones exact
    v[64:70] = 0.0
    out = np.empty((draws, d))
    for t in range(draws):
        code, _ = algo.encode_tensor(v, 2, dataclasses.replace(ctx, draw_seed=1000 + t))
        out[t] = algo.decode_tensor(code, 2, (d,), 0, CPU).double().numpy()
    norms = np.linalg.norm(v.double().numpy().reshape(3, 32), axis=1).astype(np.float32).astype(np.float64)
    unit = np.repeat(norms / levels, 32)
    # Hoeffding: each draw lies in an interval of width unit, so P(|mean - E| >= t) <= 2 exp(-2 N t² / unit²);
    # t = unit sqrt(ln(2 d / δ) / 2N) holds for all d entries at once with probability >= 1 - δ, δ = 1e-6,
    # plus E's own offset from v (the 2^-24 grid of the uniforms and float32 rounding of r and the values)
    t = unit * math.sqrt(math.log(2 * d / 1e-6) / (2 * draws))
    err = np.abs(out.mean(0) - v.double().numpy())
    assert np.all(err <= t + unit * 2.0**-20), (err / unit).max()
    r = np.abs(v.double().numpy()) / unit
    p = r - np.floor(r)
    for b in range(3):
        sl = slice(32 * b, 32 * b + 32)
        want = float((unit[sl] ** 2 * p[sl] * (1 - p[sl])).sum())
        mse = float(((out[:, sl] - v.double().numpy()[sl]) ** 2).sum(1).mean())
        assert abs(mse - want) <= 0.1 * want
        assert mse <= min(32 / levels**2, math.sqrt(32) / levels) * norms[b] ** 2


def test_rounding_draws_are_the_entries_own_whatever_the_bucket():
    """Entry i of tensor j always uses uniform i of stream (0, j): with one bucket per tensor the levels are the
    pre-bucket ones; buckets change only the norms."""
    a, ctx = small_algo(3, 0, "fixed")
    b, _ = small_algo(3, 0, "elias")
    v = torch.randn(500, generator=torch.Generator().manual_seed(6))
    _, da = a.encode_tensor(v, 1, ctx)
    cb, db = b.encode_tensor(v, 1, ctx)
    assert torch.equal(da, db)
    c, _ = b.encode_tensor(v, 1, dataclasses.replace(ctx, draw_seed=ctx.draw_seed + 1))
    assert not np.array_equal(c, cb)


# ------------------------------------------------------------------------------------ sizes on CNN4

PRE_BUCKET_SHA256 = {  # the wire before issue 17 (fixed width, one norm per tensor), perturbed_problem seed 1
    1: (105_180, "cc36ac76b3d77a8a77492ccbe06f912bc904b5a18661b5e588e220acb1b6a218"),
    2: (153_920, "9ac1dc30a5a110dc1a43f7623b590e3fad79e7d2089f68c90e4be67124e8a1f8"),
    3: (153_920, "90181672988b0c49463efa18b8096889f853556c767a4f4d817594713e22a905"),
}


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_fixed_coding_with_one_bucket_per_tensor_is_the_pre_bucket_wire_bit_for_bit(levels):
    *_, algo, state, ctx = cnn4(f"algorithm.levels={levels}", "algorithm.coding=fixed", "algorithm.bucket_size=0")
    payload = algo.encode(problem(algo, state, ctx), ctx)
    assert (payload.nbytes, hashlib.sha256(payload.tobytes()).hexdigest()) == PRE_BUCKET_SHA256[levels]
    assert payload.nbytes == algo.payload_nbytes()


@pytest.mark.parametrize("levels,fixed,bound", [(1, 108_208, 156_949), (2, 156_948, 254_429), (3, 156_948, 254_429),
                                                (4, 205_688, 400_649)])
def test_cnn4_sizes_of_both_codings(levels, fixed, bound):
    *_, f, _, _ = cnn4(f"algorithm.levels={levels}", "algorithm.coding=fixed")
    *_, e, _, _ = cnn4(f"algorithm.levels={levels}")
    assert f.total_buckets == e.total_buckets == NB_CNN4
    b = 1 + levels.bit_length()
    assert f.payload_nbytes() == fixed == b * D_CNN4 // 8 + 4 * NB_CNN4 + 4 * U_CNN4 and not f.variable_payload
    L = elias.omega_length(levels)
    assert e.payload_nbytes() == bound == math.ceil((D_CNN4 * (2 + L) + 1) / 8) + 4 * NB_CNN4 + 4 * U_CNN4
    assert elias.omega_length(D_CNN4 + 1) == 19 + 5 + 6                   # 389,921 -> 18 -> 4
    assert e.variable_payload and e.min_payload_nbytes() == 4 * NB_CNN4 + 4 + 4 * U_CNN4


@PROPS
@given(d=st.integers(1, 10**6), bucket=st.integers(0, 5000), levels=st.integers(1, 2**15 - 1))
def test_fixed_size_formula(d, bucket, levels):
    algo, _ = small_algo(1, 512, "fixed")
    algo = QSGD(dataclasses.replace(algo.options, levels=levels, bucket_size=bucket), algo.spec, algo.seed)
    b = 1 + math.ceil(math.log2(levels + 1))
    nb = 1 if bucket == 0 else math.ceil(d / bucket)
    assert algo.tensor_nbytes(0, d) == math.ceil(b * d / 8) + 4 * nb


# ------------------------------------------------------------------------------ the payload and the wire

@PROPS
@given(levels=st.sampled_from([1, 2, 3, 4]), bucket=st.sampled_from([0, 1, 2, 5, 512]), seed=st.integers(0, 2**31),
       kind=st.sampled_from(["normal", "equal", "one-hot", "all-max", "zero"]))
@example(levels=4, bucket=1, seed=0, kind="all-max")
def test_payload_within_the_bound_and_decoded_identically(levels, bucket, seed, kind):
    cfg, spec, algo, state = tiny(f"algorithm.levels={levels}", f"algorithm.bucket_size={bucket}")
    ctx = ctx_for(cfg)
    g = torch.Generator().manual_seed(seed)

    def fill(name, shape):
        n = int(np.prod(shape))
        return {"normal": lambda: torch.randn(shape, generator=g) * 0.01,
                "equal": lambda: torch.full(shape, 0.5),
                "one-hot": lambda: torch.zeros(n).index_fill_(0, torch.tensor([seed % n]), 1.0).reshape(shape),
                "all-max": lambda: torch.full(shape, -3.0) if bucket == 1 else torch.randn(shape, generator=g),
                "zero": lambda: torch.zeros(shape)}[kind]()

    prob = problem(algo, state, ctx, seed=seed, fill=fill)
    payload = algo.encode(prob, ctx)
    assert algo.min_payload_nbytes() <= payload.nbytes <= algo.payload_nbytes()
    if kind == "all-max" and bucket == 1:    # every entry its own bucket: all at level s, the worst case
        assert payload.nbytes == algo.payload_nbytes()
    upd = algo.decode(memoryview(payload), 0, state, CPU)
    for j, name in enumerate(spec.masked):
        _, dec = algo.encode_tensor(prob.trainables[name] - prob.extra["w"][name], j, ctx)
        assert torch.equal(upd.deltas[name], dec)
    for name in spec.unmasked:
        want = prob.buffers[name] if name in spec.buffers else prob.trainables[name] - state[name]
        got = upd.buffers[name] if name in spec.buffers else upd.deltas[name]
        assert torch.equal(got, want.detach())


def test_worst_case_payload_on_cnn4_equals_the_bound():
    *_, algo, state, ctx = cnn4("algorithm.levels=2", "algorithm.bucket_size=1")
    prob = problem(algo, state, ctx, fill=lambda name, shape: torch.full(shape, 0.125))
    payload = algo.encode(prob, ctx)
    assert payload.nbytes == algo.payload_nbytes() == 4 * D_CNN4 + math.ceil((5 * D_CNN4 + 1) / 8) + 4 * U_CNN4
    upd = algo.decode(memoryview(payload), 0, state, CPU)
    for j, n in enumerate(algo.spec.masked):   # every entry its own bucket, at level s: the value is its own
        delta = (prob.trainables[n] - prob.extra["w"][n]).detach()
        assert torch.equal(upd.deltas[n], algo.encode_tensor(delta, j, ctx)[1])
        assert torch.allclose(upd.deltas[n], delta, rtol=1e-6, atol=0)


def test_decode_refuses_sizes_outside_the_range_before_allocating():
    *_, algo, state, _ = cnn4()
    hi, lo = algo.payload_nbytes(), algo.min_payload_nbytes()
    huge = np.zeros(64 * 2**20, np.uint8)
    for payload in (huge, huge[: hi + 1], huge[: lo - 1], huge[:0]):
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=rf"qsgd payload is {payload.size} bytes, expected at most {hi} "
                                                 rf"\(and at least {lo}\)"):
                algo.decode(memoryview(payload), 1, state, CPU)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2**20


def _restream(algo, payload, edit):
    """The payload with its Elias stream rebuilt from edited (levels, negatives)."""
    nb, U = algo.total_buckets, algo.spec.num_unmasked
    stream = payload[4 * nb: payload.size - 4 * U]
    pos, lvl, neg = elias.decode_stream(stream, algo.spec.num_masked, algo.levels, "t")
    level, negative = np.zeros(algo.spec.num_masked, np.int64), np.zeros(algo.spec.num_masked, bool)
    level[pos], negative[pos] = lvl, neg
    edit(level, negative, pos)
    return np.concatenate([payload[: 4 * nb], elias.encode_stream(level, negative)[0], payload[payload.size - 4 * U:]])


def _set_norm(k, value):
    def corrupt(algo, p):
        p = p.copy()
        p[4 * k: 4 * k + 4] = np.frombuffer(np.float32(value).tobytes(), np.uint8)
        return p
    return corrupt


def _first_nonzero_bucket_to_zero(algo, p):
    pos = elias.decode_stream(p[4 * algo.total_buckets: p.size - 4 * algo.spec.num_unmasked],
                              algo.spec.num_masked, algo.levels, "t")[0]
    return _set_norm(int(pos[0]) // 512 if pos[0] < 288 else 1 + (int(pos[0]) - 288) // 512, 0.0)(algo, p)


def _level_above(algo, p):
    def edit(level, negative, pos):
        level[pos[3]] = algo.levels + 1
    return _restream(algo, p, edit)


WHERE = "message from rank 1, client 7, round 3: "
STREAM = r"qsgd Elias stream of the masked tensors \(389920 entries\): "


@pytest.mark.parametrize("corrupt,err,match", [
    (lambda a, p: p[:-1], WireError, STREAM + "invalid or truncated"),
    (lambda a, p: np.concatenate([p, np.zeros(1, np.uint8)]), WireError,
     STREAM + r"1 byte\(s\) after the end-of-vector code"),
    (lambda a, p: np.concatenate([p, np.zeros(a.payload_nbytes() - p.size + 1, np.uint8)]), WireError,
     "bytes, expected at most"),
    (lambda a, p: p[: a.min_payload_nbytes() - 1], WireError, "expected at most .* at least"),
    (_set_norm(0, np.nan), BadUpdateError, r"qsgd norm of features.0.weight is nan \(bucket 0\)"),
    (_set_norm(40, np.inf), BadUpdateError, r"qsgd norm of features.8.weight is inf \(bucket 3\)"),
    (_set_norm(2, -1.0), WireError, r"qsgd norm of features.4.weight is -1.0 \(bucket 1\), expected a value >= 0"),
    (_first_nonzero_bucket_to_zero, WireError, "qsgd level in features.0.weight bucket 0, whose norm is 0"),
    (_level_above, WireError, STREAM + "level 2 at entry .* exceeds levels=1"),
])
def test_bad_payload_is_a_clear_error_naming_rank_client_round(corrupt, err, match):
    *_, algo, state, ctx = cnn4()
    payload = algo.encode(problem(algo, state, ctx), ctx)
    aggregate(algo, [message(algo, payload)], state, 1.0, 3, CPU)   # the intact payload is accepted
    where = r"round 3: the update of client 7 \(trained on rank 1\) is not finite: " if err is BadUpdateError \
        else WHERE
    with pytest.raises(err, match=f"{where}.*{match}"):
        aggregate(algo, [message(algo, corrupt(algo, payload))], state, 1.0, 3, CPU)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(levels=st.sampled_from([1, 2, 4]), flips=st.lists(st.integers(0, 10**7), min_size=1, max_size=3),
       cut=st.integers(-40, 40))
def test_corrupted_payloads_are_refused_or_canonical(levels, flips, cut):
    """Bit flips anywhere in the codes and truncation/extension: a WireError/BadUpdateError naming the message
    (never another exception), or a payload that is exactly the encoding of what it decodes to."""
    cfg, spec, algo, state = tiny(f"algorithm.levels={levels}", "algorithm.bucket_size=16")
    ctx = ctx_for(cfg)
    payload = algo.encode(problem(algo, state, ctx), ctx).copy()
    codes = payload.size - 4 * spec.num_unmasked
    for f in flips:
        payload[(f // 8) % codes] ^= 1 << (f % 8)
    if cut < 0:
        payload = payload[:cut]
    elif cut > 0:
        payload = np.concatenate([payload, np.zeros(cut, np.uint8)])
    try:
        aggregate(algo, [message(algo, payload)], state, 1.0, 3, CPU)
    except (WireError, BadUpdateError) as exc:
        assert "client 7" in str(exc) and "round 3" in str(exc)
        return
    nb = algo.total_buckets
    stream = payload[4 * nb: payload.size - 4 * spec.num_unmasked]
    pos, lvl, neg = elias.decode_stream(stream, spec.num_masked, levels, "t")
    level, negative = np.zeros(spec.num_masked, np.int64), np.zeros(spec.num_masked, bool)
    level[pos], negative[pos] = lvl, neg
    assert np.array_equal(elias.encode_stream(level, negative)[0], stream)


def test_upload_limits_use_the_bound():
    from fedmrn_mpi.run.plan import upload_limits
    *_, algo, _, _ = cnn4()
    limits = upload_limits(algo, {1: [3, 5], 2: [8]}, 3)
    assert limits.tolist() == [0, 2 * (HEADER_SIZE + 156_949), HEADER_SIZE + 156_949]


def test_train_client_encode_wire_aggregate_with_elias():
    cfg, model, spec, algo, state, _ = algo_setup("algorithm.name=qsgd")
    local = LocalTraining(cfg.seed, cfg.lr, 64, 1)
    g = torch.Generator().manual_seed(9)
    msgs, sizes = [], []
    for cid in (4, 2):
        ctx = local.context(3, cid, 96, CPU)
        x = torch.randn(ctx.num_samples, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (ctx.num_samples,), generator=g)
        res = train_client(model, algo, state, x, y, ctx, local)
        sizes.append(res.payload.nbytes)
        msgs += [(1, m) for m in decode_messages(
            encode_message(algo.algo_id, 3, cid, res.seed, res.weight, res.train_loss, res.payload),
            rank=1, round_=3, algo_id=algo.algo_id)]
    assert all(algo.min_payload_nbytes() < n < algo.payload_nbytes() for n in sizes) and sizes[0] != sizes[1]
    new = aggregate(algo, msgs, state, 1.0, 3, CPU)
    assert all(torch.isfinite(new[n]).all() for n in spec.names)
    assert all(not torch.equal(new[n], state[n]) for n in spec.masked)


# ------------------------------------------------------------------------------------------------ config

def test_config_keys():
    a = load_config(None, ["algorithm.name=qsgd"]).algorithm.options
    assert (a.bucket_size, a.coding, a.levels) == (512, "elias", 1)
    assert load_config(None, ["algorithm.name=qsgd", "algorithm.bucket_size=0", "algorithm.coding=fixed"])
    with pytest.raises(ConfigError, match="algorithm.coding"):
        load_config(None, ["algorithm.name=qsgd", "algorithm.coding=huffman"])
    with pytest.raises(ConfigError, match="algorithm.bucket_size"):
        load_config(None, ["algorithm.name=qsgd", "algorithm.bucket_size=-1"])
    for key in ("algorithm.bucket_size=64", "algorithm.coding=fixed"):
        with pytest.raises(ConfigError, match="unknown key .*; valid keys under 'algorithm' for signsgd: "):
            load_config(None, ["algorithm.name=signsgd", key])


def test_fixed_coding_refuses_a_level_in_a_zero_norm_bucket():
    *_, algo, state, ctx = cnn4("algorithm.coding=fixed")
    payload = algo.encode(problem(algo, state, ctx), ctx)
    aggregate(algo, [message(algo, payload)], state, 1.0, 3, CPU)
    bad = payload.copy()
    bad[72:76] = 0       # features.0.weight: 288 entries x 2 bits = 72 bytes of planes, then its one norm
    with pytest.raises(WireError, match=WHERE + "qsgd level in features.0.weight bucket 0, whose norm is 0"):
        aggregate(algo, [message(algo, bad)], state, 1.0, 3, CPU)
