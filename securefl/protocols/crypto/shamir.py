"""t-of-n Shamir secret sharing over a prime field (Shamir, "How to share a secret", CACM 1979).

Bonawitz et al. (CCS 2017) share each client's self-mask seed ``b_u`` and mask private key
``s_u^SK`` among its peers so the server can recover exactly one of them per client after
dropouts.  Both secrets are 256 bits, so we share over the Mersenne prime field
``p = 2**521 - 1``: one field element holds a whole secret, no chunking.  A secret is the constant
term of a random polynomial of degree ``t - 1`` whose other coefficients are uniform in the field
(rejection-sampled from the random source); holder ``x`` gets ``f(x)``.  Any ``t`` shares give the
secret by Lagrange interpolation at zero; any ``t - 1`` are uniformly distributed whatever the
secret (perfect secrecy), which the tests check by brute force over a small field.

The prime is a parameter so tests can enumerate a tiny field; the protocol always uses
:data:`PRIME_521`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache

from securefl.protocols.crypto.keys import RandomSource, random_bytes

PRIME_521 = 2**521 - 1
"""The Mersenne prime 2^521 - 1: a field big enough for 256-bit secrets."""

SHARE_BYTES = (PRIME_521.bit_length() + 7) // 8
"""A share of the 521-bit field encoded big-endian: 66 bytes."""


def random_field_element(random_source: RandomSource, prime: int) -> int:
    """A uniform element of Z_prime by rejection sampling on ``prime.bit_length()`` random bits."""
    bit_length = prime.bit_length()
    num_bytes = (bit_length + 7) // 8
    excess_bits = num_bytes * 8 - bit_length
    while True:
        candidate = int.from_bytes(random_bytes(random_source, num_bytes), "big") >> excess_bits
        if candidate < prime:
            return candidate


def random_polynomial(secret: int, *, threshold: int, random_source: RandomSource, prime: int) -> list[int]:
    """Coefficients ``[secret, a_1, ..., a_{t-1}]`` with uniform ``a_i`` in Z_prime."""
    return [secret] + [random_field_element(random_source, prime) for _ in range(threshold - 1)]


def evaluate_polynomial(coefficients: Sequence[int], x: int, prime: int) -> int:
    """``sum(c_i * x**i) mod prime`` by Horner's rule."""
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % prime
    return value


def split_secret(
    secret: int,
    *,
    threshold: int,
    holders: Sequence[int],
    random_source: RandomSource = os.urandom,
    prime: int = PRIME_521,
) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` for each nonzero field point ``x`` in ``holders``."""
    if not 0 <= secret < prime:
        raise ValueError("secret must be an element of the field")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold {threshold} must be between 1 and {len(holders)} holders")
    if len(set(holders)) != len(holders) or any(not 0 < x < prime for x in holders):
        raise ValueError("holders must be distinct nonzero field elements")
    coefficients = random_polynomial(secret, threshold=threshold, random_source=random_source, prime=prime)
    return {x: evaluate_polynomial(coefficients, x, prime) for x in holders}


@lru_cache(maxsize=1024)
def lagrange_coefficients_at_zero(xs: tuple[int, ...], prime: int) -> tuple[int, ...]:
    """``l_j(0) = prod_{m != j} x_m / (x_m - x_j) mod prime`` for distinct nonzero ``xs``."""
    coefficients = []
    for j, x_j in enumerate(xs):
        numerator = 1
        denominator = 1
        for m, x_m in enumerate(xs):
            if m != j:
                numerator = numerator * x_m % prime
                denominator = denominator * (x_m - x_j) % prime
        coefficients.append(numerator * pow(denominator, -1, prime) % prime)
    return tuple(coefficients)


def reconstruct_secret(shares: Mapping[int, int], *, prime: int = PRIME_521) -> int:
    """The constant term of the unique polynomial of degree < len(shares) through ``shares``.

    Pass exactly ``t`` shares (more are fine if they are consistent; fewer give a value that is
    independent of the secret).
    """
    if not shares:
        raise ValueError("reconstruct_secret needs at least one share")
    xs = tuple(sorted(shares))
    if any(not 0 < x < prime for x in xs):
        raise ValueError("share points must be nonzero field elements")
    coefficients = lagrange_coefficients_at_zero(xs, prime)
    return sum(c * shares[x] for c, x in zip(coefficients, xs, strict=True)) % prime


def share_to_bytes(value: int) -> bytes:
    """A share of the 521-bit field as :data:`SHARE_BYTES` big-endian bytes."""
    return value.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Inverse of :func:`share_to_bytes`; ``ValueError`` if not a field element."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME_521:
        raise ValueError("share is not an element of the field")
    return value
