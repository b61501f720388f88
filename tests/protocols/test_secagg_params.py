"""SecAggParams validation (errors name the knob) and the k/t choice rule against scipy."""

from __future__ import annotations

import math
import re

import pytest
from scipy import stats

from securefl.errors import ConfigError
from securefl.protocols.secagg import RoundSetup, SecAggParams, choose_parameters
from securefl.protocols.secagg.params import binomial_tail_at_least, hypergeometric_tail_at_least


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_clients": 5, "threshold": 7}, "`threshold` 7 exceeds a round of 5 clients"),
        (
            {"num_clients": 10, "threshold": 3, "neighbors": 10},
            "`neighbors` 10 > the 9 peers of a client in a round of 10 clients",
        ),
        (
            {"num_clients": 10, "threshold": 3, "neighbors": 12},
            "`neighbors` 12 > the 9 peers of a client in a round of 10 clients",
        ),
        ({"num_clients": 10, "threshold": 3, "neighbors": 5}, "`neighbors` 5 is odd"),
        (
            {"num_clients": 10, "threshold": 6, "neighbors": 4},
            "`threshold` 6 > 5 share holders per client (`neighbors` 4 + 1)",
        ),
        ({"num_clients": 5, "threshold": 3, "bits": 7}, "`bits` 7 is outside 8..62"),
        ({"num_clients": 5, "threshold": 3, "bits": 63}, "`bits` 63 is outside 8..62"),
        ({"num_clients": 5, "threshold": 0}, "`threshold` 0"),
        ({"num_clients": 1, "threshold": 1}, "a round of 1 client(s) cannot run"),
        (
            {"num_clients": 4, "threshold": 3, "bits": 8, "input_bound": 64},
            "a round of 4 clients * `input_bound` 64 = 256 >= 2^8: the sum could wrap",
        ),
    ],
)
def test_invalid_params_name_the_knob(kwargs, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        SecAggParams(**kwargs)


def test_overflow_proof_boundary():
    assert SecAggParams(num_clients=4, threshold=3, bits=8, input_bound=63).sum_bound == 252
    assert SecAggParams(num_clients=3, threshold=2, bits=8, input_bound=85).sum_bound == 255
    with pytest.raises(ConfigError):
        SecAggParams(num_clients=3, threshold=2, bits=8, input_bound=86)  # 258 > 255


def test_derived_quantities():
    complete = SecAggParams(num_clients=10, threshold=6, active_adversary=True)
    assert complete.complete_graph and complete.degree == 9 and complete.share_holders == 10
    assert complete.colluders_tolerated == 1 and complete.signature_threshold == 6
    active_sparse = SecAggParams(num_clients=10, threshold=4, neighbors=4, active_adversary=True)
    assert active_sparse.colluders_tolerated == 0 and active_sparse.signature_threshold == 6
    sparse = SecAggParams(num_clients=10, threshold=3, neighbors=4, bits=40)
    assert sparse.share_holders == 5 and sparse.word_dtype.itemsize == 8


def test_round_setup_validation():
    with pytest.raises(ConfigError):
        RoundSetup(0, (3, 1), 10, bytes(32))
    with pytest.raises(ConfigError):
        RoundSetup(0, (1, 3), 10, bytes(31))
    with pytest.raises(ConfigError, match="participants"):
        RoundSetup(0, (1, 2, 3), 10, bytes(32)).check(SecAggParams(num_clients=4, threshold=2))


def test_tails_match_scipy():
    for trials, p, k in [(25, 0.9, 19), (40, 0.1, 12), (100, 0.5, 60), (9, 0.0, 1)]:
        assert binomial_tail_at_least(trials, p, k) == pytest.approx(
            stats.binom.sf(k - 1, trials, p), rel=1e-9, abs=1e-300
        )
    for population, marked, draws, k in [(99, 10, 24, 5), (49, 5, 49, 5), (99, 0, 10, 1)]:
        assert hypergeometric_tail_at_least(population, marked, draws, k) == pytest.approx(
            stats.hypergeom.sf(k - 1, population, marked, draws), rel=1e-9, abs=1e-300
        )


@pytest.mark.parametrize(
    ("n", "dropout", "corruption"), [(100, 0.1, 0.1), (50, 0.05, 0.05), (200, 0.2, 0.0), (20, 0.1, 0.1)]
)
def test_choose_parameters_meets_the_documented_rule_minimally(n, dropout, corruption):
    params = choose_parameters(n, dropout_rate=dropout, corruption_rate=corruption)
    security, correctness = 2.0**-40, 2.0**-20
    c = math.ceil(corruption * n)
    k, t = params.degree, params.threshold

    def feasible(degree: int, threshold: int, sparse: bool) -> bool:
        connected = not sparse or n * n * (dropout + c / n) ** degree <= security
        private = n * stats.hypergeom.sf(threshold - 1, n - 1, c, degree) <= security
        correct = n * stats.binom.cdf(threshold - 1, degree + 1, 1 - dropout) <= correctness
        return connected and private and correct

    assert feasible(k, t, not params.complete_graph)
    # t is the smallest threshold >= 2 meeting the privacy bound for this k
    if t > 2:
        assert n * stats.hypergeom.sf(t - 2, n - 1, c, k) > security
    # no smaller even degree works with any threshold
    for smaller in range(2, k if not params.complete_graph else n - 1, 2):
        assert not any(feasible(smaller, s, True) for s in range(2, smaller + 2))


def test_choose_parameters_active_mode_blocks_split_views():
    params = choose_parameters(50, dropout_rate=0.05, corruption_rate=0.1, active_adversary=True)
    c = math.ceil(0.1 * 50)
    assert 2 * params.signature_threshold > 50 + c


def test_choose_parameters_refuses_impossible_targets():
    with pytest.raises(ConfigError, match="lower the rates"):
        choose_parameters(10, dropout_rate=0.5, corruption_rate=0.4)
    with pytest.raises(ConfigError, match="dropout_rate"):
        choose_parameters(10, dropout_rate=1.0, corruption_rate=0.0)
