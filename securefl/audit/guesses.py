"""The auditor's game: scores in, guesses out, the best certified ε over a few guess counts.

Steinke, Nasr and Jagielski (NeurIPS 2023): rank the ``m`` canaries by a score that
is larger when a canary was used, guess "in" for the ``k`` highest, "out" for the ``k`` lowest and
abstain on the rest (``r = 2k`` guesses).  Which ``k`` is best depends on how well the scores
separate, which the auditor does not know in advance.  Trying several ``k`` and keeping the best
bound is a multiple comparison; we pay for it with a union bound, testing each of the ``K``
candidate counts at level ``β / K``, so the reported bound holds at confidence ``1 - β`` whatever
``k`` won (pure math, numpy only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from securefl.audit.bound import epsilon_lower_bound

GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.4, 1.0)
"""Default candidate guess counts ``r`` as fractions of ``m`` (each rounded to an even count >= 2)."""


@dataclass(frozen=True)
class GuessOutcome:
    """The winning guess count of an audit and what it certifies."""

    epsilon: float
    """ε lower bound at confidence ``1 - beta`` (union bound over the candidate counts included)."""
    guesses: int
    correct: int
    beta: float
    candidates: tuple[int, ...]
    """Every guess count tried; each was tested at level ``beta / len(candidates)``."""


def guess_counts(canaries: int, fractions: Sequence[float] = GUESS_FRACTIONS) -> tuple[int, ...]:
    """Distinct even guess counts ``r`` (``k`` in and ``k`` out) for the given fractions of ``m``."""
    counts = {max(2, 2 * round(fraction * canaries / 2)) for fraction in fractions}
    return tuple(sorted(c for c in counts if c <= canaries))


def make_guesses(scores: np.ndarray, guesses: int) -> np.ndarray:
    """+1 ("in") for the ``guesses/2`` highest scores, -1 for the lowest as many, 0 elsewhere."""
    if guesses % 2 or not 0 <= guesses <= len(scores):
        raise ValueError(f"guesses {guesses} must be even and at most the {len(scores)} canaries")
    order = np.argsort(scores, kind="stable")
    k = guesses // 2
    out = np.zeros(len(scores), dtype=np.int64)
    if k:
        out[order[-k:]] = 1
        out[order[:k]] = -1
    return out


def best_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    beta: float,
    candidates: Sequence[int] | None = None,
) -> GuessOutcome:
    """The largest ε lower bound over the candidate guess counts, each tested at ``beta / K``."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ValueError(
            f"scores {scores.shape} and inclusion bits {included.shape} must be equal 1-d arrays"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("canary scores must be finite")
    m = len(scores)
    counts = tuple(candidates) if candidates is not None else guess_counts(m)
    if not counts:
        raise ValueError(f"no guess count fits {m} canaries: use at least 2 canaries")
    truth = np.where(included, 1, -1)
    level = beta / len(counts)
    best: GuessOutcome | None = None
    for count in counts:
        correct = int(np.sum(make_guesses(scores, count) == truth))  # abstentions (0) never match
        epsilon = epsilon_lower_bound(canaries=m, guesses=count, correct=correct, delta=delta, beta=level)
        if best is None or epsilon > best.epsilon:
            best = GuessOutcome(epsilon=epsilon, guesses=count, correct=correct, beta=beta, candidates=counts)
    assert best is not None
    return best


__all__ = ["GUESS_FRACTIONS", "GuessOutcome", "best_bound", "guess_counts", "make_guesses"]
