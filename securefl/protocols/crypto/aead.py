"""Authenticated encryption of Shamir shares in transit (Bonawitz et al. CCS 2017, ``AE``).

In the ShareKeys round each client encrypts, for every peer, the peer's shares of its two secrets
and hands the ciphertext to the server to relay.  AES-256-GCM with a fresh 96-bit nonce keeps the
shares secret from the server and makes tampering detectable; the associated data binds each
ciphertext to its round, sender and recipient, so the server can neither redirect one to another
client nor replay one from an earlier round.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securefl.errors import RemoteProtocolError
from securefl.protocols.crypto.keys import KEY_BYTES, RandomSource, random_bytes

NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD_BYTES = NONCE_BYTES + TAG_BYTES


def seal(
    key: bytes,
    plaintext: bytes,
    *,
    associated_data: bytes,
    random_source: RandomSource = os.urandom,
) -> bytes:
    """``nonce || AES-256-GCM(key, nonce, plaintext, associated_data)`` with a random nonce."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"AES-256-GCM needs a {KEY_BYTES}-byte key")
    nonce = random_bytes(random_source, NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, *, associated_data: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output; :class:`RemoteProtocolError` if it was tampered
    with, truncated, replayed from another round or meant for another sender/recipient."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"AES-256-GCM needs a {KEY_BYTES}-byte key")
    if len(sealed) < OVERHEAD_BYTES:
        raise RemoteProtocolError(
            f"sealed share of {len(sealed)} bytes is shorter than nonce and tag: rejected"
        )
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
    except InvalidTag as error:
        raise RemoteProtocolError(
            "sealed share failed authentication (tampered, replayed, or for another "
            "round/sender/recipient): rejected"
        ) from error
