"""Versioned bytes <-> messages for secure aggregation.  No pickle; one encoding per message.

Layout: ``b"SFSA"``, a version byte (:data:`VERSION`), a type byte, then the fields in
declaration order, big-endian: round ids as u64, client ids and counts as u32, keys, signatures,
shares and ciphertexts at their fixed sizes (a signature that may be absent carries a u8 length),
tuples as a u32 count followed by the items, a masked input as bits (u8), length (u32) and the
packed coordinates.  :func:`decode` checks everything (sizes, counts against the bytes left, sort
order, canonical padding, no trailing bytes) and raises only :class:`~securefl.errors.DecodeError`
on malformed input, whatever the bytes; ``encode(decode(data)) == data`` whenever decoding
succeeds.
"""

from __future__ import annotations

from securefl.errors import ConfigError, DecodeError, LocalProtocolError
from securefl.protocols.crypto.keys import KEY_BYTES, SIGNATURE_BYTES
from securefl.protocols.crypto.shamir import SHARE_BYTES
from securefl.protocols.secagg.messages import (
    COMMITMENT_BYTES,
    SEALED_SHARES_BYTES,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    Message,
    PeerKeys,
    RelayedShares,
    RevealedShare,
    SealedShares,
    ShareKeys,
    SurvivorSignature,
    UnmaskingRequest,
    UnmaskingShares,
)
from securefl.protocols.secagg.params import RoundSetup
from securefl.protocols.secagg.ring import packed_size, trailing_bits_are_zero
from securefl.protocols.wire import ByteReader, ByteWriter

MAGIC = b"SFSA"
VERSION = 2
"""2: the layouts of version 1, but peers of the two versions cannot complete a round (active
mode signs the session hash and the keys digest, and its key directory lists every client that
advertised), so a version-1 message is refused at decoding instead of failing a signature."""

_TYPE_CODES: dict[type, int] = {
    AdvertiseKeys: 1,
    ShareKeys: 2,
    MaskedInput: 3,
    ConsistencySignature: 4,
    UnmaskingShares: 5,
    KeyDirectory: 17,
    RelayedShares: 18,
    ConsistencyRequest: 19,
    UnmaskingRequest: 20,
}
_TYPES_BY_CODE = {code: cls for cls, code in _TYPE_CODES.items()}


class _Writer(ByteWriter):
    def optional_signature(self, signature: bytes) -> None:
        self.u8(len(signature))
        self.raw(signature)

    def ids(self, values: tuple[int, ...]) -> None:
        self.u32(len(values))
        for value in values:
            self.u32(value)


class _Reader(ByteReader):
    def optional_signature(self) -> bytes:
        size = self.u8()
        if size not in (0, SIGNATURE_BYTES):
            raise DecodeError(f"signature length {size} is neither 0 nor {SIGNATURE_BYTES}")
        return self.raw(size)

    def ids(self) -> tuple[int, ...]:
        return tuple(self.u32() for _ in range(self.count(4)))


def encode(message: Message) -> bytes:
    """The wire bytes of ``message``."""
    code = _TYPE_CODES.get(type(message))
    if code is None:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: not a protocol message")
    w = _Writer()
    w.header(magic=MAGIC, version=VERSION, code=code)
    w.u64(message.round_id)
    match message:
        case AdvertiseKeys():
            w.u32(message.sender)
            w.raw(message.channel_public_key)
            w.raw(message.mask_public_key)
            w.optional_signature(message.signature)
        case ShareKeys():
            w.u32(message.sender)
            w.raw(message.self_mask_commitment)
            w.u32(len(message.sealed_shares))
            for record in message.sealed_shares:
                w.u32(record.recipient)
                w.raw(record.ciphertext)
        case MaskedInput():
            w.u32(message.sender)
            w.u8(message.bits)
            w.u32(message.length)
            w.raw(message.packed)
        case ConsistencySignature():
            w.u32(message.sender)
            w.raw(message.signature)
        case UnmaskingShares():
            w.u32(message.sender)
            for records in (message.self_mask_shares, message.mask_key_shares):
                w.u32(len(records))
                for revealed in records:
                    w.u32(revealed.owner)
                    w.raw(revealed.share)
        case KeyDirectory():
            w.u32(message.recipient)
            w.u32(len(message.peers))
            for peer in message.peers:
                w.u32(peer.client_id)
                w.raw(peer.channel_public_key)
                w.raw(peer.mask_public_key)
                w.optional_signature(peer.signature)
        case RelayedShares():
            w.u32(message.recipient)
            w.u32(len(message.sealed_shares))
            for record in message.sealed_shares:
                w.u32(record.sender)
                w.raw(record.ciphertext)
        case ConsistencyRequest():
            w.u32(message.recipient)
            w.ids(message.survivors)
        case UnmaskingRequest():
            w.u32(message.recipient)
            w.ids(message.survivors)
            w.ids(message.dropped)
            w.u32(len(message.signatures))
            for signed in message.signatures:
                w.u32(signed.client_id)
                w.raw(signed.signature)
    return w.bytes()


SETUP_CODE = 32
"""The type byte of an encoded :class:`RoundSetup` (the server's announcement of a round)."""


def encode_setup(setup: RoundSetup) -> bytes:
    """The wire bytes of the server's announcement of a round: every field of ``setup``."""
    w = _Writer()
    w.header(magic=MAGIC, version=VERSION, code=SETUP_CODE)
    w.u64(setup.round_id)
    w.ids(setup.participants)
    w.u32(setup.vector_length)
    w.raw(setup.graph_seed)
    w.u32(len(setup.context))
    w.raw(setup.context)
    return w.bytes()


def decode_setup(data: bytes) -> RoundSetup:
    """The :class:`RoundSetup` encoded in ``data``; :class:`DecodeError` for anything malformed
    (including a setup that :class:`RoundSetup` itself refuses, e.g. unsorted participants)."""
    r = _Reader(data)
    if r.header(magic=MAGIC, version=VERSION, what="secure-aggregation") != SETUP_CODE:
        raise DecodeError("not a round setup")
    round_id = r.u64()
    participants = r.ids()
    vector_length = r.u32()
    graph_seed = r.raw(KEY_BYTES)
    context = r.raw(r.count(1))
    if r.remaining():
        raise DecodeError(f"{r.remaining()} trailing bytes after the round setup")
    try:
        return RoundSetup(round_id, participants, vector_length, graph_seed, context)
    except ConfigError as error:
        raise DecodeError(f"invalid round setup: {error}") from None


def decode(data: bytes) -> Message:
    """The message encoded in ``data``; :class:`DecodeError` for anything malformed."""
    r = _Reader(data)
    code = r.header(magic=MAGIC, version=VERSION, what="secure-aggregation")
    message_type = _TYPES_BY_CODE.get(code)
    if message_type is None:
        raise DecodeError(f"unknown message type {code}")
    try:
        message = _decode_body(message_type, r)
    except LocalProtocolError as error:
        raise DecodeError(f"invalid {message_type.__name__}: {error}") from error
    if r.remaining():
        raise DecodeError(f"{r.remaining()} trailing bytes after {message_type.__name__}")
    return message


def _decode_body(message_type: type, r: _Reader) -> Message:
    round_id = r.u64()
    if message_type is AdvertiseKeys:
        return AdvertiseKeys(round_id, r.u32(), r.raw(KEY_BYTES), r.raw(KEY_BYTES), r.optional_signature())
    if message_type is ShareKeys:
        sender = r.u32()
        commitment = r.raw(COMMITMENT_BYTES)
        records = tuple(
            SealedShares(sender=sender, recipient=r.u32(), ciphertext=r.raw(SEALED_SHARES_BYTES))
            for _ in range(r.count(4 + SEALED_SHARES_BYTES))
        )
        return ShareKeys(round_id, sender, commitment, records)
    if message_type is MaskedInput:
        sender, bits, length = r.u32(), r.u8(), r.u32()
        if not 8 <= bits <= 62:
            raise DecodeError(f"masked input with bits {bits} outside 8..62")
        packed = r.raw(packed_size(length, bits))
        if not trailing_bits_are_zero(packed, bits=bits, length=length):
            raise DecodeError("masked input has non-zero padding bits")
        return MaskedInput(round_id, sender, bits, length, packed)
    if message_type is ConsistencySignature:
        return ConsistencySignature(round_id, r.u32(), r.raw(SIGNATURE_BYTES))
    if message_type is UnmaskingShares:
        sender = r.u32()
        lists = []
        for _ in range(2):
            lists.append(
                tuple(
                    RevealedShare(owner=r.u32(), share=r.raw(SHARE_BYTES))
                    for _ in range(r.count(4 + SHARE_BYTES))
                )
            )
        return UnmaskingShares(round_id, sender, lists[0], lists[1])
    if message_type is KeyDirectory:
        recipient = r.u32()
        peers = tuple(
            PeerKeys(r.u32(), r.raw(KEY_BYTES), r.raw(KEY_BYTES), r.optional_signature())
            for _ in range(r.count(4 + 2 * KEY_BYTES + 1))
        )
        return KeyDirectory(round_id, recipient, peers)
    if message_type is RelayedShares:
        recipient = r.u32()
        records = tuple(
            SealedShares(sender=r.u32(), recipient=recipient, ciphertext=r.raw(SEALED_SHARES_BYTES))
            for _ in range(r.count(4 + SEALED_SHARES_BYTES))
        )
        return RelayedShares(round_id, recipient, records)
    if message_type is ConsistencyRequest:
        return ConsistencyRequest(round_id, r.u32(), r.ids())
    if message_type is UnmaskingRequest:
        recipient = r.u32()
        survivors = r.ids()
        dropped = r.ids()
        signatures = tuple(
            SurvivorSignature(r.u32(), r.raw(SIGNATURE_BYTES)) for _ in range(r.count(4 + SIGNATURE_BYTES))
        )
        return UnmaskingRequest(round_id, recipient, survivors, dropped, signatures)
    raise DecodeError(f"unknown message type {message_type.__name__}")  # pragma: no cover
