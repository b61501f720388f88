"""Key agreement, key derivation and signatures for secure aggregation.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS 2017),
use a Diffie-Hellman key agreement composed with a hash (their ``KA.agree``): here X25519
(RFC 7748) followed by HKDF-SHA256 (RFC 5869).  Every derived key is bound by HKDF's ``info`` to
what it is for (:class:`KeyPurpose`), the round and the parties, so a key never serves two roles
and a secret from one round is useless in another.  Ed25519 (RFC 8032) signs what the
active-adversary variant needs signed (advertised keys, the survivor set).

All randomness comes from the ``random_source`` passed in (``os.urandom`` by default).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefl.errors import RemoteProtocolError

RandomSource = Callable[[int], bytes]
"""A callable returning that many cryptographically random bytes (``os.urandom``)."""

KEY_BYTES = 32
SIGNATURE_BYTES = 64
LABEL_PREFIX = b"securefl/secagg/v1/"


class KeyPurpose(enum.Enum):
    """What a derived 256-bit key is for; its value is the HKDF ``info`` label."""

    PAIRWISE_MASK = b"pairwise-mask"
    SELF_MASK = b"self-mask"
    SHARE_ENCRYPTION = b"share-encryption"
    GRAPH_PERMUTATION = b"graph-permutation"


def random_bytes(random_source: RandomSource, length: int) -> bytes:
    """``length`` bytes from ``random_source``, checked to be exactly that long."""
    data = random_source(length)
    if not isinstance(data, bytes | bytearray) or len(data) != length:
        raise TypeError(
            f"random_source must return {length} bytes (like os.urandom), got {type(data).__name__}"
        )
    return bytes(data)


def generate_agreement_key(random_source: RandomSource = os.urandom) -> X25519PrivateKey:
    """A fresh X25519 private key from 32 random bytes (clamped by X25519 itself)."""
    return X25519PrivateKey.from_private_bytes(random_bytes(random_source, KEY_BYTES))


def generate_signing_key(random_source: RandomSource = os.urandom) -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key from a 32-byte random seed."""
    return Ed25519PrivateKey.from_private_bytes(random_bytes(random_source, KEY_BYTES))


def public_bytes(key: X25519PrivateKey | X25519PublicKey | Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32-byte raw public key of a private or public X25519 / Ed25519 key."""
    if isinstance(key, X25519PrivateKey | Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of an X25519 private key (what Shamir shares for dropout recovery)."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def check_agreement_public_key(public: bytes) -> None:
    """Raise :class:`RemoteProtocolError` unless ``public`` is a usable X25519 public key.

    X25519 accepts any 32 bytes as a u-coordinate, but points of small order give the all-zero
    shared secret whatever the private scalar; ``cryptography`` refuses those.  One agreement with
    a fixed private key detects them, since every clamped scalar is a multiple of the cofactor.
    """
    agree(_PROBE_KEY, public)


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The raw 32-byte X25519 shared secret with a peer's public key (RFC 7748, section 6.1).

    Raises :class:`RemoteProtocolError` when the peer's key is malformed or of small order.
    """
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        raise RemoteProtocolError(f"an X25519 public key is {KEY_BYTES} bytes")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as error:
        raise RemoteProtocolError(
            "peer X25519 public key is of small order (all-zero shared secret): rejected"
        ) from error


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 extract-and-expand (RFC 5869) of ``ikm`` to ``length`` bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derivation_label(purpose: KeyPurpose, *, round_id: int, parties: Sequence[int]) -> bytes:
    """HKDF ``info``: prefix, purpose, 64-bit round id and each party as a 32-bit id."""
    if not 0 <= round_id < 2**64:
        raise ValueError(f"round_id {round_id} must fit in 64 bits")
    label = bytearray(LABEL_PREFIX + purpose.value + b"\x00" + round_id.to_bytes(8, "big"))
    for party in parties:
        if not 0 <= party < 2**32:
            raise ValueError(f"party id {party} must fit in 32 bits")
        label += party.to_bytes(4, "big")
    return bytes(label)


def derive_key(
    secret: bytes,
    *,
    purpose: KeyPurpose,
    round_id: int,
    parties: Sequence[int],
    session: bytes | None = None,
) -> bytes:
    """A 256-bit key for ``purpose`` from the full agreed (or random) secret via HKDF-SHA256.

    ``parties`` is order-sensitive: pass them sorted for symmetric keys (pairwise masks) and as
    (sender, recipient) for directional ones (share encryption).  ``session`` (a session hash) is
    HKDF's salt: pairwise masks pass it, so two clients in different sessions (e.g. shown
    different models, whose hash is in the session) derive masks that do not cancel.  ``None`` is
    HKDF's default salt, the derivation the frozen test vectors pin.
    """
    if len(secret) != KEY_BYTES:
        raise ValueError(f"derive_key needs a {KEY_BYTES}-byte secret, got {len(secret)}")
    info = derivation_label(purpose, round_id=round_id, parties=parties)
    return hkdf_sha256(secret, salt=session, info=info, length=KEY_BYTES)


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """An Ed25519 signature (64 bytes) over ``message``."""
    return key.sign(message)


def verify(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under ``public``."""
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


_PROBE_KEY = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
