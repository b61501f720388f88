"""Files an attack run leaves behind: pictures for people, JSON and arrays for programs.

``reconstruction.png`` (originals above, reconstructions below, PSNR under each),
``metrics.json`` (per image PSNR, SSIM, MSE, label; the trivial-guess baseline; wall time) and
``arrays.npz`` (``original`` and ``reconstructed``, float32 in [0, 1], shape (K, C, H, W)) for one
experiment; ``compare.png`` (a row per defence) and ``compare.json`` for a comparison.
Figures are drawn on a :class:`matplotlib.figure.Figure` (no global pyplot state).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from securefl.attacks.defences import Defence
from securefl.attacks.experiment import LEAKED_PSNR, AttackOutcome
from securefl.attacks.malicious import LEAKED_PSNR as MALICIOUS_LEAKED_PSNR
from securefl.attacks.malicious import MaliciousOutcome
from securefl.fl.record import finite_json

RECONSTRUCTION_FIGURE = "reconstruction.png"
METRICS_FILE = "metrics.json"
ARRAYS_FILE = "arrays.npz"
COMPARE_FIGURE = "compare.png"
COMPARE_FILE = "compare.json"


def _show(axis: Any, image: torch.Tensor) -> None:
    array = image.detach().cpu().float().clamp(0, 1).numpy()
    if array.shape[0] == 1:
        axis.imshow(array[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        axis.imshow(np.transpose(array, (1, 2, 0)), interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])


def _psnr_text(value: float) -> str:
    return "PSNR ∞" if not math.isfinite(value) else f"{value:.1f} dB"


def outcome_summary(outcome: AttackOutcome) -> dict[str, Any]:
    """The figures of one outcome, as plain JSON values."""
    return {
        "defence": outcome.defence_label,
        "median_psnr": finite_json(outcome.median_psnr),  # an exact reconstruction: inf -> null
        "median_ssim": outcome.median_ssim,
        "median_baseline_psnr": outcome.median_baseline_psnr,
        "label_accuracy": outcome.label_accuracy,
        "leaked_fraction": outcome.leaked_fraction,
        "leaked_psnr_threshold": LEAKED_PSNR,
        "epsilon": outcome.epsilon,
        "seconds": outcome.seconds,
    }


def _defence_record(defence: Defence) -> dict[str, Any]:
    """The defence's command-line name and every parameter it ran with."""
    return {"name": defence.name, **asdict(defence)}


def metrics_document(outcome: AttackOutcome) -> dict[str, Any]:
    """Everything ``metrics.json`` holds."""
    config = outcome.config
    return {
        "config": {
            "attack": config.attack,
            "dataset": config.dataset,
            "model": config.model,
            "batch_size": config.batch_size,
            "local_steps": config.local_steps,
            "learning_rate": config.learning_rate,
            "images": config.images,
            "seed": config.seed,
            "restarts": config.attack_config(0).restarts,
            "iterations": config.attack_config(0).iterations,
            "server_init": config.resolved_server_init,
            "device": str(config.attack_config(0).device),
            "defence": _defence_record(config.defence),
        },
        "summary": outcome_summary(outcome),
        "baseline": {
            "description": "PSNR of the data set's mean training image against each original",
            "median_psnr": outcome.median_baseline_psnr,
        },
        "images": [
            {
                "test_index": image.test_index,
                "psnr": finite_json(image.psnr),
                "ssim": image.ssim,
                "mse": image.mse,
                "baseline_psnr": image.baseline_psnr,
                "label": image.label,
                "recovered_label": image.recovered_label,
                "label_correct": image.label_correct,
            }
            for image in outcome.images
        ],
        "rounds": [
            {
                "seconds": round_.seconds,
                "objective": finite_json(round_.objective),
                "restarts_run": round_.restarts_run,
                "iterations": round_.iterations,
                **{k: v for k, v in asdict(round_.facts).items() if v is not None},
            }
            for round_ in outcome.rounds
        ],
        "wall_seconds": outcome.seconds,
    }


def save_reconstruction_figure(outcome: AttackOutcome, path: Path) -> None:
    """Originals above, reconstructions below, PSNR under each reconstruction."""
    count = len(outcome.images)
    figure = Figure(figsize=(max(1.3 * count + 0.6, 3.2), 3.2), dpi=100)
    axes = figure.subplots(2, count, squeeze=False)
    for column, image in enumerate(outcome.images):
        _show(axes[0][column], outcome.originals[column])
        _show(axes[1][column], outcome.reconstructions[column])
        axes[0][column].set_title(f"label {image.label}", fontsize=8)
        axes[1][column].set_xlabel(_psnr_text(image.psnr), fontsize=8)
    axes[0][0].set_ylabel("original", fontsize=8)
    axes[1][0].set_ylabel("reconstructed", fontsize=8)
    config = outcome.config
    figure.suptitle(
        f"{config.attack.upper()} on {config.model} / {config.dataset}\n{outcome.defence_label}, "
        f"baseline {outcome.median_baseline_psnr:.1f} dB",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path)


def _save_arrays(outcome: AttackOutcome | MaliciousOutcome, path: Path) -> None:
    """The originals and reconstructions as float32 arrays (``arrays.npz``)."""
    np.savez_compressed(
        path,
        original=outcome.originals.numpy().astype(np.float32),
        reconstructed=outcome.reconstructions.numpy().astype(np.float32),
    )


def write_outcome(outcome: AttackOutcome, out: Path) -> list[Path]:
    """Write the three files of one experiment into ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    figure, metrics, arrays = out / RECONSTRUCTION_FIGURE, out / METRICS_FILE, out / ARRAYS_FILE
    save_reconstruction_figure(outcome, figure)
    metrics.write_text(json.dumps(metrics_document(outcome), indent=2) + "\n")
    _save_arrays(outcome, arrays)
    return [figure, metrics, arrays]


def save_comparison_figure(outcomes: Sequence[AttackOutcome], path: Path, *, dpi: int = 80) -> None:
    """The originals on top, then one row of reconstructions per defence, PSNR under each."""
    count = len(outcomes[0].images)
    rows = len(outcomes) + 1
    figure = Figure(figsize=(1.05 * count + 2.3, 1.02 * rows + 0.4), dpi=dpi)
    axes = figure.subplots(rows, count, squeeze=False)
    first = outcomes[0]
    for column, image in enumerate(first.images):
        _show(axes[0][column], first.originals[column])
        axes[0][column].set_xlabel(f"baseline {image.baseline_psnr:.1f}", fontsize=7)
    axes[0][0].set_ylabel("original", fontsize=8, rotation=0, ha="right", va="center")
    for row, outcome in enumerate(outcomes, start=1):
        for column, image in enumerate(outcome.images):
            _show(axes[row][column], outcome.reconstructions[column])
            axes[row][column].set_xlabel(_psnr_text(image.psnr), fontsize=7)
        label = outcome.defence_label
        if outcome.epsilon is not None:
            label += f"\nε={outcome.epsilon:.3g}"
        axes[row][0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    config = first.config
    figure.suptitle(f"{config.attack.upper()} on {config.model} / {config.dataset}", fontsize=9)
    figure.tight_layout(h_pad=0.3, w_pad=0.2)
    figure.savefig(path)


def comparison_document(outcomes: Sequence[AttackOutcome]) -> dict[str, Any]:
    """Everything ``compare.json`` holds: the summary and per-image figures of every defence."""
    return {
        "rows": [
            {
                **outcome_summary(outcome),
                "psnr": [finite_json(image.psnr) for image in outcome.images],
                "ssim": [image.ssim for image in outcome.images],
                "label_correct": [image.label_correct for image in outcome.images],
                "baseline_psnr": [image.baseline_psnr for image in outcome.images],
                "defence_parameters": _defence_record(outcome.config.defence),
                "round_facts": [
                    {k: v for k, v in asdict(round_.facts).items() if v is not None}
                    for round_ in outcome.rounds
                ],
            }
            for outcome in outcomes
        ],
        "config": metrics_document(outcomes[0])["config"] | {"defence": "varies by row"},
    }


def write_comparison(outcomes: Sequence[AttackOutcome], out: Path) -> list[Path]:
    """Write ``compare.png`` and ``compare.json`` into ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    figure, document = out / COMPARE_FIGURE, out / COMPARE_FILE
    save_comparison_figure(outcomes, figure)
    document.write_text(json.dumps(comparison_document(outcomes), indent=2) + "\n")
    return [figure, document]


def malicious_document(outcome: MaliciousOutcome) -> dict[str, Any]:
    """Everything ``metrics.json`` of a malicious-server run holds."""
    config = outcome.config
    return {
        "config": {
            **{k: v for k, v in asdict(config).items() if k not in ("defences", "data_dir")},
            "bins": config.resolved_bins,
            "client_defences": asdict(config.defences),
        },
        "summary": {
            "label": config.label,
            "recovered_share": outcome.recovered_share,
            "recovered_of": "all clients' images" if config.attack == "imprint" else "the target's images",
            "leaked_psnr_threshold": MALICIOUS_LEAKED_PSNR,
            "target_refused_share": outcome.refused_share,
            "defeated_share": outcome.defeated_share,
            "seconds": outcome.seconds,
        },
        "trials": [
            {
                **{k: v for k, v in asdict(t).items() if k not in ("target_psnr", "everyone_psnr")},
                "target_psnr": [finite_json(p) for p in t.target_psnr],
                "target_recovered": t.target_recovered,
                "everyone_recovered": t.everyone_recovered,
            }
            for t in outcome.trials
        ],
    }


def write_malicious_outcome(outcome: MaliciousOutcome, out: Path) -> list[Path]:
    """reconstruction.png (the target's images and the attacker's closest candidates),
    metrics.json and arrays.npz, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figure_path, metrics, arrays = out / RECONSTRUCTION_FIGURE, out / METRICS_FILE, out / ARRAYS_FILE
    count = len(outcome.originals)
    figure = Figure(figsize=(max(1.3 * count + 0.6, 3.2), 3.2), dpi=100)
    axes = figure.subplots(2, count, squeeze=False)
    for column in range(count):
        _show(axes[0][column], outcome.originals[column])
        _show(axes[1][column], outcome.reconstructions[column])
        axes[1][column].set_xlabel(_psnr_text(outcome.trials[0].target_psnr[column]), fontsize=8)
    axes[0][0].set_ylabel("target's", fontsize=8)
    axes[1][0].set_ylabel("recovered", fontsize=8)
    figure.suptitle(outcome.config.label, fontsize=9)
    figure.tight_layout()
    figure.savefig(figure_path)
    metrics.write_text(json.dumps(malicious_document(outcome), indent=2) + "\n")
    _save_arrays(outcome, arrays)
    return [figure_path, metrics, arrays]


def write_malicious_comparison(outcomes: Sequence[MaliciousOutcome], out: Path) -> list[Path]:
    """``compare.png`` (the target's images, then one row per attack / defence with PSNR under
    each) and ``compare.json`` (every row's summary and trials) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figure_path, document = out / COMPARE_FIGURE, out / COMPARE_FILE
    count = len(outcomes[0].originals)
    rows = len(outcomes) + 1
    figure = Figure(figsize=(1.05 * count + 3.6, 1.02 * rows + 0.4), dpi=80)
    axes = figure.subplots(rows, count, squeeze=False)
    for column in range(count):
        _show(axes[0][column], outcomes[0].originals[column])
    axes[0][0].set_ylabel("target's", fontsize=8, rotation=0, ha="right", va="center")
    for row, outcome in enumerate(outcomes, start=1):
        for column in range(count):
            _show(axes[row][column], outcome.reconstructions[column])
            axes[row][column].set_xlabel(_psnr_text(outcome.trials[0].target_psnr[column]), fontsize=7)
        label = outcome.config.label.replace(", ", "\n", 1)
        axes[row][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    figure.suptitle(f"malicious server on {outcomes[0].config.dataset}", fontsize=9)
    figure.tight_layout(h_pad=0.3, w_pad=0.2)
    figure.savefig(figure_path)
    document.write_text(
        json.dumps({"rows": [malicious_document(outcome) for outcome in outcomes]}, indent=2) + "\n"
    )
    return [figure_path, document]
