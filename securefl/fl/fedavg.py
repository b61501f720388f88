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

from securefl.errors import NonFiniteUpdateError, RemoteProtocolError, RoundAbortedError
from securefl.fl.codec import decode, encode
from securefl.fl.messages import PlainContribution
from securefl.fl.turns import aggregate_in_process
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
        # self.seed is None exactly when the draw is secret
        seed = secrets.randbits(128) if self.seed is None else [self.seed, round_index, 0x5A]
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
    """FedAvg's server side: ``w + Σ n_k Δ_k / Σ n_k``; an empty round leaves ``w`` unchanged
    (a copy: the new model never aliases the old one)."""

    def __call__(self, global_params: torch.Tensor, aggregate: Aggregate) -> torch.Tensor:
        if aggregate.weight_sum <= 0:
            return global_params.clone()
        return global_params + aggregate.weighted_delta_sum / aggregate.weight_sum


class PlainSum:
    """Aggregation without protection: the server adds the contributions it receives in clear.

    ``vector_length`` (the number of model parameters) makes the server half refuse a
    contribution of any other length as it arrives; without it (research use on contributions
    already computed) the first contribution of a round sets the length.
    """

    def __init__(self, *, vector_length: int | None = None) -> None:
        self.vector_length = vector_length

    @property
    def fewest_clients(self) -> int:
        """One: a plain sum of one client is that client's update, in clear anyway."""
        return 1

    def open_round(self, *, round_index: int, participants: Sequence[int], context: bytes) -> PlainSumRound:
        """The server half; ``context`` is not used (a plain sum has no session to bind it to)."""
        return PlainSumRound(
            round_index=round_index, participants=participants, vector_length=self.vector_length
        )

    def client(self, client_id: int) -> PlainSumClient:
        return PlainSumClient()

    def aggregate(
        self,
        contributions: list[Contribution],
        *,
        round_index: int,
        contexts: Mapping[int, bytes] | None = None,
    ) -> Aggregate:
        """The plain sum of ``contributions``, both halves in one process (none at all:
        :class:`~securefl.errors.RoundAbortedError`, as the server half raises)."""
        aggregate, _ = aggregate_in_process(self, contributions, round_index=round_index, contexts=contexts)
        return aggregate


class PlainSumClient:
    """A client's half of a plain sum: it sends its contribution in clear, once."""

    def check_setup(self, *, round_index: int, setup: bytes) -> None:
        if setup:
            raise RemoteProtocolError("a plain sum has no setup: refused")

    def start(
        self, contribution: Contribution, *, round_index: int, setup: bytes, context: bytes
    ) -> list[bytes]:
        """The contribution in clear; :class:`~securefl.errors.NonFiniteUpdateError` for a NaN or
        infinite update (the client declines the round, as under secure aggregation, instead of
        turning the global model into NaN)."""
        self.check_setup(round_index=round_index, setup=setup)
        if not bool(torch.isfinite(contribution.weighted_delta).all()):
            raise NonFiniteUpdateError(
                "the update holds NaN or inf entries: the client's training diverged (lower `lr`); "
                "it sends nothing this round"
            )
        message = PlainContribution(
            weighted_delta=contribution.weighted_delta.to(torch.float32),
            weight=contribution.weight,
            train_loss=contribution.train_loss,
        )
        return [encode(message)]

    def receive(self, payload: bytes) -> list[bytes]:
        raise RemoteProtocolError("a plain sum sends its clients nothing after the setup: refused")


class PlainSumRound:
    """The server half of a plain sum: after one step, the sum of what arrived, in client-id order."""

    def __init__(
        self, *, round_index: int, participants: Sequence[int], vector_length: int | None = None
    ) -> None:
        self.round_index = round_index
        self.participants = frozenset(participants)
        self.vector_length = vector_length
        self._received: dict[int, PlainContribution] = {}
        self._result: Aggregate | None = None

    def setup_for(self, client_id: int) -> bytes:
        return b""

    def receive(self, client_id: int, payload: bytes) -> None:
        if self._result is not None:
            raise RemoteProtocolError(f"contribution from client {client_id} after the sum: refused")
        if client_id not in self.participants:
            raise RemoteProtocolError(f"client {client_id} is not a participant of this round: refused")
        if client_id in self._received:
            raise RemoteProtocolError(f"second contribution from client {client_id}: refused as a replay")
        message = decode(payload)
        if not isinstance(message, PlainContribution):
            raise RemoteProtocolError(f"a plain sum expects contributions, got a {type(message).__name__}")
        if not bool(torch.isfinite(message.weighted_delta).all()):
            raise RemoteProtocolError(f"client {client_id} sent NaN or infinite entries: refused")
        if message.weight == 0 and bool(message.weighted_delta.any()):
            raise RemoteProtocolError(f"client {client_id} sent an update with weight 0: refused")
        length = message.weighted_delta.numel()
        if self.vector_length is None:
            self.vector_length = length
        if length != self.vector_length:
            raise RemoteProtocolError(
                f"client {client_id} sent {length} values, the round sums {self.vector_length}: refused"
            )
        self._received[client_id] = message

    def close_step(self) -> list[tuple[int, bytes]]:
        if not self._received:
            raise RoundAbortedError(
                f"none of the {len(self.participants)} sampled clients sent a contribution",
                details={"survivors": 0},
            )
        ordered = [self._received[c] for c in sorted(self._received)]
        total = torch.zeros_like(ordered[0].weighted_delta)
        for contribution in ordered:
            total += contribution.weighted_delta
        self._result = Aggregate(
            weighted_delta_sum=total,
            weight_sum=sum(c.weight for c in ordered),
            survivors=tuple(sorted(self._received)),
            train_loss_sum=sum(c.train_loss * c.weight for c in ordered),
        )
        return []

    @property
    def result(self) -> Aggregate | None:
        return self._result
