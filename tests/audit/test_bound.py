"""The guess-count → ε conversion against independent references (Steinke, Nasr, Jagielski 2023).

References: a root search on scipy's binomial survival function (δ = 0, their pure-DP theorem),
the closed form for all-correct guesses, a term-by-term evaluation of the approximate-DP theorem's
δ term, and Monte Carlo runs of randomized response, the mechanism for which the pure-DP bound is
exactly tight.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from securefl.audit.bound import epsilon_lower_bound, max_epsilon_lower_bound, p_value


def _sf_bound(r: int, v: int, beta: float) -> float:
    """δ = 0 reference: solve P[Binomial(r, e^ε/(1+e^ε)) >= v] = β with scipy's sf and brentq."""

    def gap(epsilon: float) -> float:
        return stats.binom.sf(v - 1, r, 1 / (1 + math.exp(-epsilon))) - beta

    if gap(0.0) >= 0:
        return 0.0
    return optimize.brentq(gap, 0.0, 50.0, xtol=1e-12)


@pytest.mark.parametrize(
    ("r", "v", "beta"),
    [(100, 80, 0.05), (100, 95, 0.05), (1000, 600, 0.05), (1000, 990, 0.01), (50, 50, 0.05), (20, 15, 0.1)],
)
def test_pure_dp_bound_matches_a_direct_binomial_tail_search(r, v, beta):
    ours = epsilon_lower_bound(canaries=r, guesses=r, correct=v, delta=0.0, beta=beta)
    assert ours == pytest.approx(_sf_bound(r, v, beta), abs=1e-6)


@pytest.mark.parametrize("r", [10, 100, 1000])
def test_all_correct_guesses_have_the_closed_form(r):
    # P[Bin(r, p) >= r] = p^r = β  =>  p = β^(1/r), ε = log(p / (1 - p)).
    p = 0.05 ** (1 / r)
    assert max_epsilon_lower_bound(canaries=r, beta=0.05) == pytest.approx(math.log(p / (1 - p)), rel=1e-6)


def _theorem3_term_by_term(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    p = math.exp(epsilon) / (1 + math.exp(epsilon))

    def f(k: int) -> float:  # P[Binomial(r, p) >= k]
        return float(stats.binom.sf(k - 1, r, p))

    slope = max((f(v - i) - f(v)) / i for i in range(1, v + 1))
    return min(1.0, f(v) + 2 * m * delta * slope)


@pytest.mark.parametrize(
    ("m", "r", "v", "epsilon", "delta"),
    [
        (1000, 100, 90, 1.0, 1e-5),
        (1000, 200, 190, 2.5, 1e-5),
        (5000, 500, 420, 1.2, 1e-6),
        (100, 100, 97, 3.0, 1e-3),
    ],
)
def test_delta_term_matches_a_term_by_term_evaluation_of_theorem_3(m, r, v, epsilon, delta):
    ours = p_value(canaries=m, guesses=r, correct=v, epsilon=epsilon, delta=delta)
    assert ours == pytest.approx(_theorem3_term_by_term(m, r, v, epsilon, delta), rel=1e-6, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(1, 400),
    accuracy=st.floats(0.0, 1.0),
    extra=st.integers(0, 2000),
    delta=st.sampled_from([0.0, 1e-6, 1e-5]),
    beta=st.sampled_from([0.01, 0.05, 0.1]),
)
def test_the_bound_is_the_edge_of_rejection(r, accuracy, extra, delta, beta):
    v = round(accuracy * r)
    m = r + extra
    bound = epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta, beta=beta)
    assert bound >= 0
    if bound > 0:  # every ε up to the bound is rejected, just above it is not
        assert p_value(canaries=m, guesses=r, correct=v, epsilon=bound, delta=delta) < beta
        above = bound * (1 + 1e-6) + 1e-9
        assert p_value(canaries=m, guesses=r, correct=v, epsilon=above, delta=delta) >= beta
    # δ only weakens the evidence
    assert bound <= epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=0.0, beta=beta) + 1e-9


def test_chance_guesses_certify_nothing():
    assert epsilon_lower_bound(canaries=1000, guesses=1000, correct=500, delta=1e-5, beta=0.05) == 0.0
    assert epsilon_lower_bound(canaries=10, guesses=0, correct=0) == 0.0


def test_bad_counts_are_refused():
    with pytest.raises(ValueError):
        epsilon_lower_bound(canaries=10, guesses=11, correct=5)
    with pytest.raises(ValueError):
        epsilon_lower_bound(canaries=10, guesses=10, correct=5, beta=1.0)


@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_randomized_response_violates_its_own_epsilon_at_most_beta_often(epsilon):
    """ε-randomized response makes Binomial(r, e^ε/(1+e^ε)) correct guesses, the pure-DP worst case:
    the bound may exceed ε in at most a β fraction of runs, and should come close to ε."""
    rng = np.random.default_rng(0)
    r, beta, runs = 1000, 0.05, 4000
    correct = rng.binomial(r, 1 / (1 + math.exp(-epsilon)), size=runs)
    # bound > ε exactly when ε itself is rejected (the p-value grows with ε)
    rejected = np.array(
        [p_value(canaries=r, guesses=r, correct=int(v), epsilon=epsilon) < beta for v in correct]
    )
    assert rejected.mean() <= beta + 3 * math.sqrt(beta * (1 - beta) / runs)
    assert rejected.mean() >= beta / 3  # the tail is used, not wasted: the test is near-exact
    typical = epsilon_lower_bound(canaries=r, guesses=r, correct=int(np.median(correct)), beta=beta)
    assert 0.6 * epsilon < typical < epsilon
