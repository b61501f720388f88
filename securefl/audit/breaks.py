"""Deliberately broken DP mechanisms, for showing that an audit catches a false guarantee.

A research switch, never a training option.  Each variant builds the real securefl classes
(:class:`~securefl.privacy.DPSGDTrainer`, :class:`~securefl.privacy.DPFedAvgServerUpdate`) through
their public constructors with the wrong parameters, while the ε the run *claims* is computed for
the parameters it should have used — the shape of real DP bugs (Tramèr, Terzis, Steinke, Song,
Jagielski, Carlini, "Debugging Differential Privacy: A Case Study for Privacy Auditing", 2022):

- ``noise``: the noise multiplier is scaled by ``factor`` (< 1), the accountant is told the original;
- ``clip``: clipping is skipped (the clip norm is made huge, the noise std kept at ``z × clip``);
  sample-level: per-example gradients; user-level: client updates go to the sum unclipped;
- ``sample-rate``: the accountant is told the sample rate times ``factor`` (< 1), so it credits
  more amplification by subsampling than the run gets; the noise stays what the true rate asked for.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from securefl.config import CentralDPConfig, DPConfig
from securefl.errors import ConfigError
from securefl.fl.types import Contribution, Update

BREAKS = ("noise", "clip", "sample-rate")

CLIP_OFF = 1e6
"""``clip``: the clip norm is multiplied by this (and the noise multiplier divided by it)."""


@dataclass(frozen=True)
class Break:
    """One deliberate weakness: ``variant`` from :data:`BREAKS`, ``factor`` in (0, 1)."""

    variant: str
    factor: float = 0.1

    def __post_init__(self) -> None:
        if self.variant not in BREAKS:
            raise ConfigError(f"unknown break {self.variant!r}: set `weakness` to one of {', '.join(BREAKS)}")
        if not (0 < self.factor < 1 and math.isfinite(self.factor)):
            raise ConfigError(f"break factor {self.factor} must be in (0, 1): change `weakness.factor`")

    def claimed_rate(self, sample_rate: float) -> float:
        """The sample rate the accountant is told."""
        return sample_rate * self.factor if self.variant == "sample-rate" else sample_rate

    def dp_config(self, config: DPConfig, *, noise_multiplier: float) -> DPConfig:
        """The DP-SGD configuration a client really trains with (no ε budget: the noise is fixed)."""
        actual = dataclasses.replace(config, noise_multiplier=noise_multiplier, target_epsilon=None)
        if self.variant == "noise":
            return dataclasses.replace(actual, noise_multiplier=noise_multiplier * self.factor)
        if self.variant == "clip":
            return dataclasses.replace(
                actual,
                max_grad_norm=config.max_grad_norm * CLIP_OFF,
                noise_multiplier=noise_multiplier / CLIP_OFF,
            )
        return actual

    def central_noise(self, config: CentralDPConfig) -> float:
        """The noise multiplier the server really uses."""
        return config.noise_multiplier * (self.factor if self.variant == "noise" else 1.0)


def unclipped_update(update: Update) -> Contribution:
    """``clip`` at user level: the update goes to the sum with weight 1 and no clipping (no loss)."""
    return Contribution(client_id=update.client_id, weighted_delta=update.delta, weight=1.0, train_loss=0.0)


__all__ = ["BREAKS", "CLIP_OFF", "Break", "unclipped_update"]
