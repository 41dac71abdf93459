"""Fuzzed upload bytes (issue 11 item 5) through the server's path: `decode_messages` for every rank's buffer, then
`aggregate_round` and each algorithm's `decode` (`run/local_clients.py: decode_uploads`).

For random buffers, header fields changed (with and without a recomputed header CRC), payload bytes changed with
both CRCs recomputed (so they reach the algorithm's decoder), and truncated, extended or repeated buffers, the
outcome is one of: the round decodes (only possible when the payload keeps its exact size; every tensor then has
the model's shape), a `WireError` naming the rank, the client when its header was trusted and the round, or a
`BadUpdateError` for a well-formed but non-finite upload (on_bad_update=abort; with skip the client is left out).
Never an IndexError, struct.error, RuntimeError, OverflowError, MemoryError..., and no decode allocates memory in
proportion to a length read from the message: tracemalloc (which sees numpy's and Python's allocations, not
torch's allocator) keeps the peak under 8x the model's bytes + 1 MiB whatever the header claims."""

from __future__ import annotations

import dataclasses
import re
import struct
import tracemalloc
import zlib
from functools import cache
from types import SimpleNamespace

import numpy as np
import pytest
import hypothesis
import hypothesis.errors
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedmrn_mpi.algorithms import make_algorithm, model_spec
from fedmrn_mpi.algorithms.aggregate import BadUpdateError
from fedmrn_mpi.comm.wire import HEADER_SIZE, WireError, encode_message
from fedmrn_mpi.config import load_config
from fedmrn_mpi.models import global_state
from fedmrn_mpi.run.local_clients import decode_uploads
from fedmrn_mpi.training import LocalTraining

from algo_helpers import TinyNet  # noqa: E402

CPU = torch.device("cpu")
RANK, ROUND, CLIENTS = 2, 3, (7, 9)
# the header as docs/design.md#wire-format writes it (independent of wire.py's own struct)
HEAD = struct.Struct("<4sHHIIQddQI")
FIELDS = ("magic", "version", "algo", "round", "client", "seed", "weight", "loss", "payload_len", "crc")
assert HEAD.size + 4 == HEADER_SIZE == 56

ALGORITHMS = {
    "fedmrn-binary": ["algorithm.name=fedmrn"],
    "fedmrn-signed": ["algorithm.name=fedmrn", "algorithm.mask=signed"],
    "fedavg": ["algorithm.name=fedavg"],
    "signsgd": ["algorithm.name=signsgd"],
    "qsgd": ["algorithm.name=qsgd", "algorithm.levels=3"],
    "topk-indices": ["algorithm.name=topk"],                           # k index fields (fraction 0.01)
    "topk-bitmap": ["algorithm.name=topk", "algorithm.fraction=0.3"],  # d-bit bitmaps
    "eden": ["algorithm.name=eden"],
    "fedpm": ["algorithm.name=fedpm"],
    "fedbat": ["algorithm.name=fedbat"],
}


@dataclasses.dataclass
class Case:
    name: str
    cfg: object
    algo: object
    state: dict
    buf: np.ndarray         # the uploads of CLIENTS, back to back, as rank RANK sends them
    offsets: list[int]      # where each message starts
    model_bytes: int


def event(text: str) -> None:
    """hypothesis.event inside a hypothesis test (statistics), nothing outside."""
    try:
        hypothesis.event(text)
    except hypothesis.errors.InvalidArgument:
        pass


@cache
def case(name: str) -> Case:
    torch.manual_seed(0)
    model = TinyNet()
    spec = model_spec(model)
    cfg = load_config(None, ALGORITHMS[name])
    algo = make_algorithm(cfg.algorithm.options, spec, cfg.seed)
    state = {k: v.detach().clone() for k, v in global_state(model).items()}
    msgs = []
    for cid in CLIENTS:
        ctx = LocalTraining(cfg.seed, cfg.lr, 64, 1).context(ROUND, cid, 64 * 2, CPU)
        prob = algo.begin(state, ctx)
        g = torch.Generator().manual_seed(cid)
        with torch.no_grad():  # as if trained
            for t in (*prob.trainables.values(), *prob.buffers.values()):
                t.add_(torch.randn(t.shape, generator=g) * 0.01)
        msgs.append(encode_message(algo.algo_id, ROUND, cid, ctx.noise_seed, 64.0 * (cid - 5), 0.5, algo.encode(prob, ctx)))
    offsets = [0, msgs[0].size]
    return Case(name, cfg, algo, state, np.concatenate(msgs), offsets,
                4 * sum(t.numel() for t in state.values()))


def server_decode(c: Case, buf: np.ndarray, on_bad_update: str = "abort", relay: bool = False):
    """rank 0's `decode_uploads` on one rank's buffer (or, `relay`, on the relayed buffer of all clients)."""
    su = SimpleNamespace(algo=c.algo, device=CPU)
    plan = SimpleNamespace(round=ROUND, sampled=np.array(CLIENTS), assignment={RANK: list(CLIENTS)})
    cfg = dataclasses.replace(c.cfg, on_bad_update=on_bad_update)
    return decode_uploads(su, [memoryview(buf)], plan, c.state, cfg, ranks=None if relay else [RANK])


def check(c: Case, buf: np.ndarray, on_bad_update: str = "abort", relay: bool = False) -> str:
    """Run the server's decode under tracemalloc and check the property; returns the outcome's kind."""
    buf = np.ascontiguousarray(buf, dtype=np.uint8)
    rank = 0 if relay else RANK
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        try:
            messages, new_state, skipped = server_decode(c, buf, on_bad_update, relay)
            outcome = "decoded"
        except WireError as exc:
            text = str(exc)
            outcome = "WireError"
        except BadUpdateError as exc:
            text = str(exc)
            outcome = "BadUpdateError"
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 8 * c.model_bytes + 2**20, f"{c.name}: decoding {buf.size} bytes allocated {peak} bytes"
    if outcome == "decoded":
        assert sorted(m.header.client_id for _, m in messages) == list(CLIENTS)
        assert {n: tuple(t.shape) for n, t in new_state.items()} == {n: tuple(t.shape) for n, t in c.state.items()}
        assert all(t.dtype == c.state[n].dtype for n, t in new_state.items())
        if on_bad_update == "abort":
            assert not skipped
        event(f"decoded{' (skipped a client)' if skipped else ''}")
        return outcome
    assert "\n" not in text and f"round {ROUND}" in text, text
    if outcome == "BadUpdateError":
        assert on_bad_update == "abort" and re.search(rf"client \d+ \(trained on rank {rank}\)", text), text
    elif re.match(r"round \d+: (uploads missing|duplicate uploads) for clients \[\d", text):
        # found after all buffers are read: names the round, the clients and the rank(s) behind them
        assert re.search(r"\((trained on|sent by) rank\(s\) \[\d", text), text
    else:
        assert re.match(rf"message from rank {rank}(, client \d+| at byte \d+), round {ROUND}: ", text), text
    event(f"{outcome}: {re.sub(r'[-0-9.e+]+|nan|inf', 'N', text.split(': ', 1)[1])[:48]}")
    return outcome


FUZZ = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
names = st.sampled_from(sorted(ALGORITHMS))
policies = st.sampled_from(["abort", "skip"])


def test_the_valid_uploads_decode_for_every_algorithm():
    for name in ALGORITHMS:
        c = case(name)
        assert check(c, c.buf) == "decoded"
        assert check(c, c.buf, relay=True) == "decoded"


# ------------------------------------------------------------------------------------------ (a) random bytes


@FUZZ
@given(name=names, data=st.binary(max_size=400), prefix=st.booleans(), relay=st.booleans())
@example(name="fedavg", data=b"", prefix=False, relay=False)
@example(name="fedavg", data=b"FMRN" + b"\x00" * 60, prefix=False, relay=False)
def test_random_bytes(name, data, prefix, relay):
    c = case(name)
    # also random bytes after one valid message: the second "header" is garbage
    buf = np.concatenate([c.buf[: c.offsets[1]], np.frombuffer(data, np.uint8)]) if prefix else \
        np.frombuffer(data, np.uint8)
    check(c, buf, relay=relay)


# ----------------------------------------------------------------------------------------- (b) the header


def _header(buf: np.ndarray, pos: int) -> list:
    return list(HEAD.unpack_from(buf, pos))


def _put_header(buf: np.ndarray, pos: int, fields: list, *, header_crc: bool = True) -> None:
    HEAD.pack_into(buf, pos, *fields)
    if header_crc:
        struct.pack_into("<I", buf, pos + HEAD.size, zlib.crc32(bytes(buf[pos: pos + HEAD.size])))


U32, U64 = 2**32 - 1, 2**64 - 1
field_values = {
    "magic": st.binary(min_size=4, max_size=4),
    "version": st.one_of(st.integers(0, 2**16 - 1), st.just(2)),
    "algo": st.integers(0, 2**16 - 1),
    "round": st.one_of(st.integers(0, U32), st.sampled_from([ROUND - 1, ROUND + 1, U32])),
    "client": st.one_of(st.integers(0, U32), st.sampled_from([*CLIENTS, 8, U32])),
    "seed": st.integers(0, U64),
    "weight": st.one_of(st.floats(), st.sampled_from([0.0, -0.0, -1.0, float("nan"), float("inf"), 5e-324, 1e308])),
    "loss": st.one_of(st.floats(), st.sampled_from([float("nan"), float("inf"), -float("inf")])),
    "payload_len": st.one_of(st.integers(0, U64), st.integers(0, 2000),
                             st.sampled_from([U64, 2**63, 2**63 - 1, 2**40, 2**32, 2**31])),
    "crc": st.integers(0, U32),
}


@pytest.mark.parametrize("length", [U64, 2**63, 2**40, 2**31])
def test_a_huge_payload_length_is_refused_without_allocating(length):
    c = case("topk-indices")
    buf = c.buf.copy()
    fields = _header(buf, 0)
    fields[FIELDS.index("payload_len")] = length
    _put_header(buf, 0, fields)
    assert check(c, buf) == "WireError"
    with pytest.raises(WireError, match=rf"rank {RANK}, client 7, round {ROUND}: payload length {length} runs past"):
        server_decode(c, buf)


@FUZZ
@given(name=names, which=st.integers(0, 1), data=st.data(), header_crc=st.booleans(), policy=policies)
def test_changed_header_fields(name, which, data, header_crc, policy):
    c = case(name)
    buf = c.buf.copy()
    pos = c.offsets[which]
    fields = _header(buf, pos)
    keys = data.draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True), label="fields")
    changes = {k: data.draw(field_values[k], label=k) for k in keys}
    for k, v in changes.items():
        fields[FIELDS.index(k)] = v
    _put_header(buf, pos, fields, header_crc=header_crc)
    got = check(c, buf, policy)
    if not header_crc and bytes(buf[pos: pos + HEAD.size]) != bytes(c.buf[pos: pos + HEAD.size]):
        assert got == "WireError"  # a changed header never passes its CRC


@FUZZ
@given(name=names, flips=st.lists(st.tuples(st.integers(0, 2 * HEADER_SIZE - 1), st.integers(0, 7)), min_size=1,
                                  max_size=4))
def test_bit_flips_in_headers(name, flips):
    c = case(name)
    buf = c.buf.copy()
    for off, bit in flips:
        pos = c.offsets[off // HEADER_SIZE] + off % HEADER_SIZE
        buf[pos] ^= 1 << bit
    assert check(c, buf) == ("decoded" if np.array_equal(buf, c.buf) else "WireError")


# -------------------------------------------------------------------------- (c) payloads that reach decode


def _reseal(buf: np.ndarray, pos: int, payload: np.ndarray) -> np.ndarray:
    """Message at `pos` with a new payload: payload length, payload CRC and header CRC recomputed."""
    fields = _header(buf, pos)
    end = pos + HEADER_SIZE + fields[8]
    fields[8], fields[9] = payload.size, zlib.crc32(payload.tobytes())
    head = np.zeros(HEADER_SIZE, np.uint8)
    _put_header(head, 0, fields)
    return np.concatenate([buf[:pos], head, payload, buf[end:]])


special_f32 = st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, -0.0, 0.0, 1e-45, 3.4e38, 1e-3])
edits = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("byte"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("f32"), st.integers(0, 10**6), special_f32),   # a float slot (aligned from the end)
    st.tuples(st.just("fill"), st.integers(0, 10**6), st.sampled_from([0, 255])),
)


@FUZZ
@given(name=names, which=st.integers(0, 1), ops=st.lists(edits, min_size=1, max_size=4), policy=policies,
       relay=st.booleans())
@example(name="topk-indices", which=0, ops=[("fill", 0, 255)], policy="abort", relay=False)  # indices out of range
@example(name="topk-bitmap", which=1, ops=[("fill", 0, 0)], policy="abort", relay=False)     # empty bitmap
@example(name="qsgd", which=0, ops=[("fill", 0, 255)], policy="abort", relay=False)          # levels > s
@example(name="eden", which=0, ops=[("f32", 0, -1.0)], policy="skip", relay=False)
@example(name="fedbat", which=0, ops=[("f32", 10**6, float("nan"))], policy="skip", relay=False)
def test_payload_changes_reach_the_decoder(name, which, ops, policy, relay):
    c = case(name)
    pos = c.offsets[which]
    n = _header(c.buf, pos)[8]
    payload = c.buf[pos + HEADER_SIZE: pos + HEADER_SIZE + n].copy()
    for kind, off, arg in ops:
        if kind == "flip":
            payload[off % n] ^= 1 << arg
        elif kind == "byte":
            payload[off % n] = arg
        elif kind == "fill":  # a run of up to 32 bytes
            payload[off % n: off % n + 32] = arg
        else:
            slot = n - 4 * (1 + off % (n // 4))
            payload[slot: slot + 4] = np.frombuffer(np.float32(arg).tobytes(), np.uint8)
    check(c, _reseal(c.buf, pos, payload), policy, relay)


@FUZZ
@given(name=names, which=st.integers(0, 1), cut=st.integers(0, 10**6), extra=st.binary(max_size=64),
       mode=st.sampled_from(["truncate", "extend", "both"]))
@example(name="fedmrn-binary", which=0, cut=0, extra=b"", mode="truncate")  # an empty payload
def test_payloads_of_the_wrong_size(name, which, cut, extra, mode):
    # resealed with the new length, so only the algorithm's own size check can refuse it
    c = case(name)
    pos = c.offsets[which]
    n = _header(c.buf, pos)[8]
    payload = c.buf[pos + HEADER_SIZE: pos + HEADER_SIZE + n]
    if mode in ("truncate", "both"):
        payload = payload[: cut % n]
    if mode in ("extend", "both") or len(payload) == n:
        payload = np.concatenate([payload, np.frombuffer(extra or b"\x00", np.uint8)])
    assert check(c, _reseal(c.buf, pos, payload)) == "WireError"


# ------------------------------------------------------------------------- (d) truncated / extended buffers


@FUZZ
@given(name=names, cut=st.integers(0, 10**6), tail=st.binary(max_size=80),
       mode=st.sampled_from(["truncate", "extend", "repeat", "swap", "one"]))
def test_truncated_extended_and_repeated_buffers(name, cut, tail, mode):
    c = case(name)
    first, second = c.buf[: c.offsets[1]], c.buf[c.offsets[1]:]
    buf = {"truncate": c.buf[: cut % c.buf.size],
           "extend": np.concatenate([c.buf, np.frombuffer(tail or b"\x00", np.uint8)]),
           "repeat": np.concatenate([c.buf, first]),
           "swap": np.concatenate([second, first]),   # client order does not matter
           "one": second}[mode]
    got = check(c, buf)
    assert got == ("decoded" if mode == "swap" else "WireError")


# ------------------------------------------------------------------- decoders check sizes before allocating


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_decode_refuses_a_wrong_size_before_allocating(name):
    """Each algorithm's `decode` compares the payload size with what the model implies first: a 64 MiB payload
    is refused without a copy of it (tracemalloc sees numpy's and Python's allocations)."""
    c = case(name)
    n = c.algo.payload_nbytes()
    huge = np.zeros(64 * 2**20, np.uint8)  # calloc'd: costs nothing until touched
    # a variable-size payload (qsgd's Elias coding): n is the bound, and sizes below it down to the smallest
    # well-formed payload are legal
    variable = c.algo.variable_payload
    for payload in (huge, huge[: n + 1], huge[:0]) if variable else (huge, huge[: n + 1], huge[: n - 1], huge[:0]):
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=rf"{payload.size} bytes, expected {'at most ' if variable else ''}{n}"):
                c.algo.decode(memoryview(payload), 1, c.state, CPU)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2**20, (name, payload.size, peak)
