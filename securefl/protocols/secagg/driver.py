"""In-process transport: run n clients and the server of one round, with dropouts injected.

This is the one place that holds every client object; it moves bytes between the sans-IO
:class:`~securefl.protocols.secagg.client.ClientProtocol` and
:class:`~securefl.protocols.secagg.server.ServerProtocol` exactly as a network would: every
message is encoded by its sender and decoded by its receiver (:mod:`.codec`), so the server side
only ever holds what crossed the wire to it, and masked inputs are the only vectors that do.

:func:`run_secure_aggregation` is the researcher-facing API: inputs in, the survivors' sum, the
survivor set, a transcript of every message the server received and per-step statistics out.
A :class:`DropoutPlan` removes chosen clients before or after they send their message of a chosen
step; a ``network`` callable can drop, alter, replay or inject packets to test what the protocol
rejects.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefl.errors import (
    ConfigError,
    ProtocolError,
    RemoteProtocolError,
    RoundAbortedError,
    ThresholdNotMetError,
)
from securefl.protocols.crypto import keys
from securefl.protocols.crypto.keys import RandomSource
from securefl.protocols.secagg.client import ClientProtocol, RoundIdGuard
from securefl.protocols.secagg.codec import decode, encode
from securefl.protocols.secagg.messages import Message, Step
from securefl.protocols.secagg.params import RoundSetup, SecAggParams
from securefl.protocols.secagg.server import ServerProtocol

logger = logging.getLogger(__name__)


def protocol_steps(params: SecAggParams) -> tuple[Step, ...]:
    """The steps of a round under ``params`` (ConsistencyCheck only against active servers)."""
    return tuple(s for s in Step if params.active_adversary or s is not Step.CONSISTENCY_CHECK)


@dataclass(frozen=True)
class Dropout:
    """A client leaves at ``step``: before sending its message of that step, or just after."""

    step: Step
    after_sending: bool = False


class UniformGenerator(Protocol):
    """What :meth:`DropoutPlan.random` needs from a generator (a NumPy ``Generator`` fits).

    Dropouts are a simulation knob, not a secret: no key, mask or share comes from it.
    """

    def random(self) -> float: ...

    def integers(self, low: int, high: int | None = None) -> int: ...


class DropoutPlan:
    """Which clients drop out, at which step, before or after sending (simulation only)."""

    def __init__(self, dropouts: Mapping[int, Dropout | Step] | None = None) -> None:
        plan = {}
        for client, dropout in (dropouts or {}).items():
            if isinstance(dropout, Step):
                dropout = Dropout(dropout)
            if not isinstance(dropout, Dropout):
                raise ConfigError(f"dropout of client {client} must be a Dropout or a Step")
            plan[int(client)] = dropout
        self.dropouts: Mapping[int, Dropout] = MappingProxyType(plan)

    @classmethod
    def random(
        cls,
        client_ids: Iterable[int],
        *,
        rate: float,
        generator: UniformGenerator,
        steps: Sequence[Step] = tuple(s for s in Step if s is not Step.CONSISTENCY_CHECK),
    ) -> DropoutPlan:
        """Each client drops with probability ``rate`` at a uniformly chosen step of ``steps``,
        before or after sending with equal probability (pass ``protocol_steps(params)``)."""
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"dropout rate {rate} must be in [0, 1)")
        plan = {}
        for client in client_ids:
            if generator.random() < rate:
                step = steps[int(generator.integers(0, len(steps)))]
                plan[client] = Dropout(step, after_sending=bool(generator.integers(0, 2)))
        return cls(plan)

    def drops_before(self, client: int, step: Step) -> bool:
        dropout = self.dropouts.get(client)
        return dropout is not None and dropout.step is step and not dropout.after_sending

    def drops_after(self, client: int, step: Step) -> bool:
        dropout = self.dropouts.get(client)
        return dropout is not None and dropout.step is step and dropout.after_sending

    def __repr__(self) -> str:
        return f"DropoutPlan({dict(self.dropouts)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DropoutPlan) and dict(self.dropouts) == dict(other.dropouts)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Packet:
    """One message on the wire; ``None`` as sender or recipient is the server."""

    step: Step
    sender: int | None
    recipient: int | None
    payload: bytes


Network = Callable[[Packet], Sequence[bytes]]
"""Given a packet, the payloads actually delivered: ``[]`` loses it, two copies replay it."""


def reliable_network(packet: Packet) -> Sequence[bytes]:
    """Deliver every packet once, unchanged."""
    return (packet.payload,)


@dataclass(frozen=True)
class TranscriptEntry:
    """A message the server received (decoded) and whether it accepted it (a rejected one may be
    of any kind: a client can send anything)."""

    step: Step
    message: Message
    accepted: bool


@dataclass(frozen=True)
class Rejection:
    """Something a party refused: ``party`` (``None`` = server) raised ``error`` at ``step``
    about a message or share from ``peer`` (``None`` = the server, or unknown)."""

    step: Step
    party: int | None
    peer: int | None
    error: ProtocolError


@dataclass(frozen=True)
class SecAggStats:
    """Per-step seconds (per client and server), bytes up/down per client, dropouts by step."""

    client_seconds: Mapping[int, Mapping[Step, float]]
    server_seconds: Mapping[Step, float]
    bytes_up: Mapping[int, int]
    bytes_down: Mapping[int, int]
    dropouts: Mapping[Step, tuple[int, ...]]
    rejections: tuple[Rejection, ...] = ()

    def mean_client_seconds(self) -> dict[Step, float]:
        """Per step, the mean over the clients that worked in that step."""
        totals: dict[Step, list[float]] = defaultdict(list)
        for per_step in self.client_seconds.values():
            for step, seconds in per_step.items():
                totals[step].append(seconds)
        return {step: sum(values) / len(values) for step, values in totals.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (steps by label, client ids as strings)."""
        return {
            "client_seconds_mean": {s.label: v for s, v in self.mean_client_seconds().items()},
            "server_seconds": {s.label: v for s, v in self.server_seconds.items()},
            "bytes_up": {str(c): v for c, v in self.bytes_up.items()},
            "bytes_down": {str(c): v for c, v in self.bytes_down.items()},
            "dropouts": {s.label: list(v) for s, v in self.dropouts.items()},
            "rejections": [
                {
                    "step": r.step.label,
                    "party": r.party,
                    "peer": r.peer,
                    "error": type(r.error).__name__,
                    "message": str(r.error),
                }
                for r in self.rejections
            ],
        }


@dataclass(frozen=True)
class SecAggResult:
    """One round's outcome.

    ``sum``: uint64 vector, the sum of the survivors' inputs modulo ``2**bits``;
    ``survivors``: the clients whose inputs are in it; ``transcript``: every message the server
    received, decoded, in order; ``stats``: timings, traffic and dropouts.
    """

    sum: np.ndarray
    survivors: frozenset[int]
    transcript: tuple[TranscriptEntry, ...]
    stats: SecAggStats


@dataclass
class _Recorder:
    record_transcript: bool
    client_seconds: defaultdict[int, defaultdict[Step, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    server_seconds: defaultdict[Step, float] = field(default_factory=lambda: defaultdict(float))
    bytes_up: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    bytes_down: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    dropouts: defaultdict[Step, list[int]] = field(default_factory=lambda: defaultdict(list))
    rejections: list[Rejection] = field(default_factory=list)
    transcript: list[TranscriptEntry] = field(default_factory=list)

    def stats(self) -> SecAggStats:
        return SecAggStats(
            client_seconds=MappingProxyType(
                {c: MappingProxyType(dict(v)) for c, v in self.client_seconds.items()}
            ),
            server_seconds=MappingProxyType(dict(self.server_seconds)),
            bytes_up=MappingProxyType(dict(self.bytes_up)),
            bytes_down=MappingProxyType(dict(self.bytes_down)),
            dropouts=MappingProxyType({s: tuple(v) for s, v in self.dropouts.items()}),
            rejections=tuple(self.rejections),
        )


def _check_inputs(inputs: Mapping[int, np.ndarray], params: SecAggParams) -> int:
    if not isinstance(inputs, Mapping) or not inputs:
        raise ConfigError("inputs must be a non-empty mapping from client id to vector")
    if len(inputs) != params.num_clients:
        raise ConfigError(
            f"got {len(inputs)} inputs but num_clients is {params.num_clients}: make them equal"
        )
    lengths = {np.shape(v)[0] if np.ndim(v) == 1 else -1 for v in inputs.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise ConfigError("inputs must be 1-D vectors of one common length")
    return lengths.pop()


def run_secure_aggregation(
    inputs: Mapping[int, np.ndarray],
    *,
    params: SecAggParams,
    dropouts: DropoutPlan | None = None,
    random_source: RandomSource = os.urandom,
    round_id: int = 0,
    signing_keys: Mapping[int, Ed25519PrivateKey] | None = None,
    network: Network = reliable_network,
    record_transcript: bool = True,
    graph_seed: bytes | None = None,
    round_guards: MutableMapping[int, RoundIdGuard] | None = None,
    context: bytes = b"",
    client_contexts: Mapping[int, bytes] | None = None,
) -> SecAggResult:
    """Run one secure-aggregation round on ``inputs`` (client id -> vector in Z_{2^bits}).

    Returns the survivors' sum, who survived, the server's transcript and statistics.  Raises
    :class:`RoundAbortedError` (a :class:`ThresholdNotMetError`) when fewer than the threshold
    remain at some step, and :class:`ConfigError` for invalid inputs or plans.

    In active-adversary mode each client needs an Ed25519 signing key whose public half everyone
    knows up front: pass ``signing_keys`` or let the driver draw them from ``random_source``.
    Caller-supplied keys are persistent identities, so they need ``round_guards`` too
    (:class:`ConfigError` otherwise): a server that repeats a whole setup could replay a
    client's signatures from an earlier session.  Keys the driver draws are fresh, so no earlier
    session's signature verifies; their clients get fresh guards when ``round_guards`` is None.
    ``record_transcript=False`` keeps memory flat for large benchmarks.  ``graph_seed`` (32 bytes)
    fixes the SecAgg+ graph (default: drawn from ``random_source``).  ``round_guards`` maps
    client ids to the :class:`RoundIdGuard` each keeps across rounds; a missing client gets a new
    guard, stored in the mapping, so passing the same mapping every round suffices.  A client
    whose guard has seen ``round_id`` refuses to start (:class:`LocalProtocolError`).
    ``context`` is the application data of :class:`RoundSetup`, bound into every signature and
    (through the session hash) into every pairwise mask.  ``client_contexts`` simulates a server
    that shows clients different contexts: client ``c`` runs in the setup with
    ``client_contexts[c]`` and expects exactly it (``ClientProtocol(expected_context=...)``: a
    setup with another context is refused), missing clients get ``context``, the server runs in
    ``context``.  This is
    how a server that sends different models to different clients looks once every client binds
    the hash of the model it received (:mod:`securefl.defences.consistency`): clients with
    different contexts are in different sessions, so their signatures do not verify for each
    other and their pairwise masks do not cancel.
    """
    length = _check_inputs(inputs, params)
    plan = dropouts if dropouts is not None else DropoutPlan()
    steps = protocol_steps(params)
    strangers = set(plan.dropouts) - set(inputs)
    if strangers:
        raise ConfigError(f"dropout plan names clients {sorted(strangers)} without inputs")
    if any(d.step not in steps for d in plan.dropouts.values()):
        raise ConfigError(
            "dropout plan uses the consistency check, which only runs with active_adversary=True"
        )
    setup = RoundSetup.create(
        list(inputs), vector_length=length, round_id=round_id, random_source=random_source, context=context
    )
    if graph_seed is not None:
        setup = dataclasses.replace(setup, graph_seed=graph_seed)
    verify_keys = None
    if params.active_adversary:
        if signing_keys is None:
            signing_keys = {c: keys.generate_signing_key(random_source) for c in inputs}
            round_guards = {} if round_guards is None else round_guards
        elif round_guards is None:
            raise ConfigError(
                "active_adversary with caller-supplied signing_keys needs round_guards (each "
                "client's RoundIdGuard, kept across its rounds): with persistent keys and no "
                "guard a server repeating a round setup could replay earlier signatures"
            )
        verify_keys = {c: k.public_key() for c, k in signing_keys.items()}
    server = ServerProtocol(params=params, setup=setup, verify_keys=verify_keys)
    own_context = dict(client_contexts or {})
    clients = {
        c: ClientProtocol(
            client_id=c,
            params=params,
            setup=dataclasses.replace(setup, context=own_context.get(c, context)),
            input_vector=inputs[c],
            random_source=random_source,
            signing_key=signing_keys[c] if signing_keys else None,
            verify_keys=verify_keys,
            round_guard=(None if round_guards is None else round_guards.setdefault(c, RoundIdGuard())),
            expected_context=own_context.get(c),
        )
        for c in setup.participants
    }
    record = _Recorder(record_transcript)
    present = set(setup.participants)
    inbox: dict[int, list[bytes]] = defaultdict(list)
    for step in steps:
        for client_id in sorted(present):
            if plan.drops_before(client_id, step):
                present.discard(client_id)
                record.dropouts[step].append(client_id)
                continue
            payloads = _client_turn(clients[client_id], step, inbox.pop(client_id, []), record)
            for payload in payloads:
                record.bytes_up[client_id] += len(payload)
                for delivered in network(Packet(step, client_id, None, payload)):
                    _deliver_to_server(server, step, client_id, delivered, record)
            if plan.drops_after(client_id, step):
                present.discard(client_id)
                record.dropouts[step].append(client_id)
        inbox.clear()
        started = time.perf_counter()
        try:
            outgoing = server.close_step()
        except ThresholdNotMetError as error:
            record.server_seconds[step] += time.perf_counter() - started
            record.rejections.append(Rejection(step, None, None, error))
            logger.warning("secure aggregation round %d aborted at %s: %s", round_id, step.label, error)
            raise RoundAbortedError(
                str(error), step=step, stats=record.stats(), transcript=tuple(record.transcript)
            ) from error
        encoded = [(message.recipient, message.step, encode(message)) for message in outgoing]
        record.server_seconds[step] += time.perf_counter() - started
        for recipient, next_step, payload in encoded:
            for delivered in network(Packet(next_step, None, recipient, payload)):
                if recipient in present:
                    inbox[recipient].append(delivered)
                    record.bytes_down[recipient] += len(delivered)
    output = server.result
    return SecAggResult(
        sum=output.sum, survivors=output.survivors, transcript=tuple(record.transcript), stats=record.stats()
    )


def _client_turn(client: ClientProtocol, step: Step, payloads: list[bytes], record: _Recorder) -> list[bytes]:
    started = time.perf_counter()
    outgoing = []
    if step is Step.ADVERTISE_KEYS:
        outgoing = client.start()
    for payload in payloads:
        try:
            outgoing += client.receive(decode(payload))
        except ProtocolError as error:
            record.rejections.append(Rejection(step, client.client_id, None, error))
            logger.info("client %d refused a message at %s: %s", client.client_id, step.label, error)
    encoded = [encode(message) for message in outgoing]
    record.client_seconds[client.client_id][step] += time.perf_counter() - started
    if step is Step.MASKED_INPUT:
        for peer, refusal in sorted(client.rejected_shares.items()):
            record.rejections.append(Rejection(step, client.client_id, peer, refusal))
    return encoded


def _deliver_to_server(
    server: ServerProtocol, step: Step, sender: int, payload: bytes, record: _Recorder
) -> None:
    started = time.perf_counter()
    message = None
    try:
        message = decode(payload)
        server.receive(message)
        accepted = True
    except RemoteProtocolError as error:
        record.rejections.append(Rejection(step, None, sender, error))
        logger.info("server rejected a message from client %d at %s: %s", sender, step.label, error)
        accepted = False
    record.server_seconds[step] += time.perf_counter() - started
    if record.record_transcript and message is not None:
        record.transcript.append(TranscriptEntry(step, message, accepted))
