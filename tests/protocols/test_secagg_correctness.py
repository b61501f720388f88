"""The unmasked sum equals the plain sum in Z_{2^bits}, bit for bit, over many seeds, for n in
{3, 10, 50}, the complete graph and SecAgg+, every supported word size; bad inputs are refused."""

from __future__ import annotations

import re

import numpy as np
import pytest
from secagg_helpers import DeterministicRandom, plain_sum, random_inputs

from securefl.errors import ConfigError
from securefl.protocols.secagg import SecAggParams, Step, run_secure_aggregation

BITS = (8, 20, 31, 32, 47, 62)
CASES = (
    [(3, None, seed) for seed in range(12)]
    + [(3, 2, seed) for seed in range(4)]
    + [(10, None, seed) for seed in range(6)]
    + [(10, 4, seed) for seed in range(6)]
    + [(50, None, seed) for seed in range(2)]
    + [(50, 8, seed) for seed in range(2)]
)


@pytest.mark.parametrize(("n", "neighbors", "seed"), CASES)
def test_unmasked_sum_equals_plain_sum(n, neighbors, seed):
    bits = BITS[(seed + n) % len(BITS)]
    threshold = max(2, (n if neighbors is None else neighbors + 1) // 2 + 1)
    params = SecAggParams(num_clients=n, threshold=threshold, bits=bits, neighbors=neighbors)
    inputs = random_inputs(n, 23, bits, seed)
    result = run_secure_aggregation(
        inputs, params=params, random_source=DeterministicRandom(f"sum {n} {seed}")
    )
    assert result.survivors == frozenset(inputs)
    assert result.sum.dtype == np.uint64
    assert np.array_equal(result.sum, plain_sum(inputs, inputs, bits))
    assert not result.stats.rejections


def test_arbitrary_client_ids_and_active_mode():
    ids = [7, 23, 41, 100, 4_000_000_000]
    inputs = random_inputs(5, 50, 32, seed=1, ids=ids)
    for active in (False, True):
        params = SecAggParams(num_clients=5, threshold=3, active_adversary=active)
        result = run_secure_aggregation(inputs, params=params)
        assert result.survivors == frozenset(ids)
        assert np.array_equal(result.sum, plain_sum(inputs, ids, 32))
        steps = {entry.step for entry in result.transcript}
        assert (Step.CONSISTENCY_CHECK in steps) is active


def test_input_bound_proof_gives_the_true_integer_sum():
    params = SecAggParams(num_clients=4, threshold=3, bits=16, input_bound=2**14 - 1)
    inputs = {c: np.full(10, 2**14 - 1, dtype=np.uint16) for c in range(4)}
    result = run_secure_aggregation(inputs, params=params)
    assert result.sum.tolist() == [4 * (2**14 - 1)] * 10  # < 2^16: no wrap


def test_server_transcript_holds_only_masked_vectors():
    inputs = random_inputs(4, 200, 32, seed=3)
    result = run_secure_aggregation(inputs, params=SecAggParams(num_clients=4, threshold=3))
    uploads = [e.message for e in result.transcript if e.step is Step.MASKED_INPUT]
    assert len(uploads) == 4
    for message in uploads:
        assert len(message.packed) == 200 * 4
        sent = np.frombuffer(message.packed, dtype="<u4")
        assert not np.array_equal(sent, inputs[message.sender])


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ({0: np.zeros(3, np.uint32), 1: np.zeros(3, np.uint32)}, "got 2 inputs"),
        ({c: np.zeros(3, np.float32) for c in range(3)}, "quantize floats first"),
        ({0: np.zeros(3, np.int64) - 1, 1: np.zeros(3, np.int64), 2: np.zeros(3, np.int64)}, "negative"),
        ({c: np.full(3, 2**20, np.uint32) for c in range(3)}, "values >= 2^20"),
        (
            {0: np.zeros(3, np.uint32), 1: np.zeros(4, np.uint32), 2: np.zeros(3, np.uint32)},
            "one common length",
        ),
        ({c: np.full(3, 200, np.uint32) for c in range(3)}, "exceeds input_bound 100"),
    ],
)
def test_bad_inputs_are_refused_with_config_errors(inputs, fragment):
    bound = 100 if "input_bound" in fragment else None
    params = SecAggParams(num_clients=3, threshold=2, bits=20, input_bound=bound)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        run_secure_aggregation(inputs, params=params)
