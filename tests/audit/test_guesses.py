"""The guessing game on simulated Gaussian-mechanism scores (fast, no training).

Each canary's score is N(μ, 1) if included, N(0, 1) if not: a Gaussian mechanism per canary whose
exact (ε, δ) comes from the analytic formula of Balle and Wang (ICML 2018), an independent
reference computed here with scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from securefl.audit.guesses import best_bound, guess_counts, make_guesses


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε(δ) of the Gaussian mechanism with sensitivity / σ = μ (Balle & Wang, ICML 2018)."""

    def gap(epsilon: float) -> float:
        return (
            stats.norm.cdf(mu / 2 - epsilon / mu)
            - math.exp(epsilon) * stats.norm.cdf(-mu / 2 - epsilon / mu)
            - delta
        )

    return optimize.brentq(gap, 0.0, 200.0)


def test_guesses_take_the_top_and_bottom_k():
    scores = np.array([0.3, -2.0, 5.0, 0.1, 4.0, -1.0])
    assert make_guesses(scores, 4).tolist() == [0, -1, 1, 0, 1, -1]
    assert guess_counts(1000, (0.01, 0.05, 1.0)) == (10, 50, 1000)
    with pytest.raises(ValueError):
        make_guesses(scores, 3)


def test_perfectly_separated_scores_reach_the_bonferroni_ceiling():
    included = np.arange(200) % 2 == 0
    scores = np.where(included, 10.0, 0.0) + np.linspace(0, 1e-3, 200)
    outcome = best_bound(scores, included, delta=0.0, beta=0.05, candidates=(200,))
    assert outcome.correct == 200
    p = 0.05 ** (1 / 200)
    assert outcome.epsilon == pytest.approx(math.log(p / (1 - p)), rel=1e-6)


@pytest.mark.parametrize("mu", [0.5, 1.5, 3.0])
def test_gaussian_mechanism_is_never_over_audited(mu):
    rng = np.random.default_rng(int(mu * 10))
    delta, beta, m, runs = 1e-5, 0.05, 1000, 60
    truth = gaussian_epsilon(mu, delta)
    bounds = []
    for _ in range(runs):
        included = rng.random(m) < 0.5
        bounds.append(
            best_bound(rng.normal(size=m) + mu * included, included, delta=delta, beta=beta).epsilon
        )
    bounds = np.array(bounds)
    # at most β of the runs may exceed the truth; P[Binomial(60, 0.05) > 9] < 1e-3
    assert np.sum(bounds > truth) <= 9
    assert np.median(bounds) > 0.15 * truth  # the audit has power: it is not trivially 0


def test_a_mechanism_weaker_than_claimed_is_caught():
    """Scores of a Gaussian mechanism at μ = 4 audited against the claim of μ = 0.5."""
    rng = np.random.default_rng(1)
    included = rng.random(1000) < 0.5
    outcome = best_bound(rng.normal(size=1000) + 4.0 * included, included, delta=1e-5, beta=0.05)
    assert outcome.epsilon > gaussian_epsilon(0.5, 1e-5)
