"""Cryptographic primitives for secure aggregation: bytes in, bytes out.

- :mod:`.keys`: X25519 key agreement (RFC 7748), HKDF-SHA256 (RFC 5869) with domain-separated
  labels, Ed25519 signatures (RFC 8032) for the active-adversary consistency check.
- :mod:`.aead`: AES-256-GCM sealing bound to associated data (round, sender, recipient).
- :mod:`.prg`: the mask generator, AES-256-CTR keystreams added into ring vectors in place.
- :mod:`.shamir`: t-of-n Shamir secret sharing over the Mersenne prime field 2^521 - 1.

Every random byte comes from a ``random_source`` callable (``os.urandom`` by default); nothing in
this package uses numpy or ``random`` for randomness.
"""

from securefl.protocols.crypto.aead import open_sealed, seal
from securefl.protocols.crypto.keys import (
    KeyPurpose,
    agree,
    derive_key,
    generate_agreement_key,
    generate_signing_key,
    hkdf_sha256,
    public_bytes,
)
from securefl.protocols.crypto.prg import apply_masks, expand_mask, keystream
from securefl.protocols.crypto.shamir import (
    PRIME_521,
    reconstruct_secret,
    split_secret,
)

__all__ = [
    "PRIME_521",
    "KeyPurpose",
    "agree",
    "apply_masks",
    "derive_key",
    "expand_mask",
    "generate_agreement_key",
    "generate_signing_key",
    "hkdf_sha256",
    "keystream",
    "open_sealed",
    "public_bytes",
    "reconstruct_secret",
    "seal",
    "split_secret",
]
