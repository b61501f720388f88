"""Versioned bytes <-> round messages (:mod:`securefl.fl.messages`).  No pickle.

Layout: ``b"SFLR"``, a version byte (:data:`VERSION`), a type byte, then the fields in declaration
order, big-endian: round indices as u64, client ids as u32, booleans as one byte (0 or 1),
floats as IEEE-754 binary64, strings as UTF-8 and byte strings behind a u32 length.  A tensor is a
dtype byte (float32 only: the model travels as one flat float32 vector), a u32 element count and
the raw **little-endian** values, so a tensor's bytes are the same on every machine and decode
bit for bit.  The training settings carry a type byte per value (int as i64, float, string,
bool), so an ``int`` never comes back as a ``float``.

:func:`decode` checks everything (sizes against the bytes left, known types, sorted unique setting
names, no trailing bytes) and raises only :class:`~securefl.errors.DecodeError` on malformed
input, whatever the bytes; ``encode(decode(data)) == data`` whenever decoding succeeds.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from securefl.errors import DecodeError, LocalProtocolError
from securefl.fl.messages import (
    AggregationMessage,
    Availability,
    Decline,
    DeclineReason,
    Message,
    PlainContribution,
    Setting,
    TrainRequest,
)
from securefl.protocols.wire import ByteReader, ByteWriter

MAGIC = b"SFLR"
VERSION = 1

_TYPE_CODES: dict[type, int] = {
    Availability: 1,
    TrainRequest: 2,
    AggregationMessage: 3,
    Decline: 4,
    PlainContribution: 5,
}
_TYPES_BY_CODE = {code: kind for kind, code in _TYPE_CODES.items()}

_FLOAT32 = 1
_LITTLE_F32 = np.dtype("<f4")
_SETTING_TAGS: dict[type, int] = {bool: 0, int: 1, float: 2, str: 3}

_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")


class _Writer(ByteWriter):
    def blob(self, data: bytes) -> None:
        self.u32(len(data))
        self.raw(data)

    def text(self, value: str) -> None:
        if not isinstance(value, str):
            raise LocalProtocolError(f"{value!r} is not a string")
        try:
            self.blob(value.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise LocalProtocolError(f"{value!r} is not UTF-8 text: {error.reason}") from None

    def vector(self, tensor: torch.Tensor) -> None:
        values = tensor.detach().cpu().contiguous().numpy().astype(_LITTLE_F32, copy=False)
        self.u8(_FLOAT32)
        self.u32(values.size)
        self.raw(values.tobytes())


class _Reader(ByteReader):
    def f64(self) -> float:
        return float(self.unpack(_F64))

    def flag(self) -> bool:
        value = self.u8()
        if value not in (0, 1):
            raise DecodeError(f"boolean byte {value} is neither 0 nor 1")
        return bool(value)

    def blob(self) -> bytes:
        return self.raw(self.u32())

    def text(self) -> str:
        try:
            return self.blob().decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("a string is not valid UTF-8") from None

    def vector(self) -> torch.Tensor:
        dtype = self.u8()
        if dtype != _FLOAT32:
            raise DecodeError(f"unknown tensor dtype {dtype}: this build speaks float32 only")
        count = self.u32()
        values = np.frombuffer(self.raw(count * _LITTLE_F32.itemsize), dtype=_LITTLE_F32)
        return torch.from_numpy(values.astype(np.float32))


def encode(message: Message) -> bytes:
    """The wire bytes of ``message``."""
    code = _TYPE_CODES.get(type(message))
    if code is None:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: not a round message")
    w = _Writer()
    w.header(magic=MAGIC, version=VERSION, code=code)
    match message:
        case Availability():
            w.u32(message.client_id)
            w.u8(int(message.can_train))
        case TrainRequest():
            w.u64(message.round_index)
            w.u32(message.client_id)
            w.vector(message.params)
            w.u32(len(message.settings))
            for name, value in message.settings:
                w.text(name)
                _write_setting(w, value)
            w.blob(message.aggregation)
        case AggregationMessage():
            w.u64(message.round_index)
            w.u32(message.client_id)
            w.blob(message.payload)
        case Decline():
            w.u64(message.round_index)
            w.u32(message.client_id)
            w.text(message.reason.value)
            w.text(message.detail)
        case PlainContribution():
            w.vector(message.weighted_delta)
            w.pack(_F64, message.weight)
            w.pack(_F64, message.train_loss)
    return w.bytes()


def decode(data: bytes) -> Message:
    """The message encoded in ``data``; :class:`DecodeError` for anything malformed."""
    r = _Reader(data)
    kind = _TYPES_BY_CODE.get(r.header(magic=MAGIC, version=VERSION, what="round"))
    if kind is None:
        raise DecodeError("unknown round-message type")
    try:
        message = _decode_body(kind, r)
    except (LocalProtocolError, ValueError) as error:
        raise DecodeError(f"invalid {kind.__name__}: {error}") from None
    if r.remaining():
        raise DecodeError(f"{r.remaining()} trailing bytes after {kind.__name__}")
    return message


def _decode_body(kind: type, r: _Reader) -> Message:
    if kind is Availability:
        return Availability(r.u32(), r.flag())
    if kind is TrainRequest:
        round_index, client_id, params = r.u64(), r.u32(), r.vector()
        count = r.u32()
        if count * 6 > r.remaining():  # a name (u32 length) and a tag, at least
            raise DecodeError(f"{count} settings cannot fit in {r.remaining()} bytes")
        settings = tuple((r.text(), _read_setting(r)) for _ in range(count))
        return TrainRequest(round_index, client_id, params, settings, r.blob())
    if kind is AggregationMessage:
        return AggregationMessage(r.u64(), r.u32(), r.blob())
    if kind is Decline:
        round_index, client_id, reason = r.u64(), r.u32(), r.text()
        if reason not in DeclineReason.__members__.values():
            raise DecodeError(f"unknown decline reason {reason!r}")
        return Decline(round_index, client_id, DeclineReason(reason), r.text())
    return PlainContribution(r.vector(), r.f64(), r.f64())


def _write_setting(w: _Writer, value: Setting) -> None:
    tag = _SETTING_TAGS.get(type(value))
    if tag is None:
        raise LocalProtocolError(f"setting {value!r} is not an int, float, str or bool")
    w.u8(tag)
    if isinstance(value, bool):
        w.u8(int(value))
    elif isinstance(value, int):
        w.pack(_I64, value)
    elif isinstance(value, float):
        w.pack(_F64, value)
    else:
        w.text(value)


def _read_setting(r: _Reader) -> Setting:
    tag = r.u8()
    if tag == 0:
        return r.flag()
    if tag == 1:
        return int(r.unpack(_I64))
    if tag == 2:
        return r.f64()
    if tag == 3:
        return r.text()
    raise DecodeError(f"unknown setting type {tag}")
