"""The upload message format (docs/design.md#wire-format): a fixed little-endian header followed by the payload.

Header fields: magic, format version, algorithm id, round, client id, 64-bit seed, aggregation weight,
mean local training loss, payload length, CRC32 of the payload, CRC32 of the header bytes before it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"FMRN"
VERSION = 1
_HEADER = struct.Struct("<4sHHIIQddQI")
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size


class WireError(ValueError):
    """A message that failed validation; the text names the rank, client and round."""


@dataclass(frozen=True)
class Header:
    algo_id: int
    round: int
    client_id: int
    seed: int
    weight: float
    train_loss: float
    payload_len: int
    crc32: int = 0


@dataclass(frozen=True)
class Message:
    header: Header
    payload: memoryview  # a view into the received buffer: no copy

    @property
    def nbytes(self) -> int:
        return HEADER_SIZE + self.header.payload_len


def encode_message(algo_id: int, round_: int, client_id: int, seed: int, weight: float,
                   train_loss: float, payload: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """One contiguous uint8 message: header + payload."""
    body = memoryview(np.ascontiguousarray(payload).view(np.uint8).reshape(-1)) if isinstance(payload, np.ndarray) \
        else memoryview(payload).cast("B")
    n = body.nbytes
    head = _HEADER.pack(MAGIC, VERSION, algo_id, round_, client_id, seed, weight, train_loss, n,
                        zlib.crc32(body))
    out = np.empty(HEADER_SIZE + n, dtype=np.uint8)
    out[: _HEADER.size] = np.frombuffer(head, dtype=np.uint8)
    out[_HEADER.size: HEADER_SIZE] = np.frombuffer(_HEADER_CRC.pack(zlib.crc32(head)), dtype=np.uint8)
    out[HEADER_SIZE:] = np.frombuffer(body, dtype=np.uint8)
    return out


def decode_messages(buf: np.ndarray | memoryview, *, rank: int, round_: int, algo_id: int,
                    expected_clients: set[int] | None = None) -> list[Message]:
    """Split a rank's concatenated uploads into validated messages.

    Raises WireError naming the rank, the client (when its header is readable) and the round for a bad magic,
    version, algorithm, round, client id, truncated/overlong length or CRC mismatch.
    """
    view = memoryview(np.asarray(buf, dtype=np.uint8).reshape(-1)) if not isinstance(buf, memoryview) else buf
    out: list[Message] = []
    pos, total = 0, view.nbytes
    while pos < total:
        where = f"message from rank {rank} at byte {pos}, round {round_}"
        if total - pos < HEADER_SIZE:
            raise WireError(f"{where}: truncated header ({total - pos} bytes left, header is {HEADER_SIZE})")
        head = view[pos: pos + _HEADER.size]
        magic, version, aid, rnd, cid, seed, weight, loss, n, crc = _HEADER.unpack(head)
        (hcrc,) = _HEADER_CRC.unpack(view[pos + _HEADER.size: pos + HEADER_SIZE])
        if magic != MAGIC:
            raise WireError(f"{where}: bad magic {magic!r} (expected {MAGIC!r})")
        if hcrc != zlib.crc32(head):
            raise WireError(f"{where}: header checksum mismatch (corrupt header)")
        where = f"message from rank {rank}, client {cid}, round {round_}"
        if version != VERSION:
            raise WireError(f"{where}: format version {version}, this build reads {VERSION}")
        if aid != algo_id:
            raise WireError(f"{where}: algorithm id {aid}, expected {algo_id}")
        if rnd != round_:
            raise WireError(f"{where}: message is for round {rnd}")
        if expected_clients is not None and cid not in expected_clients:
            raise WireError(f"{where}: client {cid} was not assigned to rank {rank} this round")
        start = pos + HEADER_SIZE
        if start + n > total:
            raise WireError(f"{where}: payload length {n} runs past the end of the buffer ({total - start} bytes left)")
        payload = view[start: start + n]
        if zlib.crc32(payload) != crc:
            raise WireError(f"{where}: payload CRC32 mismatch (corrupt payload)")
        out.append(Message(Header(aid, rnd, cid, seed, weight, loss, n, crc), payload))
        pos = start + n
    return out
