"""The values that cross the four plug points of a federated round.

A round is: each sampled client *trains* (a :class:`ClientTrainer`) and produces an
:class:`Update`; the update is *transformed* on the client before it leaves (clipping,
quantization) into a :class:`Contribution`; an aggregation channel *sums* the contributions
into an :class:`Aggregate` (a plain sum, or the secure-aggregation protocol whose server side can
only output the sum); the strategy turns the aggregate into the next global model.  The aggregation
is split into the half each program runs (:class:`AggregationRound` on the server,
:class:`AggregationClient` on each client), which exchange bytes.

Model state travels as one flat float32 vector of the model's parameters
(``torch.nn.utils.parameters_to_vector`` order), which is what both differential privacy
(norms, clipping) and secure aggregation (vectors over a ring) want.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


@dataclass(frozen=True)
class ClientShard:
    """One client's local data: features and targets, already on the right device and dtype."""

    client_id: int
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Update:
    """What local training produced: parameters after minus parameters before."""

    client_id: int
    delta: torch.Tensor
    num_samples: int
    train_loss: float


@dataclass(frozen=True)
class Contribution:
    """What leaves a client for aggregation: ``weight * delta`` and the weight itself.

    The channel sums both, so the server can divide two sums without ever seeing one client's
    sample count (with secure aggregation the two travel in the same masked vector).
    """

    client_id: int
    weighted_delta: torch.Tensor
    weight: float
    train_loss: float


@dataclass(frozen=True)
class Aggregate:
    """The only thing the server side learns in a round."""

    weighted_delta_sum: torch.Tensor
    weight_sum: float
    survivors: tuple[int, ...]
    train_loss_sum: float
    details: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, like: torch.Tensor) -> Aggregate:
        """The aggregate of a round in which no client's update arrived."""
        return cls(torch.zeros_like(like), 0.0, (), 0.0)


class ClientTrainer(Protocol):
    """How a client trains: global parameters and a shard in, an :class:`Update` out.

    ``can_train`` lets a trainer with a privacy budget take a client out of sampling.
    """

    def can_train(self, client_id: int) -> bool: ...

    def train(
        self,
        *,
        global_params: torch.Tensor,
        shard: ClientShard,
        round_index: int,
        generator: torch.Generator,
    ) -> Update: ...


class UpdateTransform(Protocol):
    """How an update is changed on the client before it leaves (e.g. clipped for DP-FedAvg)."""

    def __call__(self, update: Update) -> Contribution: ...


class ServerUpdate(Protocol):
    """How the aggregate becomes the next global parameters (FedAvg's weighted mean, DP-FedAvg)."""

    def __call__(self, global_params: torch.Tensor, aggregate: Aggregate) -> torch.Tensor: ...


@runtime_checkable
class PrivacyAccounting(Protocol):
    """Anything that spends privacy budget reports it: per round and as a final ledger."""

    def round_metrics(self) -> dict[str, float]:
        """Privacy figures after the latest round, merged into that round's metrics record."""
        ...

    def ledger(self) -> dict:
        """The whole record, written to the run directory's ``privacy.json``."""
        ...


class AggregationRound(Protocol):
    """The server half of one round of an aggregation: it sees only what the protocol lets it.

    The server program opens it for the round's participants, sends each the bytes of
    :meth:`setup_for` with the global model, feeds it every payload a client sends
    (:meth:`receive`), and calls :meth:`close_step` when a step's deadline has passed (in a
    simulation: once every client has answered); its return value is the next step's payloads.
    Once :attr:`result` is set the round's aggregate is known.  :meth:`close_step` raises
    :class:`~securefl.errors.RoundAbortedError` when the round cannot release a sum.
    """

    def setup_for(self, client_id: int) -> bytes: ...

    def receive(self, client_id: int, payload: bytes) -> None:
        """One payload from ``client_id`` (the transport authenticated the sender);
        :class:`~securefl.errors.RemoteProtocolError` for a payload that must be refused."""
        ...

    def close_step(self) -> list[tuple[int, bytes]]: ...

    @property
    def result(self) -> Aggregate | None: ...


class AggregationClient(Protocol):
    """The client half of an aggregation: one per client, kept across its rounds."""

    def check_setup(self, *, round_index: int, setup: bytes) -> object:
        """Refuse (:class:`~securefl.errors.ProtocolError`) a setup this client would not join,
        before it trains: a refused round must cost it nothing, privacy budget included."""
        ...

    def start(
        self, contribution: Contribution, *, round_index: int, setup: bytes, context: bytes
    ) -> list[bytes]:
        """Join round ``round_index`` with ``contribution``: the first payloads to send.
        ``context`` is what the client computed from the model and settings it received
        (:func:`securefl.defences.consistency.model_context`); an aggregation with a session binds
        it there. Raises :class:`~securefl.errors.NonFiniteUpdateError` for an update it cannot
        encode and :class:`~securefl.errors.ProtocolError` for a setup it refuses."""
        ...

    def receive(self, payload: bytes) -> list[bytes]: ...


class Aggregation(Protocol):
    """How contributions are summed, as a server half and client halves that exchange bytes.

    ``aggregate`` runs both halves in one process (both in :mod:`securefl.fl.turns`' synchronous
    turns) on contributions already computed: the research API, and what attacks measure.
    """

    @property
    def fewest_clients(self) -> int:
        """The fewest sampled clients a round of this aggregation can start with."""
        ...

    def open_round(
        self, *, round_index: int, participants: Sequence[int], context: bytes
    ) -> AggregationRound: ...

    def client(self, client_id: int) -> AggregationClient: ...

    def aggregate(
        self,
        contributions: list[Contribution],
        *,
        round_index: int,
        contexts: Mapping[int, bytes] | None = None,
    ) -> Aggregate: ...


@runtime_checkable
class SignedAggregation(Aggregation, Protocol):
    """An aggregation whose client halves sign what they send (secure aggregation against an
    active server): each client half is made with its client's own Ed25519 signing key, and the
    server half checks the signatures against the public keys the channel holds
    (:meth:`with_verify_keys`).  Without a signing key a client half runs unsigned (passive mode).
    """

    def with_verify_keys(self, verify_keys: Mapping[int, Ed25519PublicKey]) -> SignedAggregation:
        """This aggregation with another directory of the clients' public signing keys."""
        ...

    def client(
        self, client_id: int, *, signing_key: Ed25519PrivateKey | None = None
    ) -> AggregationClient: ...
