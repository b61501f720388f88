"""The client program of federated learning, sans-IO: bytes in, bytes out, no sockets or clocks.

A :class:`FederatedClient` holds what never leaves its owner: its data (a
:class:`~securefl.fl.types.ClientShard`), its trainer (plain local SGD, or Opacus DP-SGD with the
client's own privacy ledger, which it enforces itself -- in a deployment no server could), its
update transform (e.g. DP-FedAvg's clipping) and its half of the aggregation (for secure
aggregation: its :class:`~securefl.protocols.secagg.ClientProtocol` and the round-id guard it
keeps across rounds).  On a :class:`~securefl.fl.messages.TrainRequest` it computes the context of
the model and settings it received (:func:`~securefl.defences.consistency.model_context`, bound
into a secure-aggregation session), trains (McMahan et al. 2017, ClientUpdate), transforms the
update and starts the aggregation; every later :class:`~securefl.fl.messages.AggregationMessage`
goes to its aggregation half.  It answers with bytes only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from securefl.defences.consistency import model_context
from securefl.errors import DecodeError, NonFiniteUpdateError, ProtocolError, RemoteProtocolError
from securefl.fl.codec import decode, encode
from securefl.fl.messages import AggregationMessage, Availability, Decline, DeclineReason, TrainRequest
from securefl.fl.types import AggregationClient, ClientShard, ClientTrainer, UpdateTransform

log = logging.getLogger(__name__)

GeneratorFor = Callable[[int, int], torch.Generator]
"""``(round_index, client_id) -> generator`` of the simulation randomness (batch shuffling)."""


@runtime_checkable
class GuardedAggregationClient(Protocol):
    """An aggregation half that keeps a guard across rounds (secure aggregation's
    :class:`~securefl.protocols.secagg.RoundIdGuard`: the round ids it has taken part in)."""

    guard: object


@dataclass(frozen=True)
class ClientMemory:
    """What a client program must remember between its rounds, and nothing else: the last round
    it trained (it refuses that one and any before: a replay) and its aggregation half's guard.
    A simulation keeps this of an idle client and rebuilds the rest when it is sampled again
    (:mod:`securefl.fl.client_pool`); the trainer, with a DP-SGD client's privacy ledger,
    persists on its own."""

    last_round: int | None
    aggregation_guard: object | None


class FederatedClient:
    """One client: its data, trainer, transform and aggregation half; speaks bytes."""

    def __init__(
        self,
        *,
        shard: ClientShard,
        trainer: ClientTrainer,
        transform: UpdateTransform,
        aggregation: AggregationClient,
        architecture: nn.Module,
        generator_for: GeneratorFor,
        memory: ClientMemory | None = None,
    ) -> None:
        """``memory``: what this client remembered when it was last parked (:meth:`memory`)."""
        self.client_id = shard.client_id
        self.shard = shard
        self.trainer = trainer
        self.transform = transform
        self.aggregation = aggregation
        self.architecture = architecture
        self.generator_for = generator_for
        self._num_params = sum(p.numel() for p in architecture.parameters())
        self._round: int | None = None
        self._last_round: int | None = None
        if memory is not None:
            self._last_round = memory.last_round
            if memory.aggregation_guard is not None:
                if not isinstance(aggregation, GuardedAggregationClient):
                    raise TypeError(f"{type(aggregation).__name__} keeps no guard to restore")
                aggregation.guard = memory.aggregation_guard

    def memory(self) -> ClientMemory:
        """What this client must remember until its next round (see :class:`ClientMemory`)."""
        guard = self.aggregation.guard if isinstance(self.aggregation, GuardedAggregationClient) else None
        return ClientMemory(last_round=self._last_round, aggregation_guard=guard)

    def join(self) -> bytes:
        """The message that enrols this client: whether it can train."""
        return encode(Availability(self.client_id, self.trainer.can_train(self.client_id)))

    def receive(self, data: bytes) -> list[bytes]:
        """One message from the server; the replies.  A malformed message or one the
        aggregation refuses is logged and answered with nothing (the server sees a dropout)."""
        try:
            message = decode(data)
        except DecodeError as error:
            log.warning("client %d dropped a malformed message: %s", self.client_id, error)
            return []
        if getattr(message, "client_id", None) != self.client_id:
            log.warning("client %d dropped a %s addressed elsewhere", self.client_id, type(message).__name__)
            return []
        match message:
            case TrainRequest():
                return self._train(message)
            case AggregationMessage() if message.round_index == self._round:
                try:
                    replies = self.aggregation.receive(message.payload)
                except ProtocolError as error:
                    log.warning("client %d leaves round %d: %s", self.client_id, message.round_index, error)
                    self._round = None
                    return []
                return [encode(AggregationMessage(message.round_index, self.client_id, p)) for p in replies]
        log.warning("client %d dropped an unexpected %s", self.client_id, type(message).__name__)
        return []

    def _train(self, request: TrainRequest) -> list[bytes]:
        round_index = request.round_index
        self._round = None
        if not self.trainer.can_train(self.client_id):
            return [
                encode(
                    Decline(round_index, self.client_id, DeclineReason.BUDGET_SPENT, "no privacy budget left")
                ),
                encode(Availability(self.client_id, False)),
            ]
        try:
            self._check(request)
        except ProtocolError as error:  # refused before training: it costs the client nothing
            log.warning("client %d refuses round %d: %s", self.client_id, round_index, error)
            return [encode(Decline(round_index, self.client_id, DeclineReason.REFUSED, str(error)))]
        self._last_round = round_index
        context = model_context(
            model=self.architecture, settings=request.settings_dict, params=request.params
        )
        update = self.trainer.train(
            global_params=request.params,
            shard=self.shard,
            round_index=round_index,
            generator=self.generator_for(round_index, self.client_id),
        )
        contribution = self.transform(update)
        try:
            payloads = self.aggregation.start(
                contribution, round_index=round_index, setup=request.aggregation, context=context
            )
            replies = [encode(AggregationMessage(round_index, self.client_id, p)) for p in payloads]
            self._round = round_index
        except NonFiniteUpdateError as error:
            log.warning("client %d leaves round %d: %s", self.client_id, round_index, error)
            replies = [
                encode(Decline(round_index, self.client_id, DeclineReason.NON_FINITE_UPDATE, str(error)))
            ]
        except ProtocolError as error:
            log.warning("client %d refuses round %d: %s", self.client_id, round_index, error)
            replies = [encode(Decline(round_index, self.client_id, DeclineReason.REFUSED, str(error)))]
        if not self.trainer.can_train(self.client_id):
            replies.append(encode(Availability(self.client_id, False)))
        return replies

    def _check(self, request: TrainRequest) -> None:
        """What a client refuses before it trains: a model of another size than its pinned
        architecture, a round not after the last one it trained (a replay: DP-SGD would record
        that round twice), and a setup its aggregation half refuses."""
        expected = self._num_params
        if request.params.numel() != expected:
            raise RemoteProtocolError(
                f"the model has {request.params.numel()} parameters, this client's architecture "
                f"{expected}: refused"
            )
        if self._last_round is not None and request.round_index <= self._last_round:
            raise RemoteProtocolError(
                f"round {request.round_index} is not after round {self._last_round}, which this "
                "client already trained: refused"
            )
        self.aggregation.check_setup(round_index=request.round_index, setup=request.aggregation)
