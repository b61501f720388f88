"""An audit's files: ``audit.json`` (every number and the per-canary data) and ``audit.png``.

The run directory is the training run's (``config.json``, ``metrics.jsonl``, ``curves.png``, ...),
written atomically by :func:`~securefl.fl.history.write_run`, plus:

- ``audit.json``: accountant ε, ε lower bound, confidence and β, δ, ``m``, ``r``, ``v``, the
  guess counts tried, the ceiling ``m`` canaries allow, the break, the audit configuration, and
  per canary its score and inclusion bit;
- ``audit.png``: the score histograms of included and excluded canaries (the guess thresholds
  marked), and the ε lower bound next to the accountant's ε and the ceiling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from securefl.audit.run import AuditResult  # noqa: E402
from securefl.fl.history import write_run  # noqa: E402
from securefl.fl.record import json_float

AUDIT_FILE = "audit.json"
FIGURE_FILE = "audit.png"


def audit_document(result: AuditResult) -> dict[str, Any]:
    """Everything ``audit.json`` holds (infinite ε written as null, e.g. the claim without DP)."""
    outcome = result.outcome
    return {
        "mode": result.config.mode,
        "break": None if result.config.weakness is None else result.config.weakness.variant,
        "accountant_epsilon": json_float(result.accountant_epsilon),
        "epsilon_lower_bound": outcome.epsilon,
        "violation": result.violation,
        "confidence": result.config.confidence,
        "beta": outcome.beta,
        "delta": result.config.delta,
        "canaries": int(len(result.scores)),
        "guesses": outcome.guesses,
        "correct": outcome.correct,
        "guess_counts_tried": list(outcome.candidates),
        "ceiling": result.ceiling,
        "rounds_observed": result.rounds_observed,
        "seconds": result.seconds,
        "final_round": result.history.final.to_json() if result.history.records else None,
        "config": result.config.to_json(),
        "canary_scores": [float(s) for s in result.scores],
        "canary_included": [bool(b) for b in result.included],
    }


def plot_audit(result: AuditResult, path: Path) -> None:
    """Scores of included vs excluded canaries; ε lower bound vs accountant ε."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    scores, included = result.scores, result.included
    bins = np.histogram_bin_edges(scores, bins=40)
    left.hist(scores[included], bins=bins, alpha=0.6, label=f"included ({int(included.sum())})")
    left.hist(scores[~included], bins=bins, alpha=0.6, label=f"excluded ({int((~included).sum())})")
    k = result.outcome.guesses // 2
    ordered = np.sort(scores)
    if 0 < k < len(ordered):
        left.axvline(ordered[-k], color="k", linestyle="--", linewidth=1, label=f"top/bottom {k} guessed")
        left.axvline(ordered[k - 1], color="k", linestyle="--", linewidth=1)
    left.set_xlabel(
        "canary score (minus the final model's loss on it)"
        if result.config.black_box
        else "canary score (sum of its coordinate over the observed rounds)"
    )
    left.set_ylabel("canaries")
    left.legend(fontsize=8)
    config = result.config
    left.set_title(f"{config.mode}" + (f", break: {config.weakness.variant}" if config.weakness else ""))

    claim = result.accountant_epsilon
    labels = ["ε lower bound", "accountant ε"]
    values = [result.outcome.epsilon, claim if math.isfinite(claim) else 0.0]
    bars = right.bar(labels, values, color=["tab:red" if result.violation else "tab:blue", "tab:gray"])
    if not math.isfinite(claim):
        right.text(1, 0, "∞ (no DP)", ha="center", va="bottom")
    right.axhline(result.ceiling, color="k", linestyle=":", label=f"ceiling for m={len(scores)}")
    right.bar_label(bars, fmt="%.3g")
    right.set_ylabel("ε")
    right.set_title(
        f"{config.confidence:.0%} confidence, δ={config.delta:g}: "
        f"{result.outcome.correct}/{result.outcome.guesses} guesses right"
    )
    right.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_audit(result: AuditResult, out: Path, *, overwrite: bool = False) -> Path:
    """The training run's directory plus ``audit.json`` and ``audit.png``, written atomically."""

    def write_document(path: Path) -> None:
        path.write_text(
            json.dumps(audit_document(result), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )

    return write_run(
        result.history,
        out,
        overwrite=overwrite,
        figures={AUDIT_FILE: write_document, FIGURE_FILE: lambda path: plot_audit(result, path)},
    )


__all__ = ["AUDIT_FILE", "FIGURE_FILE", "audit_document", "plot_audit", "write_audit"]
