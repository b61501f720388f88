"""The versioned codec: every message round-trips, one encoding per message, and arbitrary or
mutated bytes only ever raise DecodeError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secagg_helpers import random_inputs

from securefl.errors import DecodeError, LocalProtocolError
from securefl.protocols.secagg import SecAggParams, decode, encode, run_secure_aggregation
from securefl.protocols.secagg.codec import MAGIC, VERSION
from securefl.protocols.secagg.messages import (
    MaskedInput,
    RevealedShare,
    SurvivorSignature,
    UnmaskingRequest,
    UnmaskingShares,
)


def captured_payloads() -> list[bytes]:
    """One real payload of every message type, from an active-mode round with bits=20."""
    payloads: dict[type, bytes] = {}

    def network(packet):
        payloads.setdefault(type(decode(packet.payload)), packet.payload)
        return [packet.payload]

    params = SecAggParams(num_clients=4, threshold=3, bits=20, active_adversary=True)
    run_secure_aggregation(random_inputs(4, 9, 20, seed=0), params=params, network=network)
    assert len(payloads) == 9
    return list(payloads.values())


PAYLOADS = captured_payloads()


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(decode(p)).__name__)
def test_every_message_roundtrips_canonically(payload):
    message = decode(payload)
    assert encode(message) == payload
    assert decode(encode(message)) == message


def test_header_is_checked():
    payload = PAYLOADS[0]
    with pytest.raises(DecodeError, match="bad magic"):
        decode(b"XXXX" + payload[4:])
    with pytest.raises(DecodeError, match="version"):
        decode(MAGIC + bytes([VERSION + 1]) + payload[5:])
    with pytest.raises(DecodeError, match="unknown message type"):
        decode(MAGIC + bytes([VERSION, 99]) + payload[6:])
    with pytest.raises(DecodeError, match="trailing"):
        decode(payload + b"\x00")


def check_decode_contract(data: bytes) -> None:
    try:
        message = decode(data)
    except DecodeError:
        return
    assert encode(message) == data  # whatever decodes is canonical


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400))
def test_random_bytes_only_raise_decode_error(data):
    check_decode_contract(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), code=st.sampled_from([1, 2, 3, 4, 5, 17, 18, 19, 20]))
def test_random_bodies_behind_a_valid_header_only_raise_decode_error(data, code):
    check_decode_contract(MAGIC + bytes([VERSION, code]) + data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, len(PAYLOADS) - 1),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, 10**6), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_messages_only_raise_decode_error(index, edits):
    data = bytearray(PAYLOADS[index])
    for kind, position, value in edits:
        position %= len(data) + 1
        if kind == "flip" and position < len(data):
            data[position] ^= value or 1
        elif kind == "cut":
            del data[position:]
        else:
            data[position:position] = bytes([value])
        if not data:
            break
    check_decode_contract(bytes(data))


def test_constructors_refuse_invalid_messages():
    with pytest.raises(LocalProtocolError, match="both shares"):
        UnmaskingShares(0, 1, (RevealedShare(2, bytes(66)),), (RevealedShare(2, bytes(66)),))
    with pytest.raises(LocalProtocolError, match="sorted"):
        UnmaskingRequest(0, 1, (3, 2), ())
    with pytest.raises(LocalProtocolError, match="bits"):
        MaskedInput(0, 1, 7, 1, b"\x00")
    with pytest.raises(LocalProtocolError, match="signature"):
        SurvivorSignature(1, b"short")
    with pytest.raises(LocalProtocolError, match="not a protocol message"):
        encode("hello")  # type: ignore[arg-type]
