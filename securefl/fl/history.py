"""Per-round records and the run directory.

A finished run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per round),
``model.safetensors``, ``curves.png``, ``partition.png`` and, with DP, ``privacy.json``.  It is
written atomically: everything goes to ``<out>.partial`` first and is renamed into place only when
complete, so nothing half-written ever looks like a finished run.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from securefl.config import RunConfig
from securefl.errors import OutputExistsError


@dataclass
class History:
    """What a run returns: the config, one record per round, the final model and its ledgers."""

    config: RunConfig
    records: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None
    privacy: dict[str, Any] | None = None
    partition: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: str | None = None

    @property
    def final(self) -> dict[str, Any]:
        """The last round's record."""
        return self.records[-1]

    def metric(self, name: str) -> list[Any]:
        """One metric over the rounds, e.g. ``history.metric("test_accuracy")``."""
        return [record.get(name) for record in self.records]


def check_output_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse an existing, non-empty output directory unless ``overwrite`` (before any work)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a directory: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"output directory {out} is not empty: choose another --out or pass --overwrite"
        )


def write_run(
    history: History,
    out: Path,
    *,
    overwrite: bool,
    figures: Mapping[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write the run directory atomically and return its path.

    ``figures`` maps extra file names (e.g. ``partition.png``) to functions that draw them.
    """
    check_output_dir(out, overwrite=overwrite)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    (partial / "config.json").write_text(history.config.to_json() + "\n", encoding="utf-8")
    with (partial / "metrics.jsonl").open("w", encoding="utf-8") as stream:
        for record in history.records:
            stream.write(json.dumps(_finite(record), sort_keys=True, allow_nan=False) + "\n")
    if history.model is not None:
        from safetensors.torch import save_file

        state = {name: tensor.detach().contiguous() for name, tensor in history.model.state_dict().items()}
        save_file(state, str(partial / "model.safetensors"))
    if history.privacy is not None:
        privacy = json.dumps(_finite(history.privacy), indent=2, allow_nan=False)
        (partial / "privacy.json").write_text(privacy + "\n", encoding="utf-8")
    from securefl.fl.plots import plot_curves

    plot_curves(history.records, task=_task_of(history), path=partial / "curves.png")
    if history.partition:
        (partial / "partition.json").write_text(json.dumps(history.partition) + "\n", encoding="utf-8")
    for name, draw in (figures or {}).items():
        draw(partial / name)
    if out.exists():
        trash = out.with_name(out.name + ".old")
        if trash.exists():
            shutil.rmtree(trash)
        out.rename(trash)
        partial.rename(out)
        shutil.rmtree(trash)
    else:
        partial.rename(out)
    return out


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write ``null`` for them (e.g. R² on a constant target)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _task_of(history: History) -> str:
    return "regression" if history.records and "test_mse" in history.records[0] else "classification"
