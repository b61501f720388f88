"""Packing ring vectors at `bits` per value, against a Python big-integer reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.protocols.secagg import ring


def reference_pack(values, bits: int) -> bytes:
    number = sum(int(v) << (i * bits) for i, v in enumerate(values))
    return number.to_bytes((len(values) * bits + 7) // 8, "little")


@settings(max_examples=200, deadline=None)
@given(data=st.data(), bits=st.integers(8, 62), length=st.integers(1, 40))
def test_pack_matches_reference_and_roundtrips(data, bits, length):
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=length, max_size=length))
    vector = np.array(values, dtype=np.uint64).astype(ring.word_dtype(bits))
    packed = ring.pack(vector, bits)
    assert packed == reference_pack(values, bits)
    assert len(packed) == ring.packed_size(length, bits)
    assert ring.trailing_bits_are_zero(packed, bits=bits, length=length)
    unpacked = ring.unpack(packed, bits=bits, length=length)
    assert unpacked.dtype == ring.word_dtype(bits) and unpacked.tolist() == values


def test_uploads_cost_bits_per_value_not_a_machine_word():
    vector = np.zeros(1000, dtype=np.uint32)
    assert len(ring.pack(vector, 20)) == 2500
    assert len(ring.pack(vector, 32)) == 4000
    assert len(ring.pack(np.zeros(1000, dtype=np.uint64), 62)) == 7750


def test_unpack_rejects_wrong_size():
    with pytest.raises(ValueError):
        ring.unpack(b"\x00" * 3, bits=20, length=2)


def test_reduce_in_place():
    vector = np.array([2**32 - 1, 2**20, 5], dtype=np.uint32)
    ring.reduce_in_place(vector, 20)
    assert vector.tolist() == [2**20 - 1, 0, 5]


@pytest.mark.parametrize("bits", [b for b in range(9, 63) if b not in (16, 32)])
def test_both_layouts_write_the_same_bytes(bits):
    rng = np.random.default_rng(bits)
    length = 1000 + bits
    vector = rng.integers(0, 2**bits, size=length, dtype=np.uint64).astype(ring.word_dtype(bits))
    expected = reference_pack(vector.tolist(), bits)
    assert ring._pack_periods(vector, bits) == expected
    assert ring._pack_byte_groups(vector, bits) == expected
    for unpack in (ring._unpack_periods, ring._unpack_byte_groups):
        assert np.array_equal(unpack(expected, bits=bits, length=length), vector)
