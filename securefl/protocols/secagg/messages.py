"""The messages of one secure-aggregation round, one frozen dataclass each.

Rounds of Bonawitz et al. (CCS 2017, figure 4), client -> server / server -> client:

==================  =========================  ===============================================
step                client sends               server answers (to each remaining client)
==================  =========================  ===============================================
ADVERTISE_KEYS      :class:`AdvertiseKeys`     :class:`KeyDirectory` (its neighbours' keys)
SHARE_KEYS          :class:`ShareKeys`         :class:`RelayedShares` (ciphertexts for it)
MASKED_INPUT        :class:`MaskedInput`       :class:`ConsistencyRequest` (active) or
                                               :class:`UnmaskingRequest`
CONSISTENCY_CHECK   :class:`ConsistencySignature`  :class:`UnmaskingRequest` with signatures
UNMASKING           :class:`UnmaskingShares`   (the server outputs the sum)
==================  =========================  ===============================================

Every message has a class attribute ``step``: for a client message the step it belongs to, for a
server message the step in which the recipient answers it.

Constructors check field types and sizes and raise :class:`LocalProtocolError` on misuse; the
codec turns that into :class:`~securefl.errors.DecodeError` for bytes from the wire.  Id lists are
sorted tuples of distinct ids, so every message has exactly one encoding.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from securefl.errors import LocalProtocolError
from securefl.protocols.crypto.aead import OVERHEAD_BYTES
from securefl.protocols.crypto.keys import KEY_BYTES, SIGNATURE_BYTES
from securefl.protocols.crypto.shamir import SHARE_BYTES
from securefl.protocols.secagg.ring import packed_size

COMMITMENT_BYTES = 32
SHARE_PLAINTEXT_BYTES = 2 * SHARE_BYTES
SEALED_SHARES_BYTES = SHARE_PLAINTEXT_BYTES + OVERHEAD_BYTES


class Step(enum.IntEnum):
    """The protocol's steps, in order; each client sends one message per step."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    CONSISTENCY_CHECK = 3
    UNMASKING = 4

    @property
    def label(self) -> str:
        """Lower-case name for logs, metrics and tables (``masked_input``)."""
        return self.name.lower()


def _check_id(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise LocalProtocolError(f"{what} must be a 32-bit unsigned integer, got {value!r}")


def _check_round(value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise LocalProtocolError(f"round_id must be a 64-bit unsigned integer, got {value!r}")


def _check_bytes(value: object, what: str, sizes: tuple[int, ...]) -> None:
    if not isinstance(value, bytes) or len(value) not in sizes:
        raise LocalProtocolError(f"{what} must be bytes of length {' or '.join(map(str, sizes))}")


def _check_sorted_ids(values: object, what: str) -> None:
    if not isinstance(values, tuple):
        raise LocalProtocolError(f"{what} must be a tuple of client ids")
    for value in values:
        _check_id(value, what)
    if any(a >= b for a, b in zip(values, values[1:], strict=False)):
        raise LocalProtocolError(f"{what} must be sorted and distinct")


def _check_records(values: object, record_type: type, what: str, key: str) -> None:
    if not isinstance(values, tuple) or any(not isinstance(v, record_type) for v in values):
        raise LocalProtocolError(f"{what} must be a tuple of {record_type.__name__}")
    keys = [getattr(v, key) for v in values]
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        raise LocalProtocolError(f"{what} must be sorted by {key} and distinct")


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PeerKeys:
    """One client's advertised public keys, as relayed in a :class:`KeyDirectory`."""

    client_id: int
    channel_public_key: bytes
    mask_public_key: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_id(self.client_id, "client_id")
        _check_bytes(self.channel_public_key, "channel_public_key", (KEY_BYTES,))
        _check_bytes(self.mask_public_key, "mask_public_key", (KEY_BYTES,))
        _check_bytes(self.signature, "signature", (0, SIGNATURE_BYTES))


@dataclass(frozen=True)
class SealedShares:
    """``AEAD(k_{sender,recipient}, share of s_sender^SK || share of b_sender)``."""

    sender: int
    recipient: int
    ciphertext: bytes

    def __post_init__(self) -> None:
        _check_id(self.sender, "sender")
        _check_id(self.recipient, "recipient")
        _check_bytes(self.ciphertext, "ciphertext", (SEALED_SHARES_BYTES,))


@dataclass(frozen=True)
class RevealedShare:
    """A Shamir share of ``owner``'s secret, revealed to the server during unmasking."""

    owner: int
    share: bytes

    def __post_init__(self) -> None:
        _check_id(self.owner, "owner")
        _check_bytes(self.share, "share", (SHARE_BYTES,))


@dataclass(frozen=True)
class SurvivorSignature:
    """A client's Ed25519 signature over the survivor set (active-adversary mode)."""

    client_id: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_id(self.client_id, "client_id")
        _check_bytes(self.signature, "signature", (SIGNATURE_BYTES,))


# ---------------------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class AdvertiseKeys:
    """Step 0: a client's two fresh X25519 public keys (channel, mask), signed in active mode."""

    round_id: int
    sender: int
    channel_public_key: bytes
    mask_public_key: bytes
    signature: bytes = b""

    step = Step.ADVERTISE_KEYS

    def __post_init__(self) -> None:
        _check_round(self.round_id)
        _check_id(self.sender, "sender")
        _check_bytes(self.channel_public_key, "channel_public_key", (KEY_BYTES,))
        _check_bytes(self.mask_public_key, "mask_public_key", (KEY_BYTES,))
        _check_bytes(self.signature, "signature", (0, SIGNATURE_BYTES))


@dataclass(frozen=True)
class ShareKeys:
    """Step 1: sealed shares for every neighbour and a commitment to the self-mask seed."""

    round_id: int
    sender: int
    self_mask_commitment: bytes
    sealed_shares: tuple[SealedShares, ...]

    step = Step.SHARE_KEYS

    def __post_init__(self) -> None:
        _check_round(self.round_id)
        _check_id(self.sender, "sender")
        _check_bytes(self.self_mask_commitment, "self_mask_commitment", (COMMITMENT_BYTES,))
        _check_records(self.sealed_shares, SealedShares, "sealed_shares", "recipient")
        if any(record.sender != self.sender for record in self.sealed_shares):
            raise LocalProtocolError("every sealed share of a ShareKeys must be from its sender")


@dataclass(frozen=True)
class MaskedInput:
    """Step 2: ``y_u = x_u + PRG(b_u) + sum_v ±PRG(s_uv) mod 2^bits``, packed at ``bits``."""

    round_id: int
    sender: int
    bits: int
    length: int
    packed: bytes

    step = Step.MASKED_INPUT

    def __post_init__(self) -> None:
        _check_round(self.round_id)
        _check_id(self.sender, "sender")
        if not isinstance(self.bits, int) or not 8 <= self.bits <= 62:
            raise LocalProtocolError(f"bits must be in 8..62, got {self.bits!r}")
        _check_id(self.length, "length")
        if not isinstance(self.packed, bytes) or len(self.packed) != packed_size(self.length, self.bits):
            raise LocalProtocolError("packed must hold exactly ceil(length * bits / 8) bytes")


@dataclass(frozen=True)
class ConsistencySignature:
    """Step 3 (active mode): the client's signature over the survivor set it was shown."""

    round_id: int
    sender: int
    signature: bytes

    step = Step.CONSISTENCY_CHECK

    def __post_init__(self) -> None:
        _check_round(self.round_id)
        _check_id(self.sender, "sender")
        _check_bytes(self.signature, "signature", (SIGNATURE_BYTES,))


@dataclass(frozen=True)
class UnmaskingShares:
    """Step 4: shares of ``b_v`` for survivors and of ``s_v^SK`` for dropped clients, never both
    for one ``v``."""

    round_id: int
    sender: int
    self_mask_shares: tuple[RevealedShare, ...]
    mask_key_shares: tuple[RevealedShare, ...]

    step = Step.UNMASKING

    def __post_init__(self) -> None:
        _check_round(self.round_id)
        _check_id(self.sender, "sender")
        _check_records(self.self_mask_shares, RevealedShare, "self_mask_shares", "owner")
        _check_records(self.mask_key_shares, RevealedShare, "mask_key_shares", "owner")
        both = {r.owner for r in self.self_mask_shares} & {r.owner for r in self.mask_key_shares}
        if both:
            raise LocalProtocolError(
                f"refusing to build a message revealing both shares of clients {sorted(both)}"
            )


# ---------------------------------------------------------------------------- server -> client


@dataclass(frozen=True)
class KeyDirectory:
    """After step 0: the public keys of the recipient's neighbours that advertised keys."""

    round_id: int
    recipient: int
    peers: tuple[PeerKeys, ...]

    step = Step.SHARE_KEYS

    def __post_init__(self) -> None:
        _check_round(self.round_id)
        _check_id(self.recipient, "recipient")
        _check_records(self.peers, PeerKeys, "peers", "client_id")


@dataclass(frozen=True)
class RelayedShares:
    """After step 1: the sealed shares addressed to the recipient by neighbours still present."""

    round_id: int
    recipient: int
    sealed_shares: tuple[SealedShares, ...]

    step = Step.MASKED_INPUT

    def __post_init__(self) -> None:
        _check_round(self.round_id)
        _check_id(self.recipient, "recipient")
        _check_records(self.sealed_shares, SealedShares, "sealed_shares", "sender")


@dataclass(frozen=True)
class ConsistencyRequest:
    """After step 2 (active mode): the survivor set, for every survivor to sign."""

    round_id: int
    recipient: int
    survivors: tuple[int, ...]

    step = Step.CONSISTENCY_CHECK

    def __post_init__(self) -> None:
        _check_round(self.round_id)
        _check_id(self.recipient, "recipient")
        _check_sorted_ids(self.survivors, "survivors")


@dataclass(frozen=True)
class UnmaskingRequest:
    """The survivors (masked input received) and the dropped clients (shared keys, no input),
    plus, in active mode, the survivors' signatures over the survivor set."""

    round_id: int
    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[SurvivorSignature, ...] = ()

    step = Step.UNMASKING

    def __post_init__(self) -> None:
        _check_round(self.round_id)
        _check_id(self.recipient, "recipient")
        _check_sorted_ids(self.survivors, "survivors")
        _check_sorted_ids(self.dropped, "dropped")
        _check_records(self.signatures, SurvivorSignature, "signatures", "client_id")


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskingShares
ServerMessage = KeyDirectory | RelayedShares | ConsistencyRequest | UnmaskingRequest
Message = ClientMessage | ServerMessage


# ---------------------------------------------------------------------------- what is signed / bound

_BINDING_PREFIX = b"securefl/secagg/v1/"


def advertise_signature_payload(
    session: bytes, client_id: int, channel_public_key: bytes, mask_public_key: bytes
) -> bytes:
    """What a client signs (active mode) when it advertises its two public keys: the session
    hash (:func:`~securefl.protocols.secagg.params.session_hash`), its id and the keys."""
    return (
        _BINDING_PREFIX
        + b"advertise-keys\x00"
        + session
        + client_id.to_bytes(4, "big")
        + channel_public_key
        + mask_public_key
    )


def advertised_keys_digest(session: bytes, advertised: Mapping[int, tuple[bytes, bytes]]) -> bytes:
    """SHA-256 over the session hash and every advertised (channel, mask) key pair by client id.

    Each client computes it over the keys of every client that advertised (U1) as it saw them,
    its own included; equal digests mean equal views of U1 and of everyone's keys.
    """
    digest = hashes.Hash(hashes.SHA256())
    digest.update(_BINDING_PREFIX + b"advertised-keys\x00" + session + len(advertised).to_bytes(4, "big"))
    for client in sorted(advertised):
        channel_public_key, mask_public_key = advertised[client]
        digest.update(client.to_bytes(4, "big") + channel_public_key + mask_public_key)
    return digest.finalize()


def survivor_set_payload(session: bytes, keys_digest: bytes, survivors: tuple[int, ...]) -> bytes:
    """What a client signs (active mode) in the ConsistencyCheck: the session hash, the digest of
    the advertised keys it saw (:func:`advertised_keys_digest`) and the survivor set."""
    return (
        _BINDING_PREFIX
        + b"survivor-set\x00"
        + session
        + keys_digest
        + len(survivors).to_bytes(4, "big")
        + b"".join(client.to_bytes(4, "big") for client in survivors)
    )


def share_associated_data(round_id: int, sender: int, recipient: int) -> bytes:
    """AEAD associated data of a sealed share: binds it to its round, sender and recipient."""
    return (
        _BINDING_PREFIX
        + b"sealed-shares\x00"
        + round_id.to_bytes(8, "big")
        + sender.to_bytes(4, "big")
        + recipient.to_bytes(4, "big")
    )


def self_mask_commitment(round_id: int, client_id: int, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed ``b_u``, so the server can check the seed it
    reconstructs from shares (a corrupted share cannot silently produce a wrong sum)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(
        _BINDING_PREFIX
        + b"self-mask-commitment\x00"
        + round_id.to_bytes(8, "big")
        + client_id.to_bytes(4, "big")
        + seed
    )
    return digest.finalize()
