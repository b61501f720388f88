"""Parameter checks: a client inspects the model it received *on its own data* for the structure
attacks need.

In the spirit of Garov, Dimitrov, Jovanović & Vechev, "Hiding in Plain Sight: Disguising Data
Stealing Attacks in Federated Learning" (2023), who show that the earlier malicious-server attacks
leave principled client-side traces -- and then build SEER, which does not.  Both checks look only
at what the client's own batch exercises: one forward pass records the input and the output of
every linear layer, and the checks read the weights through them.  (An earlier version read the
weights over the whole input cube; random weights on the pixels that are zero in every image and
large rows on switched-off units evaded it at no cost to the attack.)

Both run on every linear layer but the last (the output layer: low-rank by nature, no ReLU after).

- **rank one on the data** (:func:`rank_one_share_on`): a layer's weight restricted to the units
  its input on the batch switches on (output above 0 for some image) and to the subspace that
  input spans, ``W[active] Q`` with ``Q`` an orthonormal basis of that span.  A binning layer
  gives every unit the same measurement direction, and the layer after it sees every unit alike:
  the restriction is rank one and ``σ_max² / ‖W[active] Q‖_F²`` is 1.  For a random ``m × r``
  matrix it is about ``(1/√m + 1/√r)²`` (0.25 for 64 units and a centred batch of 8, rank 7).
  Flagged above :data:`RANK_ONE_LIMIT` when both sides are at least :data:`MIN_SIDE` (a batch of fewer than
  seven distinct images, or a layer with fewer active units, is not checked).  The span is that
  of the centred batch: the mean image, which every honest unit also weighs, is left out, so a
  binning layer still gives exactly 1.  Honest training at moderate learning rates stays below
  the limit (``benchmarks/malicious.py``'s honest section gives the rates and the largest share);
  a diverging model (the mlp at lr 1.0) does not.  Weights on directions the data never takes
  (pixels that are 0 in every image) and rows of units the data never switches on are outside
  the restriction: they change nothing the client computes, and nothing this check reads.
- **dead units on the data** (:func:`dead_unit_share_on`): share of a hidden layer's units
  that no image of the batch makes positive.  A layer most of
  whose units stay off on the client's data has been switched off for that client -- what model
  inconsistency sends to the clients it wants out of the sum (Pasquini et al., CCS 2022).
  Flagged above :data:`DEAD_LIMIT`.

What they do not catch (said plainly): weights built to look honest on the data -- an adaptive
attacker evades them.  ``benchmarks/malicious.py``'s evasion section measures a hand-made one (32
bins hidden among 32 scaled honest units) that every client accepts and that still reads a few
percent of the images out of a 16-client sum; noise on the bins' rows lowers the rank-one share
at the price of blurrier recoveries; SEER-like attacks train an encoder/decoder pair through
an honest architecture and leave no such structure; trap weights (Boenisch et al., EuroS&P 2023)
and convolutional imprints are not looked for here.  The checks assume a module the client built
itself (the pinned architecture, loaded with the server's flat parameter vector): they run a
forward pass, and code the server ships with a module (hooks, a custom ``forward``) would run in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from securefl.errors import ConfigError, ModelRefusedError

log = logging.getLogger(__name__)

RANK_ONE_LIMIT = 0.8
MIN_SIDE = 6
DEAD_LIMIT = 0.8
_RANK_TOLERANCE = 1e-5
"""Singular values of the layer input below this share of the largest do not count as span."""


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
    """``σ_max² / ‖W‖_F²`` of a 2-D matrix: the largest eigenvalue of the Gram matrix of its
    shorter side over its trace (exact, one small symmetric eigenproblem)."""
    matrix = weight.detach().to(torch.float64)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    trace = float(gram.trace())
    if trace == 0:
        return 0.0
    return float(torch.linalg.eigvalsh(gram)[-1]) / trace


def data_span(inputs: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (``features × r``) of the span of the rows of ``inputs`` less their mean."""
    matrix = inputs.detach().to(torch.float64).flatten(1)
    matrix = matrix - matrix.mean(0)
    _, values, vh = torch.linalg.svd(matrix, full_matrices=False)
    if len(values) == 0 or values[0] == 0:
        return matrix.new_zeros(matrix.shape[1], 0)
    keep = values > _RANK_TOLERANCE * values[0]
    return vh[keep].T


def restricted_weight(weight: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """``W[active] Q``: the weight as the batch sees it (units it switches on, directions it spans)."""
    active = (outputs.detach() > 0).any(0)
    return weight.detach().to(torch.float64)[active] @ data_span(inputs)


def rank_one_share_on(weight: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor) -> float | None:
    """:func:`rank_one_share` of :func:`restricted_weight`, or ``None`` when a side of the
    restriction is under :data:`MIN_SIDE` (too little data to tell)."""
    restricted = restricted_weight(weight, inputs, outputs)
    if min(restricted.shape) < MIN_SIDE:
        return None
    return rank_one_share(restricted)


def dead_unit_share_on(outputs: torch.Tensor) -> float:
    """Share of units (columns of ``outputs``, batch × units) that no row makes positive."""
    return float((~(outputs.detach() > 0).any(0)).double().mean())


def layer_io(model: nn.Module, data: torch.Tensor) -> list[tuple[str, nn.Linear, torch.Tensor, torch.Tensor]]:
    """``(name, layer, input, output)`` of every linear layer on one forward pass of ``data``."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]

    def recorder(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def record(_module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen.setdefault(name, (args[0].flatten(1), output.flatten(1)))

        return record

    hooks = [module.register_forward_hook(recorder(name)) for name, module in layers]
    try:
        with torch.no_grad():
            model(data)
    finally:
        for hook in hooks:
            hook.remove()
    return [(name, module, *seen[name]) for name, module in layers if name in seen]


def inspect(model: nn.Module, *, data: torch.Tensor) -> list[Finding]:
    """Every finding of both checks on ``model`` over the batch ``data`` (empty for a pass)."""
    if data.ndim < 2 or len(data) == 0:
        raise ConfigError("the parameter checks need the client's batch (at least one example)")
    findings = []
    io = layer_io(model, data)
    for index, (name, layer, inputs, outputs) in enumerate(io):
        if index == len(io) - 1:
            break  # the output layer: low-rank by nature, and no ReLU after it
        share = rank_one_share_on(layer.weight, inputs, outputs)
        if share is not None and share > RANK_ONE_LIMIT:
            findings.append(Finding(name, "rank-one share on the data", share, RANK_ONE_LIMIT))
        dead = dead_unit_share_on(outputs)
        if dead > DEAD_LIMIT:
            findings.append(Finding(name, "dead-unit share on the data", dead, DEAD_LIMIT))
    return findings


def check(model: nn.Module, *, data: torch.Tensor, client_id: int | None = None) -> None:
    """Raise :class:`~securefl.errors.ModelRefusedError` (and log the findings) if any check fires."""
    findings = inspect(model, data=data)
    if not findings:
        return
    who = "a client" if client_id is None else f"client {client_id}"
    listed = "; ".join(str(f) for f in findings)
    log.warning("%s refuses the global model: %s", who, listed)
    raise ModelRefusedError(
        f"the global model has the structure of a malicious-server attack on this client's data "
        f"({listed}): refused"
    )


__all__ = [
    "DEAD_LIMIT",
    "MIN_SIDE",
    "RANK_ONE_LIMIT",
    "Finding",
    "check",
    "data_span",
    "dead_unit_share_on",
    "inspect",
    "layer_io",
    "rank_one_share",
    "rank_one_share_on",
    "restricted_weight",
]
