"""Known-answer tests: RFC 7748 (X25519), RFC 5869 (HKDF), SP 800-38A (AES-CTR), and the frozen
vectors of our PRG and Shamir sharing, each also checked against an independent reference."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from secagg_helpers import DeterministicRandom

from securefl.errors import RemoteProtocolError
from securefl.protocols.crypto import keys, prg, shamir
from securefl.protocols.crypto.keys import KeyPurpose

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def test_x25519_rfc7748_section_5_2_scalar_multiplication():
    for case in load("x25519_rfc7748.json")["scalar_multiplication"]:
        private = X25519PrivateKey.from_private_bytes(bytes.fromhex(case["scalar"]))
        shared = keys.agree(private, bytes.fromhex(case["u_coordinate"]))
        assert shared.hex() == case["output"]


def test_x25519_rfc7748_section_6_1_diffie_hellman():
    dh = load("x25519_rfc7748.json")["diffie_hellman"]
    alice = X25519PrivateKey.from_private_bytes(bytes.fromhex(dh["alice_private"]))
    bob = X25519PrivateKey.from_private_bytes(bytes.fromhex(dh["bob_private"]))
    assert keys.public_bytes(alice).hex() == dh["alice_public"]
    assert keys.public_bytes(bob).hex() == dh["bob_public"]
    assert keys.agree(alice, bytes.fromhex(dh["bob_public"])).hex() == dh["shared_secret"]
    assert keys.agree(bob, bytes.fromhex(dh["alice_public"])).hex() == dh["shared_secret"]


def test_x25519_small_order_point_is_rejected():
    with pytest.raises(RemoteProtocolError):
        keys.check_agreement_public_key(bytes(32))  # u = 0 has order 4: all-zero secret
    with pytest.raises(RemoteProtocolError):
        keys.agree(keys.generate_agreement_key(), b"short")


def rfc5869_reference(ikm: bytes, salt: bytes, info: bytes, length: int) -> tuple[bytes, bytes]:
    """HKDF from the RFC's definition with hmac/hashlib (independent of `cryptography`)."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in itertools.count(1):
        if len(okm) >= length:
            break
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return prk, okm[:length]


@pytest.mark.parametrize("case", load("hkdf_sha256_rfc5869.json")["cases"], ids=lambda c: c["name"])
def test_hkdf_sha256_rfc5869(case):
    ikm, salt, info = (bytes.fromhex(case[k]) for k in ("ikm", "salt", "info"))
    okm = keys.hkdf_sha256(ikm, salt=salt or None, info=info, length=case["length"])
    assert okm.hex() == case["okm"]
    prk, reference_okm = rfc5869_reference(ikm, salt, info, case["length"])
    assert prk.hex() == case["prk"] and reference_okm == okm


def test_aes256_ctr_keystream_sp800_38a_f55():
    vector = load("aes256_ctr_sp800_38a.json")
    plaintext, ciphertext = (bytes.fromhex(vector[k]) for k in ("plaintext", "ciphertext"))
    stream = prg.keystream(
        bytes.fromhex(vector["key"]),
        len(plaintext),
        initial_counter_block=bytes.fromhex(vector["initial_counter_block"]),
    )
    assert bytes(a ^ b for a, b in zip(stream, plaintext, strict=True)) == ciphertext


def ctr_reference(key: bytes, num_bytes: int) -> bytes:
    """AES-CTR from its definition: AES-ECB of the big-endian counter blocks 0, 1, 2, ..."""
    blocks = b"".join(i.to_bytes(16, "big") for i in range(-(-num_bytes // 16)))
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return (encryptor.update(blocks) + encryptor.finalize())[:num_bytes]


@pytest.mark.parametrize(
    "case", load("secagg_prg_frozen.json")["cases"], ids=lambda c: f"{c['purpose']}-{c['bits']}"
)
def test_mask_prg_frozen_vectors(case):
    secret = bytes.fromhex(case["secret"])
    purpose = KeyPurpose[case["purpose"]]
    key = keys.derive_key(secret, purpose=purpose, round_id=case["round_id"], parties=tuple(case["parties"]))
    assert key.hex() == case["derived_key"]
    # independent: HKDF from the RFC definition over our documented label
    label = (
        b"securefl/secagg/v1/"
        + purpose.value
        + b"\x00"
        + case["round_id"].to_bytes(8, "big")
        + b"".join(p.to_bytes(4, "big") for p in case["parties"])
    )
    assert rfc5869_reference(secret, b"", label, 32)[1] == key

    bits, length = case["bits"], case["length"]
    dtype = np.uint32 if bits <= 32 else np.uint64
    mask = prg.expand_mask(key, length=length, dtype=dtype) & dtype((1 << bits) - 1)
    assert [int(v) for v in mask[:8]] == case["first_words"]
    assert hashlib.sha256(mask.astype("<u8").tobytes()).hexdigest() == case["mask_sha256"]
    reference = np.frombuffer(
        ctr_reference(key, length * np.dtype(dtype).itemsize), dtype=np.dtype(dtype).newbyteorder("<")
    )
    assert np.array_equal(mask, reference & dtype((1 << bits) - 1))


@pytest.mark.parametrize("length", [1, 7, 65535, 65536 + 3, 200_001])
@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_apply_masks_chunked_equals_whole_masks(length, dtype):
    source = DeterministicRandom(f"apply masks {length} {dtype.__name__}")
    masks = [(source(32), sign) for sign in (1, -1, 1, 1, -1)]
    start = np.frombuffer(source(length * np.dtype(dtype).itemsize), dtype=dtype).copy()
    vector = start.copy()
    prg.apply_masks(vector, masks)
    expected = start.copy()
    for key, sign in masks:
        whole = np.frombuffer(ctr_reference(key, length * np.dtype(dtype).itemsize), dtype=dtype)
        expected = expected + whole if sign == 1 else expected - whole
    assert np.array_equal(vector, expected)


def test_shamir_frozen_vector():
    vector = load("shamir_frozen.json")
    secret = int(vector["secret"], 16)
    threshold = vector["threshold"]
    coefficients = [int(c, 16) for c in vector["coefficients"]]
    shares = {int(x): int(y, 16) for x, y in vector["shares"].items()}
    p = 2**521 - 1
    assert p == shamir.PRIME_521
    # reproducible from the same source ...
    source = DeterministicRandom("shamir frozen vectors")
    assert int.from_bytes(source(32), "big") == secret
    assert (
        shamir.split_secret(secret, threshold=threshold, holders=sorted(shares), random_source=source)
        == shares
    )
    # ... and equal to naive evaluation of the recorded polynomial
    assert coefficients[0] == secret and len(coefficients) == threshold
    for x, y in shares.items():
        assert y == sum(c * pow(x, i, p) for i, c in enumerate(coefficients)) % p
    # every t-subset reconstructs; no (t-1)-subset interpolates to the secret
    for subset in itertools.combinations(sorted(shares), threshold):
        assert shamir.reconstruct_secret({x: shares[x] for x in subset}) == secret
    for subset in itertools.combinations(sorted(shares), threshold - 1):
        assert shamir.reconstruct_secret({x: shares[x] for x in subset}) != secret


@pytest.mark.parametrize("base_dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_apply_masks_from_a_base_vector(base_dtype):
    source = DeterministicRandom(f"apply masks base {base_dtype.__name__}")
    length = 70_001
    masks = [(source(32), 1), (source(32), -1)]
    base = np.frombuffer(source(length * 8), dtype=np.uint64) % np.uint64(np.iinfo(base_dtype).max)
    base = base.astype(base_dtype)
    vector = np.empty(length, dtype=np.uint32)
    prg.apply_masks(vector, masks, base=base)
    expected = base.astype(np.uint32)
    prg.apply_masks(expected, masks)
    assert np.array_equal(vector, expected)
    unmasked = np.empty(length, dtype=np.uint32)
    prg.apply_masks(unmasked, [], base=base)
    assert np.array_equal(unmasked, base.astype(np.uint32))
