"""The server program of federated learning, sans-IO: bytes in, bytes out, no sockets or clocks.

Per round (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017, FederatedAveraging's server loop): :meth:`FederatedServer.start_round` samples
among the clients that said they can train, opens the aggregation's server half (a plain sum, or
the secure-aggregation :class:`~securefl.protocols.secagg.ServerProtocol` nested in
:class:`~securefl.fl.secure_channel.SecureAggregationRound`) and returns a
:class:`~securefl.fl.messages.TrainRequest` per sampled client; :meth:`receive` takes each
client's bytes in; :meth:`close_step` is called when a step's deadline has passed and returns the
next step's bytes.  Once the aggregation has a sum (or aborted) the server update turns it into
the next global model -- every round goes through it, an empty or aborted one too, so DP-FedAvg
counts it -- the model is evaluated and the round's :class:`~securefl.fl.record.RoundRecord` is
kept in :attr:`records`.

The server holds sampling, aggregation, the server update, its accountants, evaluation and
history, and nothing of any client: it knows clients by id and by the bytes they send.  A
client's malformed or unexpected message drops that client from the round (it is logged), never
the server.  How the bytes travel is the transport's business (:mod:`securefl.transports`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch
from torch import nn

from securefl.defences.consistency import model_context
from securefl.errors import DecodeError, RemoteProtocolError, RoundAbortedError
from securefl.fl.codec import decode, encode
from securefl.fl.messages import (
    AggregationMessage,
    Availability,
    Decline,
    DeclineReason,
    Setting,
    TrainRequest,
)
from securefl.fl.record import Evaluation, RoundRecord, RoundStatus
from securefl.fl.types import Aggregate, Aggregation, AggregationRound, PrivacyAccounting, ServerUpdate

log = logging.getLogger(__name__)

Outgoing = list[tuple[int, bytes]]
"""Messages to send: (client id, bytes)."""


class Sampler(Protocol):
    def sample(self, round_index: int, eligible: list[int]) -> list[int]: ...


class FederatedServer:
    """The server side of a federation, one round at a time.

    ``train_loss_reported=False``: the clients send no training loss (under DP it is computed
    without noise, so it stays on the client); the records then carry none.
    ``architecture`` is the pinned model (its parameters' names and shapes), used to compute the
    context every client binds into a secure-aggregation session; ``evaluate`` maps the global
    parameters to an :class:`~securefl.fl.record.Evaluation` on the server's held-out data.
    """

    def __init__(
        self,
        *,
        params: torch.Tensor,
        architecture: nn.Module,
        sampler: Sampler,
        aggregation: Aggregation,
        server_update: ServerUpdate,
        settings: Mapping[str, Setting],
        evaluate: Callable[[torch.Tensor], Evaluation],
        num_clients: int,
        train_loss_reported: bool = True,
    ) -> None:
        self.params = params
        self.architecture = architecture
        self.sampler = sampler
        self.aggregation = aggregation
        self.server_update = server_update
        self.settings = dict(settings)
        self.evaluate = evaluate
        self.num_clients = num_clients
        self.train_loss_reported = train_loss_reported
        self.accountants = [server_update] if isinstance(server_update, PrivacyAccounting) else []
        self.round_index = 0
        self.records: list[RoundRecord] = []
        self._available: dict[int, bool] = {}
        self._round: AggregationRound | None = None
        self._participants: frozenset[int] = frozenset()
        self._declined: Counter[str] = Counter()
        self._dropped: set[int] = set()
        self._heard: set[int] = set()  # participants that answered this round
        self._diverged: set[int] = set()  # ... and declined it with a non-finite update
        self._excluded = 0
        self._finished = True

    # ---- clients --------------------------------------------------------------------------

    @property
    def eligible(self) -> list[int]:
        """The clients that joined and can train."""
        return sorted(c for c, can_train in self._available.items() if can_train)

    def receive(self, client_id: int, data: bytes) -> None:
        """Bytes from ``client_id`` (the transport authenticated the sender).  Anything malformed,
        addressed as another client, or not expected now is logged and dropped, and a participant
        that sent it is dropped from the rest of the round (the aggregation sees a dropout)."""
        try:
            message = decode(data)
            addressed_to = getattr(message, "client_id", client_id)
            if addressed_to != client_id:
                raise RemoteProtocolError(f"a message for client {addressed_to} came from {client_id}")
            match message:
                case Availability():
                    if client_id < self.num_clients:
                        self._available[client_id] = message.can_train
                    else:
                        raise RemoteProtocolError(f"client id {client_id} is not enrolled")
                case AggregationMessage() | Decline() if client_id in self._dropped:
                    log.debug("ignored a message from client %d, dropped from this round", client_id)
                case AggregationMessage():
                    self._current(message.round_index, client_id).receive(client_id, message.payload)
                    self._heard.add(client_id)
                case Decline():
                    self._current(message.round_index, client_id)
                    self._declined[message.reason.value] += 1
                    self._heard.add(client_id)
                    if message.reason is DeclineReason.NON_FINITE_UPDATE:
                        self._diverged.add(client_id)
                    self._dropped.add(client_id)  # binding: nothing more from it this round
                    log.info(
                        "client %d declines round %d: %s", client_id, message.round_index, message.detail
                    )
                case _:
                    raise RemoteProtocolError(f"a server does not accept a {type(message).__name__}")
        except (DecodeError, RemoteProtocolError) as error:
            log.warning("dropped a message from client %d: %s", client_id, error)
            if client_id in self._participants and not self._finished:
                self._dropped.add(client_id)

    def _current(self, round_index: int, client_id: int) -> AggregationRound:
        if self._round is None or round_index != self.round_index or client_id not in self._participants:
            raise RemoteProtocolError(
                f"client {client_id} is not a participant of an open round {round_index}"
            )
        return self._round

    # ---- rounds ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Whether the current round is over (its record is the last of :attr:`records`)."""
        return self._finished

    def start_round(self) -> Outgoing:
        """Sample and open round ``round_index + 1``: a train request per sampled client (none
        when nobody was sampled or the aggregation cannot run at this size: the round is then
        already over)."""
        eligible = self.eligible
        self._open(excluded=self.num_clients - len(eligible))
        sampled = self.sampler.sample(self.round_index, eligible)
        self._participants = frozenset(sampled)
        if not sampled:
            self._finish(Aggregate.empty(self.params), status=RoundStatus.EMPTY)
            return []
        settings = {"round": self.round_index, **self.settings}
        context = model_context(model=self.architecture, settings=settings, params=self.params)
        try:
            self._round = self.aggregation.open_round(
                round_index=self.round_index, participants=sampled, context=context
            )
        except RoundAbortedError as error:
            self._abort(error)
            return []
        pairs = tuple(sorted(settings.items()))
        return [
            (c, encode(TrainRequest(self.round_index, c, self.params, pairs, self._round.setup_for(c))))
            for c in sampled
        ]

    def _open(self, *, excluded: int) -> None:
        """Open round ``round_index + 1`` with no participant yet."""
        if not self._finished:
            raise RuntimeError(f"round {self.round_index} is still open")
        self.round_index += 1
        self._finished = False
        self._declined = Counter()
        self._dropped = set()
        self._heard = set()
        self._diverged = set()
        self._participants = frozenset()
        self._excluded = excluded

    def close_step(self) -> Outgoing:
        """The current step's deadline has passed: the aggregation's next messages."""
        if self._finished or self._round is None:
            return []
        try:
            outgoing = self._round.close_step()
        except RoundAbortedError as error:
            self._abort(error)
            return []
        result = self._round.result
        if result is not None:
            self._finish(result, status=RoundStatus.OK)
            return []
        return [(c, encode(AggregationMessage(self.round_index, c, payload))) for c, payload in outgoing]

    # ---- a stop and a resume (securefl.deploy.checkpoint) ----------------------------------

    def resume(self, *, round_index: int, params: torch.Tensor, records: Sequence[RoundRecord]) -> None:
        """Continue a run that stopped after round ``round_index``, from what a checkpoint kept:
        the global ``params`` after that round and the ``records`` of rounds 1..``round_index``.
        The next :meth:`start_round` opens round ``round_index + 1``.

        Only a server that has run no round yet resumes.  The accountants' state is restored by
        their owner (:mod:`securefl.deploy.checkpoint`), not here: this program holds only the
        round index, the model and the history; the clients rejoin afterwards."""
        if self.round_index != 0 or not self._finished:
            raise RuntimeError("only a server that has run no round yet can resume")
        if round_index < 0 or [r.round for r in records] != list(range(1, round_index + 1)):
            raise ValueError(
                f"records of rounds {[r.round for r in records]} do not describe rounds 1..{round_index}"
            )
        if params.shape != self.params.shape or params.dtype != self.params.dtype:
            raise ValueError(
                f"parameters of shape {tuple(params.shape)} ({params.dtype}) do not fit this model's "
                f"{tuple(self.params.shape)} ({self.params.dtype})"
            )
        self.round_index = round_index
        self.params = params.clone()
        self.records = list(records)

    def abort_interrupted_round(self, reason: str) -> None:
        """Record round ``round_index + 1`` as aborted without opening it: the server stopped
        during that round, after its train requests may have gone out, and its state is lost.

        Clients that trained in it refuse to see its round id again, so it is not replayed: the
        next :meth:`start_round` opens the round after it.  Like any aborted round it goes through
        the server update with an empty aggregate, so a DP-FedAvg accountant counts it (what the
        lost round released before the stop, e.g. a test metric of its model, is covered) and
        its noise replaces the lost model; nobody's data reaches it."""
        self._open(excluded=0)
        self._abort(RoundAbortedError(reason))

    def _abort(self, error: RoundAbortedError) -> None:
        log.info("round %d aborted: %s", self.round_index, error)
        details = {k: v for k, v in error.details.items() if k != "survivors"}
        aggregate = dataclasses.replace(Aggregate.empty(self.params), details=details)
        self._finish(aggregate, status=RoundStatus.ABORTED, abort_reason=str(error))

    def _finish(self, aggregate: Aggregate, *, status: RoundStatus, abort_reason: str | None = None) -> None:
        """Every round ends here: the server update (also for an empty or aborted round), the
        evaluation, the record."""
        self._round = None
        self._finished = True
        self.params = self.server_update(self.params, aggregate)
        evaluation = self.evaluate(self.params)
        train_loss = None
        if self.train_loss_reported and aggregate.weight_sum > 0:
            train_loss = aggregate.train_loss_sum / aggregate.weight_sum
        divergence = None
        if not aggregate.survivors and self._diverged and self._diverged == self._heard:
            # Clients that stayed silent (crashed, offline) are no evidence either way.
            divergence = "every client that answered sent a NaN or infinite update (its training diverged)"
        elif not bool(torch.isfinite(self.params).all()):
            divergence = "the global model's weights became NaN or infinite"
        elif not evaluation.finite:
            divergence = "the test loss became NaN or infinite"
        if divergence is not None:
            status = RoundStatus.DIVERGED
        privacy: dict[str, float] = {}
        for accountant in self.accountants:
            privacy.update(accountant.round_metrics())
        self.records.append(
            RoundRecord(
                round=self.round_index,
                status=status,
                clients=len(self._participants),
                excluded_clients=self._excluded,
                survivors=len(aggregate.survivors),
                evaluation=evaluation,
                train_loss=train_loss,
                abort_reason=abort_reason,
                divergence=divergence,
                declined=dict(self._declined),
                aggregation=dict(aggregate.details),
                privacy=privacy,
            )
        )
