import numpy as np
import pytest

from fedmrn_mpi.comm.wire import HEADER_SIZE, WireError, decode_messages, encode_message


def _msg(client=4, round_=9, payload=None, algo=2):
    payload = np.arange(1000, dtype=np.uint8) if payload is None else payload
    return encode_message(algo, round_, client, seed=2**64 - 5, weight=600.0, train_loss=0.25, payload=payload)


def test_round_trip_of_concatenated_messages():
    a, b = _msg(4), _msg(11, payload=np.zeros(0, np.uint8))
    msgs = decode_messages(np.concatenate([a, b]), rank=2, round_=9, algo_id=2, expected_clients={4, 11})
    assert [m.header.client_id for m in msgs] == [4, 11]
    h = msgs[0].header
    assert (h.seed, h.weight, h.train_loss, h.payload_len) == (2**64 - 5, 600.0, 0.25, 1000)
    assert bytes(msgs[0].payload) == bytes(np.arange(1000, dtype=np.uint8))
    assert msgs[1].payload.nbytes == 0 and msgs[0].nbytes == HEADER_SIZE + 1000


def test_flipped_payload_bit_is_rejected_naming_rank_client_round():
    buf = _msg()
    buf[HEADER_SIZE + 17] ^= 0x04
    with pytest.raises(WireError, match=r"rank 3, client 4, round 9: payload CRC32 mismatch"):
        decode_messages(buf, rank=3, round_=9, algo_id=2)


def test_truncated_and_overlong_messages_are_rejected():
    buf = _msg()
    with pytest.raises(WireError, match="runs past the end"):
        decode_messages(buf[:-1], rank=1, round_=9, algo_id=2)
    with pytest.raises(WireError, match="truncated header"):
        decode_messages(np.concatenate([buf, buf[:10]]), rank=1, round_=9, algo_id=2)


def test_wrong_round_algorithm_client_and_magic():
    with pytest.raises(WireError, match="client 4, round 10: message is for round 9"):
        decode_messages(_msg(), rank=1, round_=10, algo_id=2)
    with pytest.raises(WireError, match="algorithm id 1, expected 2"):
        decode_messages(_msg(algo=1), rank=1, round_=9, algo_id=2)
    with pytest.raises(WireError, match="client 4 was not assigned to rank 1"):
        decode_messages(_msg(), rank=1, round_=9, algo_id=2, expected_clients={5})
    buf = _msg()
    buf[0] = ord("X")
    with pytest.raises(WireError, match="bad magic"):
        decode_messages(buf, rank=1, round_=9, algo_id=2)


def test_corrupt_header_field_is_caught_by_header_crc():
    buf = _msg()
    buf[30] ^= 0x01  # inside the weight field: no other check would notice
    with pytest.raises(WireError, match="header checksum"):
        decode_messages(buf, rank=1, round_=9, algo_id=2)


def test_announced_sizes_beyond_the_model_bound_are_refused_before_allocating():
    import numpy as np

    from fedmrn_mpi.comm.transport import TransportError, _check_limits
    _check_limits(np.array([0, 100, 50]), np.array([0, 100, 60]), "uplink")  # within the bounds
    _check_limits(np.array([0, 2**62]), None, "uplink")  # no bound given
    with pytest.raises(TransportError, match="rank 2 announced 61 bytes on the uplink channel, more than the 60"):
        _check_limits(np.array([0, 100, 61]), np.array([0, 100, 60]), "uplink")
    with pytest.raises(TransportError, match="rank 0 announced 9 bytes on the downlink channel"):
        _check_limits(np.array([9]), 8, "downlink")


def test_upload_limits_follow_the_assignment_and_the_payload_bound():
    from types import SimpleNamespace


    from fedmrn_mpi.run.plan import upload_limits
    algo = SimpleNamespace(payload_nbytes=lambda: 1000)
    assert upload_limits(algo, {1: [3, 4], 2: [5]}, 3).tolist() == [0, 2 * (HEADER_SIZE + 1000), HEADER_SIZE + 1000]
