"""The FedAvg strategy (McMahan et al., AISTATS 2017): which clients train, and how their summed
updates become the next global model.

The server side of a round is exactly :class:`ClientSampler` (before) and :class:`WeightedMean`
(after); between the two, it only ever receives an :class:`~securefl.fl.types.Aggregate`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from securefl.fl.types import Aggregate, Contribution, Update


class ClientSampler:
    """Client selection: ``fixed`` picks ``per_round`` clients uniformly without replacement;
    ``poisson`` includes each client independently with probability ``per_round / num_clients``
    (the sampling user-level DP accounting assumes).

    By default the draw is seeded by ``(seed, round)``: plain runs are reproducible. With
    ``secret=True`` every round draws from a generator seeded by the operating system
    (:mod:`secrets`) and never stored, and ``seed`` is not used: user-level DP's amplification by
    sampling (Abadi et al. 2016; McMahan et al. 2018) assumes the server does not know who was
    sampled, and a seed in ``config.json`` would let it recompute every round's sample.

    Clients that cannot train (an exhausted privacy budget) are never picked.
    """

    def __init__(
        self, *, num_clients: int, per_round: int, scheme: str = "fixed", seed: int = 0, secret: bool = False
    ):
        self.num_clients = num_clients
        self.per_round = per_round
        self.scheme = scheme
        self.secret = secret
        self.seed = None if secret else seed

    @property
    def sample_rate(self) -> float:
        return self.per_round / self.num_clients

    def sample(self, round_index: int, eligible: Sequence[int]) -> list[int]:
        seed = secrets.randbits(128) if self.secret else [self.seed, round_index, 0x5A]
        rng = np.random.default_rng(seed)
        candidates = np.asarray(sorted(eligible), dtype=np.int64)
        if self.scheme == "poisson":
            chosen = candidates[rng.random(len(candidates)) < self.sample_rate]
        else:
            count = min(self.per_round, len(candidates))
            chosen = rng.choice(candidates, size=count, replace=False)
        return sorted(int(c) for c in chosen)


def weight_by_samples(update: Update) -> Contribution:
    """FedAvg's client side: send ``n_k * delta_k`` and ``n_k``."""
    return Contribution(
        client_id=update.client_id,
        weighted_delta=update.delta * update.num_samples,
        weight=float(update.num_samples),
        train_loss=update.train_loss,
    )


class WeightedMean:
    """FedAvg's server side: ``w + Σ n_k Δ_k / Σ n_k``; an empty round leaves ``w`` unchanged."""

    def __call__(self, global_params: torch.Tensor, aggregate: Aggregate) -> torch.Tensor:
        if aggregate.weight_sum <= 0:
            return global_params
        return global_params + aggregate.weighted_delta_sum / aggregate.weight_sum


class PlainSum:
    """Aggregation without protection: the server adds the contributions it receives in clear."""

    def aggregate(
        self,
        contributions: list[Contribution],
        *,
        round_index: int,
        contexts: Mapping[int, bytes] | None = None,
    ) -> Aggregate:
        """The plain sum; ``contexts`` are ignored (there is no session to bind them to)."""
        ordered = sorted(contributions, key=lambda c: c.client_id)
        if not ordered:
            raise ValueError("PlainSum needs at least one contribution")
        total = torch.zeros_like(ordered[0].weighted_delta)
        for contribution in ordered:
            total += contribution.weighted_delta
        vector_bytes = total.numel() * total.element_size()
        return Aggregate(
            weighted_delta_sum=total,
            weight_sum=sum(c.weight for c in ordered),
            survivors=tuple(c.client_id for c in ordered),
            train_loss_sum=sum(c.train_loss * c.weight for c in ordered),
            details={"bytes_up": len(ordered) * (vector_bytes + 8)},
        )
