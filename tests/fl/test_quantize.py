"""Fixed-point encoding for secure aggregation: no wrap, bounded error, unbiased rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import ConfigError, NonFiniteUpdateError
from securefl.fl.quantize import FixedPointCodec, level_for


@given(bits=st.integers(8, 62), clients=st.integers(1, 10_000))
def test_level_is_the_largest_that_cannot_wrap(bits, clients):
    if clients * 2 >= 2**bits:
        with pytest.raises(ConfigError, match="raise `secagg.bits`"):
            level_for(bits=bits, num_clients=clients)
        return
    level = level_for(bits=bits, num_clients=clients)
    assert clients * 2 * level < 2**bits  # the sum of n maximal encodings fits
    assert clients * 2 * (level + 1) >= 2**bits - clients  # and L is (nearly) maximal


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(12, 40),
    clients=st.integers(1, 30),
    seed=st.integers(0, 2**31),
    scale=st.floats(1e-3, 1e3),
)
def test_decoded_sum_is_within_one_step_per_client(bits, clients, seed, scale):
    generator = torch.Generator().manual_seed(seed)
    bounds = torch.full((50,), scale, dtype=torch.float64)
    codec = FixedPointCodec.for_ring(bounds, bits=bits, num_clients=clients)
    vectors = [
        (torch.rand(50, generator=generator, dtype=torch.float64) * 3 - 1.5) * scale for _ in range(clients)
    ]
    encoded = [codec.encode(v, generator=generator) for v in vectors]
    for e in encoded:
        assert e.dtype == np.uint64 and int(e.max()) <= codec.max_value
    exact_sums = np.stack(encoded).astype(object).sum(axis=0)  # Python ints: no wrap possible
    assert max(exact_sums) < 2**bits
    total = np.stack(encoded).sum(axis=0) % np.uint64(2**bits)
    decoded = codec.decode_sum(total, count=clients)
    reference = sum(v.clamp(-scale, scale) for v in vectors)
    assert torch.all((decoded - reference).abs() <= clients * codec.step + 1e-9 * scale)


def test_stochastic_rounding_is_unbiased():
    codec = FixedPointCodec.for_ring(torch.ones(1, dtype=torch.float64), bits=8, num_clients=4)
    value = torch.tensor([0.3 * codec.step.item() + 0.25])  # between two grid points
    generator = torch.Generator().manual_seed(1)
    draws = [codec.decode_sum(codec.encode(value, generator=generator), count=1).item() for _ in range(4000)]
    # Each draw is one of two grid points; their mean converges to the value (std ~ step/2/sqrt(n)).
    assert len(set(np.round(draws, 12))) == 2
    assert abs(np.mean(draws) - value.item()) < 4 * codec.step.item() / 2 / np.sqrt(4000)


def test_non_positive_bounds_are_refused():
    with pytest.raises(ConfigError):
        FixedPointCodec.for_ring(torch.tensor([1.0, 0.0]), bits=32, num_clients=3)


@pytest.mark.parametrize("bits", [53, 54, 62])
def test_values_at_the_clip_stay_in_range_for_wide_rings(bits):
    """float64 cannot represent ±L exactly above 2^53: clamping must happen on integers."""
    codec = FixedPointCodec.for_ring(torch.ones(3, dtype=torch.float64), bits=bits, num_clients=2)
    encoded = codec.encode(torch.tensor([5.0, -5.0, 0.3]), generator=torch.Generator().manual_seed(0))
    assert int(encoded[0]) == codec.max_value and int(encoded[1]) == 0
    assert 0 <= int(encoded[2]) <= codec.max_value


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused_not_encoded_as_the_bound(bad):
    """NaN cast to int64 is -2^63, which the integer clamp turned into -bound (issue 9, point 7)."""
    codec = FixedPointCodec.for_ring(torch.ones(4), bits=20, num_clients=3)
    with pytest.raises(NonFiniteUpdateError, match="1 of 4 entries are NaN or inf"):
        codec.encode(torch.tensor([0.25, bad, -0.5, 0.0]), generator=torch.Generator().manual_seed(0))
