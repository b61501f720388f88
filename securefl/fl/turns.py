"""Synchronous turns: how one process carries the bytes between a server half and client halves.

A turn delivers the server's pending messages to the clients, in client-id order, hands every
reply to the server, then tells the server the step's deadline has passed (``close_step``), which
gives the next turn's messages.  It stops when the server says it has finished.  Nothing is
shared but bytes, and every byte is counted in both directions.

Crashes are simulated by :class:`Faults`: a client that drops *before* turn ``k`` gets nothing
from then on (what the server sent it is lost); one that drops *after* turn ``k`` sends that
turn's replies and then goes silent.  This is the model of Bonawitz et al.'s dropouts, with turn
``k`` the protocol's step ``k``.

Used by the in-process transport (:mod:`securefl.transports.inprocess`, a whole federated round)
and by :meth:`~securefl.fl.types.Aggregation.aggregate` (one aggregation on given contributions).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from securefl.errors import NonFiniteUpdateError, ProtocolError, RemoteProtocolError, RoundAbortedError
from securefl.fl.types import Aggregate, Aggregation, AggregationClient, AggregationRound, Contribution

log = logging.getLogger(__name__)


class TurnServer(Protocol):
    """The server side of an exchange (a federated server or an aggregation round)."""

    def receive(self, client_id: int, data: bytes) -> None: ...

    def close_step(self) -> list[tuple[int, bytes]]: ...

    @property
    def finished(self) -> bool: ...


TurnClient = Callable[[bytes], list[bytes]]
"""A client side of an exchange: one message in, its replies out."""


@dataclass(frozen=True)
class Faults:
    """Which clients crash, and when: ``before[c] = k`` (nothing reaches ``c`` from turn ``k``
    on), ``after[c] = k`` (``c`` answers turn ``k``, then goes silent)."""

    before: Mapping[int, int] = field(default_factory=dict)
    after: Mapping[int, int] = field(default_factory=dict)

    def drops_before(self, client_id: int, turn: int) -> bool:
        return client_id in self.before and self.before[client_id] <= turn

    def drops_after(self, client_id: int, turn: int) -> bool:
        return client_id in self.after and self.after[client_id] <= turn


NO_FAULTS = Faults()


@dataclass
class Traffic:
    """What crossed the wire in one exchange, and how long each side computed (per turn)."""

    bytes_up: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    bytes_down: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    client_seconds: list[dict[int, float]] = field(default_factory=list)
    server_seconds: list[float] = field(default_factory=list)

    @property
    def total_up(self) -> int:
        return sum(self.bytes_up.values())

    @property
    def total_down(self) -> int:
        return sum(self.bytes_down.values())

    def mean_client_seconds(self) -> list[float]:
        """Per turn, the mean compute time of the clients that took that turn."""
        return [sum(turn.values()) / len(turn) if turn else 0.0 for turn in self.client_seconds]


Replies = dict[int, tuple[list[bytes], float]]
"""Per client: its replies to one turn's messages and the seconds it computed."""

Deliver = Callable[[Mapping[int, list[bytes]]], Replies]
"""Hands each present client its messages of one turn (an empty list too) and returns its replies:
one after another in this process (:func:`sequential`), or in worker processes.  It may empty a
client's list once the client has read it: :func:`run_turns` holds a turn's messages nowhere else."""


def sequential(clients: Mapping[int, TurnClient]) -> Deliver:
    """Each client in client-id order, in this process; a client's messages are dropped once it
    has read them (a round's train requests carry a model each: 1,000 clients of a 1M-parameter
    model are 4 GB of requests)."""

    def deliver(inboxes: Mapping[int, list[bytes]]) -> Replies:
        replies: Replies = {}
        for client_id in sorted(inboxes):
            started = time.perf_counter()
            messages = inboxes[client_id]
            out = [reply for data in messages for reply in clients[client_id](data)]
            messages.clear()
            replies[client_id] = (out, time.perf_counter() - started)
        return replies

    return deliver


def run_turns(
    server: TurnServer,
    clients: Mapping[int, TurnClient] | Deliver,
    first: Sequence[tuple[int, bytes]],
    *,
    faults: Faults = NO_FAULTS,
) -> Traffic:
    """Carry ``first`` (the server's opening messages) and everything after it until the server
    has finished; returns the traffic.  The clients present are the recipients of ``first``;
    ``clients`` are their receive functions, or a :data:`Deliver` that runs them.  However the
    clients compute, the server gets their replies in client-id order, so the result does not
    depend on which finished first.  A turn's messages are held only by the inboxes handed to the
    clients (a caller that hands ``first`` over without keeping it lets each go once read)."""
    deliver = sequential(clients) if isinstance(clients, Mapping) else clients
    traffic = Traffic()
    present = {recipient for recipient, _ in first}
    outgoing = list(first)
    del first
    turn = 0
    while True:
        present -= {c for c in present if faults.drops_before(c, turn)}
        inboxes: dict[int, list[bytes]] = {c: [] for c in present}
        for recipient, data in outgoing:
            if recipient in inboxes:
                inboxes[recipient].append(data)
                traffic.bytes_down[recipient] += len(data)
        outgoing = []
        replies = deliver(inboxes)
        traffic.client_seconds.append({c: seconds for c, (_, seconds) in replies.items()})
        started = time.perf_counter()
        for client_id in sorted(present):
            for reply in replies[client_id][0]:
                traffic.bytes_up[client_id] += len(reply)
                server.receive(client_id, reply)
            if faults.drops_after(client_id, turn):
                present.discard(client_id)
        traffic.server_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        try:
            outgoing = server.close_step()
        except RoundAbortedError as error:  # what crossed the wire until then is observed too
            error.details.setdefault("bytes_up", traffic.total_up)
            error.details.setdefault("bytes_down", traffic.total_down)
            raise
        traffic.server_seconds.append(time.perf_counter() - started)
        if server.finished:
            return traffic
        turn += 1


def aggregate_in_process(
    aggregation: Aggregation,
    contributions: Sequence[Contribution],
    *,
    round_index: int,
    contexts: Mapping[int, bytes] | None = None,
    faults: Faults = NO_FAULTS,
    clients: Mapping[int, AggregationClient] | None = None,
) -> tuple[Aggregate, Traffic]:
    """Both halves of ``aggregation`` on contributions already computed, in synchronous turns.

    ``contexts`` (client id -> bytes) is what each client computed from the model it received; the
    server runs in the context most clients hold (a server showing clients different models puts
    them in different sessions).  ``clients`` are the client halves to use (default: a new one per
    client from ``aggregation.client``).  Raises :class:`~securefl.errors.RoundAbortedError` when
    the round releases nothing; its ``details`` then hold the traffic seen until the abort.
    """
    participants = sorted(c.client_id for c in contributions)
    if len(set(participants)) != len(participants):
        raise ValueError("two contributions from the same client")
    contexts = dict(contexts or {})
    server_context = Counter(contexts[c] for c in participants if c in contexts).most_common(1)
    context = server_context[0][0] if server_context else b""
    aggregation_round = aggregation.open_round(
        round_index=round_index, participants=participants, context=context
    )
    halves = {c: (clients[c] if clients is not None else aggregation.client(c)) for c in participants}
    by_client = {c.client_id: c for c in contributions}

    def client_side(client_id: int) -> TurnClient:
        started = False

        def receive(data: bytes) -> list[bytes]:
            nonlocal started
            try:
                if not started:
                    started = True
                    return halves[client_id].start(
                        by_client[client_id],
                        round_index=round_index,
                        setup=data,
                        context=contexts.get(client_id, context),
                    )
                return halves[client_id].receive(data)
            except (NonFiniteUpdateError, ProtocolError) as error:  # the client sends nothing
                log.warning("client %d leaves round %d: %s", client_id, round_index, error)
                return []

        return receive

    server = _AggregationServer(aggregation_round)
    first = [(c, aggregation_round.setup_for(c)) for c in participants]
    traffic = run_turns(server, {c: client_side(c) for c in participants}, first, faults=faults)
    result = aggregation_round.result
    assert result is not None  # run_turns returns once the round has a result; an abort raised
    return result, traffic


class _AggregationServer:
    """An :class:`~securefl.fl.types.AggregationRound` as the server side of an exchange."""

    def __init__(self, aggregation_round: AggregationRound) -> None:
        self.round = aggregation_round

    def receive(self, client_id: int, data: bytes) -> None:
        try:
            self.round.receive(client_id, data)
        except RemoteProtocolError as error:
            log.info("aggregation refused a message from client %d: %s", client_id, error)

    def close_step(self) -> list[tuple[int, bytes]]:
        return self.round.close_step()

    @property
    def finished(self) -> bool:
        return self.round.result is not None
