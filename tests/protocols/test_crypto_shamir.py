"""Shamir sharing: reconstruction from every t-subset, perfect secrecy of t-1 shares (brute force
over a small field), share encoding."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_helpers import DeterministicRandom

from securefl.protocols.crypto import shamir


@settings(max_examples=40, deadline=None)
@given(
    secret=st.integers(0, 2**256 - 1),
    threshold=st.integers(1, 5),
    extra=st.integers(0, 3),
    label=st.text(max_size=8),
)
def test_every_t_subset_reconstructs(secret, threshold, extra, label):
    holders = list(range(1, threshold + extra + 1))
    shares = shamir.split_secret(
        secret, threshold=threshold, holders=holders, random_source=DeterministicRandom(label)
    )
    for subset in itertools.combinations(holders, threshold):
        assert shamir.reconstruct_secret({x: shares[x] for x in subset}) == secret


def test_t_minus_one_shares_are_independent_of_the_secret_brute_force():
    """Over Z_11 with t = 3: enumerate every polynomial; the joint distribution of any two shares
    is uniform over Z_11^2 and the same for every secret (perfect secrecy)."""
    p, holders = 11, (2, 5)  # t = 3: polynomials of degree 2
    distributions = []
    for secret in range(p):
        counts = Counter()
        for a1, a2 in itertools.product(range(p), repeat=2):
            coefficients = [secret, a1, a2]
            counts[tuple(shamir.evaluate_polynomial(coefficients, x, p) for x in holders)] += 1
        assert len(counts) == p**2 and set(counts.values()) == {1}
        distributions.append(counts)
    assert all(d == distributions[0] for d in distributions)


def test_random_field_element_is_uniform_and_rejects_out_of_range():
    # p = 11 needs 4 bits per draw: values 11..15 must be rejected, 0..10 equally likely.
    source = DeterministicRandom("uniform field")
    draws = Counter(shamir.random_field_element(source, 11) for _ in range(22_000))
    assert set(draws) == set(range(11))
    assert all(abs(c - 2000) < 250 for c in draws.values())


def test_share_encoding_roundtrip_and_range():
    value = shamir.PRIME_521 - 1
    assert shamir.share_from_bytes(shamir.share_to_bytes(value)) == value
    with pytest.raises(ValueError):
        shamir.share_from_bytes(shamir.PRIME_521.to_bytes(66, "big"))
    with pytest.raises(ValueError):
        shamir.split_secret(5, threshold=4, holders=[1, 2, 3])
    with pytest.raises(ValueError):
        shamir.split_secret(5, threshold=2, holders=[0, 1])
