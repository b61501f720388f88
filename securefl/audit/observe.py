"""What the curious server observes about the canaries, accumulated into one score per canary.

The white-box threat model of federated learning (Steinke, Nasr and Jagielski 2023:
the auditor sees the updates, not just the final model): the server reads the canary coordinates
of what reaches it every round and adds them up.  For a Dirac canary the coordinate is its
(clipped) gradient plus Gaussian noise, so the sum over rounds is the likelihood-ratio statistic
of the composed Gaussian mechanism.

- :class:`ObservedChannel` wraps the aggregation's server half and reads one client's plain
  contribution as it arrives (sample-level canaries inside that client: the server sees each
  update under plain aggregation);
- :class:`ObservedServerUpdate` wraps the server update and reads the released change of the
  global model (user-level canary clients under DP-FedAvg: only the noised sum is released);
- :func:`loss_scores` is the black-box view: the final model's loss on each canary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from securefl.errors import DecodeError
from securefl.fl.codec import decode
from securefl.fl.messages import PlainContribution
from securefl.fl.turns import aggregate_in_process
from securefl.fl.types import (
    Aggregate,
    Aggregation,
    AggregationClient,
    AggregationRound,
    Contribution,
    PrivacyAccounting,
    ServerUpdate,
)


class CanaryScores:
    """The sum, over the rounds observed, of the last ``canaries`` coordinates of a vector."""

    def __init__(self, canaries: int) -> None:
        self.total = np.zeros(canaries, dtype=np.float64)
        self.rounds = 0

    def add(self, vector: torch.Tensor) -> None:
        self.total += vector[-len(self.total) :].detach().double().numpy()
        self.rounds += 1


class ObservedChannel:
    """An aggregation whose server half also reads ``client_id``'s update
    (``weighted_delta / weight``) from the plain contribution it receives: what a curious server
    sees without secure aggregation (a masked payload shows it nothing, and is not read)."""

    def __init__(self, inner: Aggregation, *, client_id: int, canaries: int) -> None:
        self.inner = inner
        self.client_id = client_id
        self.scores = CanaryScores(canaries)

    @property
    def fewest_clients(self) -> int:
        return self.inner.fewest_clients

    def open_round(
        self, *, round_index: int, participants: Sequence[int], context: bytes
    ) -> AggregationRound:
        inner = self.inner.open_round(round_index=round_index, participants=participants, context=context)
        return _ObservedRound(inner, self)

    def client(self, client_id: int) -> AggregationClient:
        return self.inner.client(client_id)

    def aggregate(
        self,
        contributions: list[Contribution],
        *,
        round_index: int,
        contexts: Mapping[int, bytes] | None = None,
    ) -> Aggregate:
        aggregate, _ = aggregate_in_process(self, contributions, round_index=round_index, contexts=contexts)
        return aggregate


class _ObservedRound:
    """The server half of :class:`ObservedChannel`: reads, then passes everything on."""

    def __init__(self, inner: AggregationRound, channel: ObservedChannel) -> None:
        self.inner = inner
        self.channel = channel

    def setup_for(self, client_id: int) -> bytes:
        return self.inner.setup_for(client_id)

    def receive(self, client_id: int, payload: bytes) -> None:
        if client_id == self.channel.client_id:
            with contextlib.suppress(DecodeError):
                message = decode(payload)
                if isinstance(message, PlainContribution) and message.weight > 0:
                    self.channel.scores.add(message.weighted_delta / message.weight)
        self.inner.receive(client_id, payload)

    def close_step(self) -> list[tuple[int, bytes]]:
        return self.inner.close_step()

    @property
    def result(self) -> Aggregate | None:
        return self.inner.result


class ObservedServerUpdate:
    """A server update that also reads each released change of the global model."""

    def __init__(self, inner: ServerUpdate, *, canaries: int) -> None:
        self.inner = inner
        self.scores = CanaryScores(canaries)

    def __call__(self, global_params: torch.Tensor, aggregate: Aggregate) -> torch.Tensor:
        released = self.inner(global_params, aggregate)
        self.scores.add(released - global_params)
        return released

    def round_metrics(self) -> dict[str, float]:
        return self.inner.round_metrics() if isinstance(self.inner, PrivacyAccounting) else {}

    def ledger(self) -> dict:
        return self.inner.ledger() if isinstance(self.inner, PrivacyAccounting) else {}


def loss_scores(model: torch.nn.Module, rows: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Black box: minus the final model's cross-entropy on each canary (higher = more likely used)."""
    model.eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(rows), labels, reduction="none")
    return (-loss).double().numpy()


__all__ = ["CanaryScores", "ObservedChannel", "ObservedServerUpdate", "loss_scores"]
