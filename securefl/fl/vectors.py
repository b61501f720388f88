"""Model parameters as one flat vector, copied in and out.

``torch.nn.utils.vector_to_parameters`` makes each parameter a *view* of the vector it is given,
so training the model afterwards silently rewrites that vector (the global model, in FedAvg).
:func:`load_vector` copies instead; use it whenever a model is loaded from a vector that must not
change.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def load_vector(parameters: Iterable[torch.Tensor], vector: torch.Tensor) -> None:
    """Copy ``vector`` into ``parameters`` (in ``parameters_to_vector`` order), never aliasing it."""
    parameters = list(parameters)
    expected = sum(p.numel() for p in parameters)
    if vector.numel() != expected:
        raise ValueError(f"vector has {vector.numel()} values, the parameters need {expected}")
    with torch.no_grad():
        for parameter, chunk in zip(parameters, vector.split([p.numel() for p in parameters]), strict=True):
            parameter.copy_(chunk.view_as(parameter))


def to_vector(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """A detached copy of ``parameters`` as one flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in parameters])
