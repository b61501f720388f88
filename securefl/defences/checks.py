"""Parameter checks: a client inspects the weights it received for the structure attacks need.

In the spirit of Garov, Dimitrov, Jovanović & Vechev, "Hiding in Plain Sight: Disguising Data
Stealing Attacks in Federated Learning" (2023), who show that the earlier malicious-server attacks
leave principled client-side traces -- and then build SEER, which does not.  Two checks, on the
weights only (cheap: one small eigenproblem per linear layer and one pass over the first layer):

- **rank one** (:func:`rank_one_share`): a binning layer gives every unit the same measurement
  direction, and the layer after it sees every unit alike; both weights are rank one, so
  ``σ_max(W)² / ‖W‖_F²`` is 1.  For a random ``m × n`` matrix with i.i.d. entries it is about
  ``(1/√m + 1/√n)²``, and training keeps it far from 1 (measured over 1,000 honest rounds in
  ``benchmarks/malicious.py``).  Flagged above :data:`RANK_ONE_LIMIT` for weights whose smaller
  side has at least :data:`MIN_SIDE` entries (a 10-class output layer is low-rank by nature).
- **dead input units** (:func:`dead_unit_share`): for inputs in ``[0, 1]``, a unit of the first
  linear layer can fire only if ``b_i + Σ_j max(w_ij, 0) > 0``.  A layer most of whose units can
  never fire for *any* image has been switched off -- what model inconsistency sends to the
  clients it wants out of the sum (Pasquini et al., CCS 2022).  Flagged above
  :data:`DEAD_LIMIT`.

What they do not catch (said plainly): weights built to look honest.  An attacker that adds noise
to the bins' rows lowers the rank-one share at the price of blurrier recoveries (measured in
``benchmarks/malicious.py``); SEER-like attacks train an encoder/decoder pair through an honest
architecture and leave no such structure; trap weights (Boenisch et al., EuroS&P 2023) and
convolutional imprints are not looked for here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from securefl.errors import ModelRefusedError

log = logging.getLogger(__name__)

RANK_ONE_LIMIT = 0.5
MIN_SIDE = 16
DEAD_LIMIT = 0.5


@dataclass(frozen=True)
class Finding:
    """One suspicious layer: which, what was measured, and the limit it passed."""

    layer: str
    check: str
    value: float
    limit: float

    def __str__(self) -> str:
        return f"{self.layer}: {self.check} {self.value:.3f} > {self.limit}"


def rank_one_share(weight: torch.Tensor) -> float:
    """``σ_max² / ‖W‖_F²`` of a 2-D weight: the largest eigenvalue of the Gram matrix of its
    shorter side over its trace (exact, one small symmetric eigenproblem)."""
    matrix = weight.detach().to(torch.float64)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    trace = float(gram.trace())
    if trace == 0:
        return 0.0
    return float(torch.linalg.eigvalsh(gram)[-1]) / trace


def dead_unit_share(layer: nn.Linear) -> float:
    """Share of the layer's units that no input in ``[0, 1]^n`` can make positive."""
    weight = layer.weight.detach().to(torch.float64)
    best = weight.clamp_min(0).sum(1)
    if layer.bias is not None:
        best = best + layer.bias.detach().to(torch.float64)
    return float((best <= 0).double().mean())


def inspect(model: nn.Module, *, input_shape: tuple[int, ...]) -> list[Finding]:
    """Every finding of both checks on ``model`` (empty for a model that passes)."""
    findings = []
    features = math.prod(input_shape)
    first_input_layer_seen = False
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        if min(weight.shape) >= MIN_SIDE:
            share = rank_one_share(weight)
            if share > RANK_ONE_LIMIT:
                findings.append(Finding(name, "rank-one share", share, RANK_ONE_LIMIT))
        if not first_input_layer_seen and module.in_features == features:
            first_input_layer_seen = True
            dead = dead_unit_share(module)
            if dead > DEAD_LIMIT:
                findings.append(Finding(name, "dead-unit share", dead, DEAD_LIMIT))
    return findings


def check(model: nn.Module, *, input_shape: tuple[int, ...], client_id: int | None = None) -> None:
    """Raise :class:`~securefl.errors.ModelRefusedError` (and log the findings) if any check fires."""
    findings = inspect(model, input_shape=input_shape)
    if not findings:
        return
    who = "a client" if client_id is None else f"client {client_id}"
    listed = "; ".join(str(f) for f in findings)
    log.warning("%s refuses the global model: %s", who, listed)
    raise ModelRefusedError(
        f"the global model has the structure of a malicious-server attack ({listed}): refused"
    )


__all__ = [
    "DEAD_LIMIT",
    "MIN_SIDE",
    "RANK_ONE_LIMIT",
    "Finding",
    "check",
    "dead_unit_share",
    "inspect",
    "rank_one_share",
]
