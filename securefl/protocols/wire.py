"""Bounded big-endian bytes: the reader and writer under securefl's codecs.

:class:`ByteWriter` appends fixed-size big-endian integers and raw bytes, refusing a value its field
cannot hold with :class:`~securefl.errors.LocalProtocolError`; :class:`ByteReader` reads them back
and raises only :class:`~securefl.errors.DecodeError` when the bytes run out.  Each codec
(:mod:`securefl.protocols.secagg.codec`, :mod:`securefl.fl.codec`) adds its own field kinds on top.
"""

from __future__ import annotations

import struct

from securefl.errors import DecodeError, LocalProtocolError

U8 = struct.Struct(">B")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")


class ByteWriter:
    """Collects the fields of one message, in order."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def pack(self, form: struct.Struct, value: int | float) -> None:
        try:
            self.parts.append(form.pack(value))
        except struct.error as error:
            raise LocalProtocolError(f"cannot encode {value!r}: {error}") from None

    def raw(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    def u8(self, value: int) -> None:
        self.pack(U8, value)

    def u32(self, value: int) -> None:
        self.pack(U32, value)

    def u64(self, value: int) -> None:
        self.pack(U64, value)

    def header(self, *, magic: bytes, version: int, code: int) -> None:
        """A message's magic, version and type byte (what :meth:`ByteReader.header` checks)."""
        self.raw(magic)
        self.u8(version)
        self.u8(code)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class ByteReader:
    """Reads the fields of one message, never past its end."""

    def __init__(self, data: object) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        self.data = memoryview(bytes(data))
        self.offset = 0

    def header(self, *, magic: bytes, version: int, what: str) -> int:
        """Check the magic and version of a ``what`` message; its type byte."""
        if self.raw(len(magic)) != magic:
            raise DecodeError(f"not a securefl {what} message (bad magic)")
        found = self.u8()
        if found != version:
            raise DecodeError(f"unsupported {what} message version {found}: this build speaks {version}")
        return self.u8()

    def remaining(self) -> int:
        return len(self.data) - self.offset

    def raw(self, size: int) -> bytes:
        if size > self.remaining():
            raise DecodeError(f"message truncated: needed {size} more bytes, {self.remaining()} left")
        chunk = bytes(self.data[self.offset : self.offset + size])
        self.offset += size
        return chunk

    def unpack(self, form: struct.Struct) -> int | float:
        value: int | float = form.unpack(self.raw(form.size))[0]
        return value

    def u8(self) -> int:
        return int(self.unpack(U8))

    def u32(self) -> int:
        return int(self.unpack(U32))

    def u64(self) -> int:
        return int(self.unpack(U64))

    def count(self, item_size: int) -> int:
        """A u32 item count, refused when that many items of ``item_size`` bytes cannot fit."""
        count = self.u32()
        if count * item_size > self.remaining():
            raise DecodeError(f"list of {count} items cannot fit in {self.remaining()} bytes")
        return count
