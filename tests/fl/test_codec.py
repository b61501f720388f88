"""The round-message codec (securefl.fl.codec): every message round-trips bit for bit, one encoding
per message, the documented layout (little-endian float32 tensors), and arbitrary or mutated bytes
only ever raise DecodeError."""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl.errors import DecodeError, LocalProtocolError
from securefl.fl import codec
from securefl.fl.codec import MAGIC, VERSION, decode, encode
from securefl.fl.messages import (
    MAX_CLIENT_ID,
    AggregationMessage,
    Availability,
    Decline,
    DeclineReason,
    PlainContribution,
    TrainRequest,
)

MAX_ROUND = 2**64 - 1
HEADER = len(MAGIC) + 2  # magic, version byte, type byte
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- values by their bits --------------------------------------------------------------------------


def f32_from_bits(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def f64_from_bits(bits: int) -> float:
    return struct.unpack(">d", struct.pack(">Q", bits))[0]


def f64_bits(value: float) -> int:
    return struct.unpack(">Q", struct.pack(">d", value))[0]


def vector_from_bits(bits: list[int], strided: bool = False) -> torch.Tensor:
    """A float32 vector holding exactly ``bits`` (no float arithmetic touches them)."""
    raw = np.array(bits, dtype=np.uint32).view(np.float32).copy()
    if not strided:
        return torch.from_numpy(raw)
    spaced = torch.zeros(2 * len(bits), dtype=torch.float32)
    spaced[::2] = torch.from_numpy(raw)  # a copy kernel, no arithmetic
    return spaced[::2]


SPECIAL_F32 = [
    0x00000000,  # +0.0
    0x80000000,  # -0.0
    0x7F800000,  # +inf
    0xFF800000,  # -inf
    0x7FC00000,  # the canonical quiet NaN
    0x7F800001,  # a signalling NaN
    0xFFFFFFFF,  # a negative NaN, every payload bit set
    0x7FA5A5A5,  # a signalling NaN, odd payload
    0x00000001,  # the smallest subnormal
    0x807FFFFF,  # the largest negative subnormal
    0x00800000,  # the smallest normal
    0x7F7FFFFF,  # the largest finite
]
SPECIAL_F64 = [
    0x0000000000000000,
    0x8000000000000000,
    0x7FF0000000000000,
    0xFFF0000000000000,
    0x7FF8000000000000,
    0x7FF0000000000001,  # signalling NaN
    0xFFFFFFFFFFFFFFFF,
    0x0000000000000001,  # smallest subnormal
    0x800FFFFFFFFFFFFF,
]

f32_bits = st.one_of(st.sampled_from(SPECIAL_F32), st.integers(0, 2**32 - 1))
vectors = st.builds(vector_from_bits, st.lists(f32_bits, max_size=48), st.booleans())
any_f64 = st.one_of(
    st.sampled_from(SPECIAL_F64).map(f64_from_bits),
    st.integers(0, 2**64 - 1).map(f64_from_bits),
    st.floats(),
)
ids = st.one_of(st.sampled_from([0, MAX_CLIENT_ID]), st.integers(0, MAX_CLIENT_ID))
rounds = st.one_of(st.sampled_from([0, MAX_ROUND]), st.integers(0, MAX_ROUND))
setting_values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    any_f64,
    st.text(),
    st.sampled_from(["", "é", "学习率", "🔒 clé", "\x00"]),
)
setting_tuples = st.dictionaries(st.text(max_size=12), setting_values, max_size=6).map(
    lambda named: tuple(sorted(named.items()))
)
payloads = st.one_of(st.just(b""), st.binary(max_size=64))
weights = st.one_of(
    st.sampled_from([0.0, -0.0, 5e-324, 1.0, 1.7976931348623157e308]),
    st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
)

availabilities = st.builds(Availability, ids, st.booleans())
train_requests = st.builds(TrainRequest, rounds, ids, vectors, setting_tuples, payloads)
aggregation_messages = st.builds(AggregationMessage, rounds, ids, payloads)
declines = st.builds(Decline, rounds, ids, st.sampled_from(list(DeclineReason)), st.text())
plain_contributions = st.builds(PlainContribution, vectors, weights, any_f64)
messages = st.one_of(availabilities, train_requests, aggregation_messages, declines, plain_contributions)


def assert_same(original, decoded) -> None:
    """Same type and same value, floats and tensors compared by their bits."""
    assert type(decoded) is type(original), (original, decoded)
    if isinstance(original, torch.Tensor):
        assert decoded.dtype == torch.float32 and decoded.dim() == 1
        assert decoded.shape == original.shape
        assert torch.equal(decoded.view(torch.int32), original.view(torch.int32))
    elif isinstance(original, float):
        assert f64_bits(decoded) == f64_bits(original), (original, decoded)
    elif isinstance(original, tuple):
        assert len(decoded) == len(original)
        for want, got in zip(original, decoded, strict=True):
            assert_same(want, got)
    elif dataclasses.is_dataclass(original):
        for field in dataclasses.fields(original):
            assert_same(getattr(original, field.name), getattr(decoded, field.name))
    else:
        assert decoded == original


# -- one fixed sample of every type, for the exhaustive mutations ----------------------------------

SAMPLES = {
    "Availability": Availability(MAX_CLIENT_ID, True),
    "TrainRequest": TrainRequest(
        3,
        7,
        vector_from_bits([0x3F800000, 0x7F800001, 0x80000000]),
        (("batch_size", 32), ("clip", True), ("lr", 0.05), ("optimiser", "sgd-é")),
        b"\x01\x02",
    ),
    "AggregationMessage": AggregationMessage(MAX_ROUND, 0, b"payload"),
    "Decline": Decline(9, 4, DeclineReason.BUDGET_SPENT, "ε spent"),
    "PlainContribution": PlainContribution(vector_from_bits([0x00000001, 0xFF800000]), 2.5, 0.125),
}
ENCODED = {name: encode(message) for name, message in SAMPLES.items()}


def check_decode_contract(data: bytes) -> None:
    try:
        message = decode(data)
    except DecodeError:
        return
    assert encode(message) == data  # whatever decodes is canonical


# -- round trips -----------------------------------------------------------------------------------


@FAST
@given(message=messages)
def test_every_message_roundtrips_bit_for_bit(message):
    data = encode(message)
    decoded = decode(data)
    assert_same(message, decoded)
    assert encode(decoded) == data


@FAST
@given(request=train_requests)
def test_train_request_keeps_tensor_bits_and_setting_types(request):
    decoded = decode(encode(request))
    assert torch.equal(decoded.params.view(torch.int32), request.params.view(torch.int32))
    for (name, value), (got_name, got) in zip(request.settings, decoded.settings, strict=True):
        assert got_name == name
        assert type(got) is type(value)  # a bool stays a bool, an int an int, a float a float
    assert decoded.settings_dict.keys() == request.settings_dict.keys()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_roundtrip_canonically(name):
    decoded = decode(ENCODED[name])
    assert_same(SAMPLES[name], decoded)
    assert encode(decoded) == ENCODED[name]


def test_special_floats_and_every_setting_type_roundtrip():
    specials = vector_from_bits(SPECIAL_F32)
    request = TrainRequest(
        MAX_ROUND,
        MAX_CLIENT_ID,
        specials,
        (
            ("a_true", True),
            ("b_false", False),
            ("c_int", -(2**63)),
            ("d_int", 2**63 - 1),
            ("e_nan", f64_from_bits(0x7FF0000000000001)),
            ("f_inf", -math.inf),
            ("g_neg_zero", -0.0),
            ("h_text", "学习率 🔒"),
            ("i_empty", ""),
            ("j_one", 1),
            ("k_one", 1.0),
        ),
        b"",
    )
    decoded = decode(encode(request))
    assert_same(request, decoded)
    assert [type(v) for _, v in decoded.settings] == [
        bool,
        bool,
        int,
        int,
        float,
        float,
        float,
        str,
        str,
        int,
        float,
    ]
    empty = PlainContribution(torch.zeros(0), 0.0, math.nan)
    assert_same(empty, decode(encode(empty)))


def test_decode_returns_an_independent_writable_tensor():
    data = ENCODED["PlainContribution"]
    first, second = decode(data), decode(data)
    first.weighted_delta.zero_()
    assert_same(SAMPLES["PlainContribution"].weighted_delta, second.weighted_delta)
    assert decode(bytearray(data)).weighted_delta.shape == (2,)
    assert decode(memoryview(data)).weight == 2.5


# -- the documented layout -------------------------------------------------------------------------


def test_layout_of_an_availability():
    assert encode(Availability(7, True)) == MAGIC + bytes([VERSION, 1]) + b"\x00\x00\x00\x07\x01"
    assert encode(Availability(MAX_CLIENT_ID, False))[HEADER:] == b"\xff\xff\xff\xff\x00"


def test_tensors_are_little_endian_float32_at_the_documented_offset():
    values = [1.0, -2.5, 3.4028234663852886e38, 1e-45, -0.0, math.inf, 0.1]
    tensor = torch.tensor(values, dtype=torch.float32)
    reference = b"".join(struct.pack("<f", x) for x in values)

    # PlainContribution: header, then the tensor (dtype byte, u32 count, values), weight, loss
    data = encode(PlainContribution(tensor, 0.5, 1.25))
    assert data[HEADER] == 1  # the float32 dtype byte
    assert data[HEADER + 1 : HEADER + 5] == struct.pack(">I", len(values))
    start = HEADER + 5
    assert data[start : start + 4 * len(values)] == reference
    assert data[start + 4 * len(values) :] == struct.pack(">d", 0.5) + struct.pack(">d", 1.25)

    # TrainRequest: header, u64 round, u32 client id, then the tensor
    data = encode(TrainRequest(2**40 + 1, 258, tensor, (), b""))
    assert data[HEADER : HEADER + 12] == struct.pack(">QI", 2**40 + 1, 258)
    assert data[HEADER + 12] == 1
    assert data[HEADER + 13 : HEADER + 17] == struct.pack(">I", len(values))
    assert data[HEADER + 17 : HEADER + 17 + 4 * len(values)] == reference
    assert data[HEADER + 17 + 4 * len(values) :] == b"\x00\x00\x00\x00" * 2  # no settings, empty blob


def test_a_nan_payload_is_on_the_wire_unchanged():
    bits = [0x7F800001, 0xFFC12345, 0x7FFFFFFF]
    data = encode(PlainContribution(vector_from_bits(bits), 1.0, 0.0))
    assert data[HEADER + 5 : HEADER + 5 + 12] == b"".join(struct.pack("<I", b) for b in bits)


# -- refused on encode -----------------------------------------------------------------------------


def request(**changes):
    fields = {"round_index": 0, "client_id": 0, "params": torch.zeros(2), "settings": (), "aggregation": b""}
    fields.update(changes)
    return TrainRequest(**fields)


@pytest.mark.parametrize(
    "settings_",
    [(("b", 1), ("a", 2)), (("a", 1), ("a", 1)), (("a", 1), ("a", 2.0)), (("é", 1), ("z", 1))],
    ids=["unsorted", "duplicate", "duplicate-name", "unsorted-non-ascii"],
)
def test_unsorted_or_duplicate_setting_names_are_refused(settings_):
    with pytest.raises(LocalProtocolError, match="sorted"):
        encode(request(settings=settings_))


@pytest.mark.parametrize(
    "params",
    [
        torch.zeros(2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float16),
        torch.zeros(2, dtype=torch.bfloat16),
        torch.zeros(2, dtype=torch.int32),
        torch.zeros(2, 2),
        torch.zeros(1, 2),
        torch.tensor(1.0),
        np.zeros(2, dtype=np.float32),
    ],
    ids=["float64", "float16", "bfloat16", "int32", "2-D", "1x2", "0-D", "numpy"],
)
def test_params_must_be_a_flat_float32_tensor(params):
    with pytest.raises(LocalProtocolError, match="float32"):
        encode(request(params=params))
    with pytest.raises(LocalProtocolError, match="float32"):
        encode(PlainContribution(params, 1.0, 0.0))


@pytest.mark.parametrize("bad", [-1, MAX_CLIENT_ID + 1, 2**64, True, 1.0, "1"])
def test_client_ids_out_of_range_are_refused(bad):
    for build in (
        lambda: Availability(bad, True),
        lambda: request(client_id=bad),
        lambda: AggregationMessage(0, bad, b""),
        lambda: Decline(0, bad, DeclineReason.REFUSED),
    ):
        with pytest.raises(LocalProtocolError, match="client id"):
            encode(build())


@pytest.mark.parametrize("bad", [-1, 2**64, False, 0.0])
def test_round_indices_out_of_range_are_refused(bad):
    for build in (
        lambda: request(round_index=bad),
        lambda: AggregationMessage(bad, 0, b""),
        lambda: Decline(bad, 0, DeclineReason.REFUSED),
    ):
        with pytest.raises(LocalProtocolError, match="round index"):
            encode(build())


@pytest.mark.parametrize(
    "value",
    [None, b"bytes", [1], (1,), 1 + 2j, np.float64(0.5), np.int64(3), DeclineReason.REFUSED],
    ids=["None", "bytes", "list", "tuple", "complex", "np.float64", "np.int64", "StrEnum"],
)
def test_a_setting_of_an_unsupported_type_is_refused(value):
    with pytest.raises(LocalProtocolError, match="setting"):
        encode(request(settings=(("x", value),)))


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1])
def test_an_int_setting_outside_i64_is_refused(value):
    with pytest.raises(LocalProtocolError):
        encode(request(settings=(("x", value),)))


@pytest.mark.parametrize("weight", [-1.0, math.inf, math.nan, -5e-324])
def test_a_plain_contribution_needs_a_finite_non_negative_weight(weight):
    with pytest.raises(LocalProtocolError, match="weight"):
        encode(PlainContribution(torch.zeros(1), weight, 0.0))


def test_only_round_messages_encode():
    with pytest.raises(LocalProtocolError, match="not a round message"):
        encode("hello")  # type: ignore[arg-type]


# -- refused on decode -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_other_version_byte_is_refused(name):
    data = ENCODED[name]
    for version in range(256):
        if version == VERSION:
            continue
        with pytest.raises(DecodeError, match="version"):
            decode(data[:4] + bytes([version]) + data[5:])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_unknown_type_bytes_are_refused(name):
    data = ENCODED[name]
    known = set(codec._TYPE_CODES.values())
    for code in range(256):
        if code in known:
            continue
        with pytest.raises(DecodeError, match="unknown round-message type"):
            decode(data[:5] + bytes([code]) + data[6:])


def test_bad_magic_and_non_bytes_are_refused():
    with pytest.raises(DecodeError, match="bad magic"):
        decode(b"SFLX" + ENCODED["Availability"][4:])
    with pytest.raises(DecodeError, match="expected bytes"):
        decode("SFLR")  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        decode(b"")


def test_semantic_checks_on_decode():
    data = ENCODED["PlainContribution"]
    weight_at = len(data) - 16
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(DecodeError, match="weight"):
            decode(data[:weight_at] + struct.pack(">d", bad) + data[weight_at + 8 :])
    with pytest.raises(DecodeError, match="dtype"):
        decode(data[:HEADER] + b"\x02" + data[HEADER + 1 :])
    swapped = TrainRequest(0, 0, torch.zeros(0), (("b", 1), ("c", 2)), b"")
    data = encode(swapped).replace(b"\x01b", b"\x01d")  # names b, c -> d, c: no longer sorted
    with pytest.raises(DecodeError, match="sorted"):
        decode(data)
    declined = encode(Decline(0, 0, DeclineReason.REFUSED, ""))
    with pytest.raises(DecodeError, match="decline reason"):
        decode(declined.replace(b"refused", b"refusal"))


# -- fuzz ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_truncation_is_refused(name):
    data = ENCODED[name]
    for length in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:length])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_trailing_bytes_are_refused(name):
    data = ENCODED[name]
    for extra in (b"\x00", b"\xff", data, bytes(100)):
        with pytest.raises(DecodeError, match="trailing"):
            decode(data + extra)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_single_byte_change_only_raises_decode_error(name):
    data = bytearray(ENCODED[name])
    for position in range(len(data)):
        original = data[position]
        for value in range(256):
            if value != original:
                data[position] = value
                check_decode_contract(bytes(data))
        data[position] = original


@FAST
@given(message=messages, data=st.data())
def test_mutations_of_random_messages_only_raise_decode_error(message, data):
    encoded = encode(message)
    for length in range(len(encoded)):
        with pytest.raises(DecodeError):
            decode(encoded[:length])
    with pytest.raises(DecodeError, match="trailing"):
        decode(encoded + data.draw(st.binary(min_size=1, max_size=16)))
    for _ in range(20):
        flipped = bytearray(encoded)
        position = data.draw(st.integers(0, len(encoded) - 1))
        flipped[position] ^= data.draw(st.integers(1, 255))
        check_decode_contract(bytes(flipped))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_random_bytes_only_raise_decode_error(data):
    check_decode_contract(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=200), code=st.sampled_from([1, 2, 3, 4, 5, 0, 6, 255]))
def test_random_bodies_behind_a_valid_header_only_raise_decode_error(body, code):
    check_decode_contract(MAGIC + bytes([VERSION, code]) + body)


# -- whatever encodes, decodes; whatever does not encode is a LocalProtocolError -------------------


@pytest.mark.parametrize("bad", [2, 1, 0, "yes", None, 0.5], ids=repr)
def test_can_train_must_be_a_bool(bad):
    # Availability(1, 2) once encoded to a boolean byte 2 that decode refuses
    with pytest.raises(LocalProtocolError, match="can_train"):
        encode(Availability(1, bad))


@pytest.mark.parametrize(
    "build",
    [
        lambda: request(settings=(("x", "\ud800"),)),  # a lone surrogate (os.fsdecode of a bad name)
        lambda: request(settings=(("\udcff", 1),)),
        lambda: request(settings=((1, 2),)),
        lambda: Decline(0, 0, DeclineReason.REFUSED, "\udc80"),
        lambda: Decline(0, 0, DeclineReason.REFUSED, 5),
    ],
    ids=["surrogate-value", "surrogate-name", "int-name", "surrogate-detail", "int-detail"],
)
def test_strings_that_are_not_utf8_text_are_refused(build):
    with pytest.raises(LocalProtocolError):
        encode(build())
