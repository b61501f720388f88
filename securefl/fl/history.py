"""Per-round records and the run directory.

A run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per round,
:meth:`~securefl.fl.record.RoundRecord.to_json`), ``status.json`` (``finished``,
``stopped_early`` or ``diverged``, with the reason), ``model.safetensors``, ``curves.png``,
``partition.png`` and, with DP, ``privacy.json``.  It is written atomically: everything goes to
``<out>.partial`` first and is renamed into place only when complete, so nothing half-written
ever looks like a finished run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from securefl.config import RunConfig
from securefl.errors import OutputExistsError
from securefl.fl.record import RoundRecord, finite_json


@dataclass
class History:
    """What a run returns: the config, one record per round, the final model and its ledgers.

    ``stopped_early`` says why a run ended before its last round (every privacy budget spent);
    ``diverged`` says in which round and why the model or loss became non-finite (the run stops
    there, and its directory is marked as diverged, not finished).
    """

    config: RunConfig
    records: list[RoundRecord] = field(default_factory=list)
    model: nn.Module | None = None
    privacy: dict[str, Any] | None = None
    partition: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: str | None = None
    diverged: str | None = None

    @property
    def final(self) -> RoundRecord:
        """The last round's record."""
        return self.records[-1]

    @property
    def status(self) -> str:
        """``diverged``, ``stopped_early`` or ``finished``."""
        if self.diverged is not None:
            return "diverged"
        return "stopped_early" if self.stopped_early is not None else "finished"

    def metric(self, name: str) -> list[Any]:
        """One figure over the rounds as written to ``metrics.jsonl``, e.g.
        ``history.metric("test_accuracy")`` (``None`` where a round has none)."""
        return [record.to_json().get(name) for record in self.records]


def check_output_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse an existing, non-empty output directory unless ``overwrite`` (before any work)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a directory: choose another `out`")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"output directory {out} is not empty: choose another `out` or set `overwrite`"
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
    rows = [record.to_json() for record in history.records]
    with (partial / "metrics.jsonl").open("w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(row, sort_keys=True, allow_nan=False) + "\n")
    status = {"status": history.status, "reason": history.diverged or history.stopped_early}
    (partial / "status.json").write_text(json.dumps(status) + "\n", encoding="utf-8")
    if history.model is not None:
        from safetensors.torch import save_file

        state = {name: tensor.detach().contiguous() for name, tensor in history.model.state_dict().items()}
        save_file(state, str(partial / "model.safetensors"))
    if history.privacy is not None:
        privacy = json.dumps(finite_json(history.privacy), indent=2, allow_nan=False)
        (partial / "privacy.json").write_text(privacy + "\n", encoding="utf-8")
    from securefl.fl.plots import plot_curves

    plot_curves(rows, task=_task_of(history), path=partial / "curves.png")
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


def _task_of(history: History) -> str:
    evaluation = history.records[0].evaluation if history.records else None
    return "regression" if evaluation is not None and not evaluation.is_classification else "classification"
