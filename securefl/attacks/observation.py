"""The threat model: exactly what an honest-but-curious server observes in one round.

The server chose and sent a global model (architecture name and parameter vector); what came back
is either one client's update (weights before − weights after, the gradient times the learning
rate for a single local step, as in DLG's FedSGD setting), or, under secure aggregation, only the
sample-weighted mean of the N clients' updates (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017). Everything else the server knows about the round
is one :class:`PublicKnowledge`: the architecture it chose and the public protocol parameters
(input shape, number of classes, batch size, number of local steps, learning rate), plus what the
defence announces (clients summed, clipping norm, pruning ratio).

An :class:`Observation` copies every tensor it is given, so it never shares memory with a client's
data or model; the attacks in :mod:`securefl.attacks.inversion` take an observation and nothing
else (the threat model of Geiping et al. 2020 and of the breaching library).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch


class ObservedKind(StrEnum):
    """Where the observed vector came from."""

    CLIENT_UPDATE = "client-update"
    """One client's own update (no secure aggregation)."""
    AGGREGATE = "aggregate"
    """The weighted mean of ``num_clients`` clients' updates: all that secure aggregation reveals."""


@dataclass(frozen=True, kw_only=True)
class PublicKnowledge:
    """What the server knows about the round without looking at any client's data."""

    model_name: str
    """The architecture the server sent (a :data:`securefl.models.MODELS` name, or the attack's own)."""
    input_shape: tuple[int, ...]
    num_classes: int
    batch_size: int
    """Samples each client trains on in the round (each client trains full-batch on them)."""
    local_steps: int
    """Full-batch SGD steps each client runs; 1 is FedSGD (the update is lr × gradient)."""
    learning_rate: float
    num_clients: int = 1
    """Clients behind the observed vector (> 1 only for an aggregate)."""
    clip_norm: float | None = None
    """Clients scale their update to at most this L2 norm (announced by the protocol)."""
    prune_ratio: float | None = None
    """Clients zero this fraction of the smallest-magnitude entries of every layer's update."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(size) for size in self.input_shape))
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        if self.batch_size < 1 or self.local_steps < 1 or self.num_clients < 1:
            raise ValueError("batch_size, local_steps and num_clients must be at least 1")
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be positive")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError("clip_norm must be positive")
        if self.prune_ratio is not None and not 0 <= self.prune_ratio < 1:
            raise ValueError("prune_ratio must be in [0, 1)")

    @property
    def total_samples(self) -> int:
        """Images behind the observed vector: what a full reconstruction must produce."""
        return self.batch_size * self.num_clients


@dataclass(frozen=True, eq=False, kw_only=True)
class Observation:
    """What the server saw: the model it sent and the vector that came back.

    ``observed_update`` is ``parameters before − parameters after`` in
    ``parameters_to_vector`` order (for an aggregate: the sample-weighted mean of the clients'
    such vectors). Both tensors are private float64 copies.
    """

    model_parameters: torch.Tensor
    observed_update: torch.Tensor
    kind: ObservedKind
    public: PublicKnowledge

    def __post_init__(self) -> None:
        parameters = self.model_parameters.detach().to(torch.float64).flatten().clone()
        update = self.observed_update.detach().to(torch.float64).flatten().clone()
        if parameters.shape != update.shape:
            raise ValueError(
                f"observed update has {update.numel()} values, the model has {parameters.numel()}"
            )
        if not torch.isfinite(update).all():
            raise ValueError("observed update holds NaN or infinite values")
        if self.kind == ObservedKind.CLIENT_UPDATE and self.public.num_clients != 1:
            raise ValueError("a single client's update must have public.num_clients == 1")
        object.__setattr__(self, "model_parameters", parameters)
        object.__setattr__(self, "observed_update", update)
        object.__setattr__(self, "kind", ObservedKind(self.kind))
