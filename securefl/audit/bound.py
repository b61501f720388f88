"""From guess counts to an ε lower bound: the one-run auditing theorem (pure math, no torch).

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023.  ``m``
canaries are each included independently with probability 1/2; after one run the auditor makes
``r`` guesses ("in" or "out", abstaining on the other ``m - r``) and ``v`` of them are right.
If the training algorithm is ε-DP with respect to each canary, the number of correct guesses is
stochastically dominated by ``Binomial(r, p)`` with ``p = e^ε / (1 + e^ε)`` (the accuracy of
ε-randomized response), so ``P[W ≥ v] ≤ f(v) := P[Binomial(r, p) ≥ v]`` (their main theorem,
pure DP).  For (ε, δ)-DP the bound gains a δ term (their approximate-DP theorem)::

    P[W ≥ v] ≤ f(v) + 2 m δ · max_{1 ≤ i ≤ v} (f(v - i) - f(v)) / i

The right-hand side is the *p-value* of the hypothesis "the algorithm is (ε, δ)-DP" given ``v``
correct guesses out of ``r``; it grows with ε.  The ε lower bound at confidence ``1 - β`` is the
largest ε that this observation rejects at level β, found by bisection.  Every ε below it is
rejected: if the implementation were ε-DP, seeing ``v`` or more correct guesses would have had
probability below β.

The binomial tails are evaluated on the *error* side, ``P[Binomial(r, 1 - p) ≤ r - v]`` with
``1 - p = 1 / (1 + e^ε)`` from :func:`scipy.special.expit`, so a large ε keeps its precision.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import expit

BISECTION_STEPS = 60
EPSILON_CEILING = 1e3
"""No one-run audit with fewer than ~10^400 guesses can certify more; the search stops here."""


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"need 0 <= correct ({correct}) <= guesses ({guesses}) <= canaries ({canaries})")


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float = 0.0) -> float:
    """Probability of ``correct`` or more right guesses out of ``guesses`` under (ε, δ)-DP.

    Steinke et al.'s approximate-DP bound (their pure-DP bound when ``delta`` is 0); at most 1.
    """
    _check_counts(canaries, guesses, correct)
    if not epsilon >= 0:
        raise ValueError(f"epsilon {epsilon} < 0")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta {delta} outside [0, 1]")
    if correct == 0:
        return 1.0
    miss = float(expit(-epsilon))  # 1 - p, the error rate of ε-randomized response
    # f(v) = P[Bin(r, p) >= v] = P[errors <= r - v] with errors ~ Bin(r, 1 - p).
    tail = float(stats.binom.cdf(guesses - correct, guesses, miss))
    if delta == 0:
        return min(1.0, tail)
    # f(v - i) - f(v) = P[v - i <= Bin(r, p) <= v - 1] = sum of the pmf at v - 1, ..., v - i.
    successes = np.arange(correct - 1, -1, -1)  # v - 1, v - 2, ..., 0 (i = 1 .. v)
    below = np.cumsum(stats.binom.pmf(guesses - successes, guesses, miss))
    slope = float(np.max(below / np.arange(1, correct + 1)))
    return min(1.0, tail + 2 * canaries * delta * slope)


def epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float = 0.0, beta: float = 0.05
) -> float:
    """The largest ε that ``correct`` right guesses out of ``guesses`` reject at level ``beta``.

    0 when even ε = 0 is not rejected (the guesses are no better than chance at this confidence).
    """
    _check_counts(canaries, guesses, correct)
    if not 0 < beta < 1:
        raise ValueError(f"beta {beta} outside (0, 1)")

    def rejected(epsilon: float) -> bool:
        return (
            p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=epsilon, delta=delta) < beta
        )

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2 * high
        if high > EPSILON_CEILING:
            return low
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if rejected(middle):
            low = middle
        else:
            high = middle
        if high - low <= 1e-9 * max(1.0, high):
            break
    return low


def max_epsilon_lower_bound(*, canaries: int, delta: float = 0.0, beta: float = 0.05) -> float:
    """The best bound ``canaries`` canaries can give: every one guessed, every guess right.

    An audit with fewer canaries cannot certify more, however leaky the algorithm
    (the ceiling Steinke et al. discuss for few canaries).
    """
    if canaries < 1:
        return 0.0
    return epsilon_lower_bound(canaries=canaries, guesses=canaries, correct=canaries, delta=delta, beta=beta)


__all__ = ["epsilon_lower_bound", "max_epsilon_lower_bound", "p_value"]
