"""A single masked vector is statistically indistinguishable from uniform over Z_{2^bits}, even
for a constant input, while the same test flags the unmasked input (so the test has power).

Randomness comes from the test-only DeterministicRandom, so the outcome is fixed: no flakiness.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from secagg_helpers import DeterministicRandom

from securefl.protocols.secagg import SecAggParams, Step, run_secure_aggregation
from securefl.protocols.secagg.ring import unpack

LENGTH = 60_000
P_FLOOR = 1e-4


def masked_vector_of_client_0(bits: int, neighbors, first_input: np.ndarray, label: str):
    n = 5
    inputs = {c: np.full(LENGTH, 3 * c, dtype=np.uint64) for c in range(n)}
    inputs[0] = first_input
    params = SecAggParams(num_clients=n, threshold=3, bits=bits, neighbors=neighbors)
    result = run_secure_aggregation(inputs, params=params, random_source=DeterministicRandom(label))
    [upload] = [e.message for e in result.transcript if e.step is Step.MASKED_INPUT and e.message.sender == 0]
    return unpack(upload.packed, bits=bits, length=LENGTH).astype(np.uint64)


def uniformity_pvalues(values: np.ndarray, bits: int) -> tuple[float, float, float]:
    """Chi-square of the top and bottom 8 bits over 256 bins, and KS of value / 2^bits."""
    top = (values >> np.uint64(bits - 8)).astype(np.int64)
    bottom = (values & np.uint64(0xFF)).astype(np.int64)
    p_top = stats.chisquare(np.bincount(top, minlength=256)).pvalue
    p_bottom = stats.chisquare(np.bincount(bottom, minlength=256)).pvalue
    p_ks = stats.kstest(values.astype(np.float64) / 2.0**bits, "uniform").pvalue
    return p_top, p_bottom, p_ks


@pytest.mark.parametrize(("bits", "neighbors"), [(32, None), (20, 2), (62, None)])
@pytest.mark.parametrize("kind", ["zeros", "ramp"])
def test_masked_vector_looks_uniform(bits, neighbors, kind):
    first = (
        np.zeros(LENGTH, dtype=np.uint64)
        if kind == "zeros"
        else np.arange(LENGTH, dtype=np.uint64) % np.uint64(2**bits)
    )
    masked = masked_vector_of_client_0(bits, neighbors, first, f"uniform {bits} {kind}")
    assert min(uniformity_pvalues(masked, bits)) > P_FLOOR
    assert not np.array_equal(masked, first)


def test_the_same_statistics_reject_a_structured_vector():
    ramp = np.arange(LENGTH, dtype=np.uint64)  # the "ramp" input above, before masking
    assert min(uniformity_pvalues(ramp, 20)) < P_FLOOR
    biased = np.frombuffer(DeterministicRandom("biased")(4 * LENGTH), dtype="<u4").astype(
        np.uint64
    ) % np.uint64(3 * 2**30)  # uniform on 3/4 of Z_2^32 only
    assert min(uniformity_pvalues(biased, 32)) < P_FLOOR
    assert min(uniformity_pvalues(np.zeros(LENGTH, dtype=np.uint64), 32)) < P_FLOOR


def test_masks_differ_between_runs_with_fresh_randomness():
    first = np.zeros(LENGTH, dtype=np.uint64)
    a = masked_vector_of_client_0(32, None, first, "run a")
    b = masked_vector_of_client_0(32, None, first, "run b")
    assert np.mean(a == b) < 1e-3
