"""The typed record of one round, and the one home of securefl's JSON-float rule.

The server program produces a :class:`RoundRecord` per round; the run directory stores each as one
flat JSON object (:meth:`RoundRecord.to_json`, a line of ``metrics.jsonl``).  JSON has no NaN or
infinity: :func:`json_float` and :func:`finite_json` write ``null`` for them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def json_float(value: float) -> float | None:
    """``value`` as a JSON number, or ``None`` (``null``) when it is NaN or infinite."""
    return float(value) if math.isfinite(value) else None


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float inside it (dicts, lists, tuples) replaced by ``None``."""
    if isinstance(value, float):
        return json_float(value)
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    return value


class RoundStatus(enum.StrEnum):
    """How a round ended."""

    OK = "ok"
    """A sum was released and applied."""
    EMPTY = "empty"
    """No client was sampled."""
    ABORTED = "aborted"
    """The aggregation released nothing (too few clients left): the model update saw an empty sum."""
    DIVERGED = "diverged"
    """The new global model or its test loss is NaN or infinite: the run stops here."""


@dataclass(frozen=True)
class Evaluation:
    """The global model on the held-out split: mean cross-entropy and accuracy (classification),
    or mean squared error and R² (regression)."""

    loss: float
    accuracy: float | None = None
    r2: float | None = None

    @property
    def is_classification(self) -> bool:
        return self.accuracy is not None

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss)

    def to_json(self) -> dict[str, float]:
        if self.accuracy is not None:
            return {"test_loss": self.loss, "test_accuracy": self.accuracy}
        return {"test_mse": self.loss, "test_r2": self.r2 if self.r2 is not None else math.nan}


@dataclass(frozen=True)
class RoundRecord:
    """What the server knows after one round (nothing here is one client's value).

    ``abort_reason`` says why an aborted round released nothing, ``divergence`` what became
    non-finite in a diverged one.  ``aggregation`` holds what the aggregation observed (dropouts
    per step, quantization bound, clipped fraction, ...), ``privacy`` the accountants' figures
    after the round, ``declined`` how many sampled clients declined, by reason.
    """

    round: int
    status: RoundStatus
    clients: int
    excluded_clients: int
    survivors: int
    evaluation: Evaluation | None = None
    train_loss: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    abort_reason: str | None = None
    divergence: str | None = None
    declined: Mapping[str, int] = field(default_factory=dict)
    aggregation: Mapping[str, Any] = field(default_factory=dict)
    privacy: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """One flat JSON object (a line of ``metrics.jsonl``); non-finite floats become ``null``."""
        flat: dict[str, Any] = {
            "round": self.round,
            "status": self.status.value,
            "clients": self.clients,
            "excluded_clients": self.excluded_clients,
            "survivors": self.survivors,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "seconds": self.seconds,
            **dict(self.aggregation),
            **dict(self.privacy),
        }
        if self.train_loss is not None:
            flat["train_loss"] = self.train_loss
        if self.abort_reason is not None:
            flat["abort_reason"] = self.abort_reason
        if self.divergence is not None:
            flat["divergence"] = self.divergence
        if self.declined:
            flat["declined"] = dict(self.declined)
            flat["non_finite_dropped"] = self.declined.get("non_finite_update", 0)
        if self.evaluation is not None:
            flat.update(self.evaluation.to_json())
        return finite_json(flat)
