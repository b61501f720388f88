"""Pictures of a run: accuracy (or R²) and loss per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(records: list[dict[str, Any]], *, task: str, path: Path) -> None:
    """Two panels: the test metric and the train/test loss, one point per completed round."""
    rounds = [r["round"] for r in records]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    metric = "test_accuracy" if task == "classification" else "test_r2"
    left.plot(rounds, [r.get(metric) for r in records], marker="o")
    left.set_xlabel("round")
    left.set_ylabel("test accuracy" if task == "classification" else "test R²")
    left.grid(alpha=0.3)
    test_loss = "test_loss" if task == "classification" else "test_mse"
    if any("train_loss" in r for r in records):  # not released under DP
        right.plot(rounds, [r.get("train_loss") for r in records], marker="o", label="train (clients)")
    right.plot(rounds, [r.get(test_loss) for r in records], marker="s", label="test")
    right.set_xlabel("round")
    right.set_ylabel("loss")
    right.legend()
    right.grid(alpha=0.3)
    for axes in (left, right):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.savefig(path, dpi=110)
    plt.close(figure)
