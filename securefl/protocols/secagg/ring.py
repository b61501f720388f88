"""Vectors over Z_{2^bits}: word types, reduction, and packing at exactly ``bits`` per value.

Ring vectors live in uint32 words for ``bits <= 32`` and uint64 above; addition wraps modulo the
word size, and since ``2**bits`` divides it, reducing at the end gives the sum in Z_{2^bits}.
Uploads are packed at ``bits`` bits per coordinate (little-endian bit order: coordinate ``i``
occupies bits ``i*bits .. i*bits + bits - 1`` of the byte string read as one little-endian
integer), so a 20-bit vector of length D costs ``ceil(20 D / 8)`` bytes, not 4 or 8 per value.
Packing is vectorised (over periods of lcm(64, bits) bits, or over byte-aligned groups of
``8 / gcd(bits, 8)`` coordinates): there is no Python loop over coordinates.
"""

from __future__ import annotations

import math

import numpy as np

_BYTE_ALIGNED = {8: "<u1", 16: "<u2", 32: "<u4"}


def word_dtype(bits: int) -> np.dtype:
    """uint32 for bits <= 32, else uint64."""
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def reduce_in_place(vector: np.ndarray, bits: int) -> None:
    """``vector %= 2**bits`` for a uint32/uint64 vector (a no-op for bits == word size)."""
    if bits < vector.dtype.itemsize * 8:
        np.bitwise_and(vector, vector.dtype.type((1 << bits) - 1), out=vector)


def packed_size(length: int, bits: int) -> int:
    """Bytes of a packed vector: ``ceil(length * bits / 8)``."""
    return (length * bits + 7) // 8


def _period(bits: int) -> tuple[int, int]:
    """Values and 64-bit words in one period of the packed stream: lcm(64, bits) bits."""
    period_bits = 64 * bits // math.gcd(64, bits)
    return period_bits // bits, period_bits // 64


def _use_periods(bits: int) -> bool:
    # Both layouts write the same bytes; short periods (bits a multiple of 4) are fastest
    # assembled per 64-bit word, long ones (odd bits) per byte-aligned group of 8 / gcd(bits, 8).
    return _period(bits)[0] <= 16


def pack(vector: np.ndarray, bits: int) -> bytes:
    """The coordinates of ``vector`` (each already < 2**bits) packed at ``bits`` bits each."""
    if bits in _BYTE_ALIGNED:
        return vector.astype(_BYTE_ALIGNED[bits], copy=False).tobytes()
    return _pack_periods(vector, bits) if _use_periods(bits) else _pack_byte_groups(vector, bits)


def unpack(data: bytes, *, bits: int, length: int) -> np.ndarray:
    """Inverse of :func:`pack`: ``length`` coordinates as a word-dtype vector.

    For 32-bit packing on a little-endian machine this is a read-only view of ``data`` (no copy).
    """
    if len(data) != packed_size(length, bits):
        raise ValueError(
            f"packed vector of {length} x {bits} bits must be "
            f"{packed_size(length, bits)} bytes, got {len(data)}"
        )
    dtype = word_dtype(bits)
    if bits in _BYTE_ALIGNED:
        values = np.frombuffer(data, dtype=_BYTE_ALIGNED[bits])
        return values if values.dtype == dtype else values.astype(dtype)
    if _use_periods(bits):
        return _unpack_periods(data, bits=bits, length=length)
    return _unpack_byte_groups(data, bits=bits, length=length)


def _pack_periods(vector: np.ndarray, bits: int) -> bytes:
    length = vector.shape[0]
    values_per_period, words_per_period = _period(bits)
    periods = -(-length // values_per_period)
    values = np.empty(periods * values_per_period, dtype=np.uint64)
    values[:length] = vector
    values[length:] = 0
    values = values.reshape(periods, values_per_period)
    words = np.zeros((periods, words_per_period), dtype=np.uint64)
    for position in range(values_per_period):
        word, shift = divmod(position * bits, 64)
        column = values[:, position]
        words[:, word] |= column << np.uint64(shift)
        if shift + bits > 64:
            words[:, word + 1] |= column >> np.uint64(64 - shift)
    return words.astype("<u8", copy=False).tobytes()[: packed_size(length, bits)]


def _unpack_periods(data: bytes, *, bits: int, length: int) -> np.ndarray:
    dtype = word_dtype(bits)
    values_per_period, words_per_period = _period(bits)
    periods = -(-length // values_per_period)
    raw = np.zeros(periods * words_per_period * 8, dtype=np.uint8)
    raw[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    words = raw.view("<u8").astype(np.uint64, copy=False).reshape(periods, words_per_period)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((periods, values_per_period), dtype=dtype)
    for position in range(values_per_period):
        word, shift = divmod(position * bits, 64)
        column = words[:, word] >> np.uint64(shift)
        if shift + bits > 64:
            column |= words[:, word + 1] << np.uint64(64 - shift)
        column &= mask
        out[:, position] = column
    return out.reshape(-1)[:length]


def _layout(bits: int) -> tuple[int, int, int]:
    group = 8 // math.gcd(bits, 8)  # coordinates per byte-aligned group
    group_bytes = group * bits // 8
    group_words = (group_bytes + 7) // 8
    return group, group_bytes, group_words


def _pack_byte_groups(vector: np.ndarray, bits: int) -> bytes:
    length = vector.shape[0]
    group, group_bytes, group_words = _layout(bits)
    groups = -(-length // group)
    values = np.zeros(groups * group, dtype=np.uint64)
    values[:length] = vector
    values = values.reshape(groups, group)
    words = np.zeros((groups, group_words), dtype=np.uint64)
    for position in range(group):
        offset = position * bits
        word, shift = divmod(offset, 64)
        column = values[:, position]
        words[:, word] |= column << np.uint64(shift)
        if shift + bits > 64:
            words[:, word + 1] |= column >> np.uint64(64 - shift)
    as_bytes = words.astype("<u8", copy=False).view(np.uint8).reshape(groups, group_words * 8)
    return as_bytes[:, :group_bytes].tobytes()[: packed_size(length, bits)]


def _unpack_byte_groups(data: bytes, *, bits: int, length: int) -> np.ndarray:
    dtype = word_dtype(bits)
    group, group_bytes, group_words = _layout(bits)
    groups = -(-length // group)
    raw = np.zeros((groups, group_words * 8), dtype=np.uint8)
    padded = np.zeros(groups * group_bytes, dtype=np.uint8)
    padded[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    raw[:, :group_bytes] = padded.reshape(groups, group_bytes)
    words = raw.view("<u8").astype(np.uint64, copy=False)
    mask = np.uint64((1 << bits) - 1)
    values = np.empty((groups, group), dtype=np.uint64)
    for position in range(group):
        offset = position * bits
        word, shift = divmod(offset, 64)
        column = words[:, word] >> np.uint64(shift)
        if shift + bits > 64:
            column |= words[:, word + 1] << np.uint64(64 - shift)
        values[:, position] = column & mask
    return values.reshape(-1)[:length].astype(dtype)


def trailing_bits_are_zero(data: bytes, *, bits: int, length: int) -> bool:
    """Whether the unused high bits of the last byte are zero (canonical packing)."""
    used = (length * bits) % 8
    return not data or used == 0 or data[-1] >> used == 0
