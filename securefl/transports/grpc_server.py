"""The server side of a federation over gRPC with mutual TLS: one bidirectional stream per client,
carrying the round's encoded messages (:mod:`securefl.fl.codec`) as raw bytes.

The wire.  One generic method, :data:`METHOD` (``/securefl.v1.Federation/Session``), bytes in and
bytes out, no protobuf schema and no pickle: every message on a stream is exactly one encoded
round message, except the empty message, which a client sends after its replies to each message
it received (:data:`END_OF_REPLIES`): it tells the server that client's turn is over, so a step
waits for nobody who has already answered (a client that answers nothing -- it left the round --
says so at once instead of being waited for until the deadline).  The server ends every stream
with status OK and the trailing metadata :data:`FINISHED_KEY` when the federation has finished.

Who is who.  gRPC's TLS (TLS 1.3, RFC 8446, with client certificates required) authenticates the
connection; :class:`NetworkServer` refuses calls that negotiated anything older than TLS 1.3
(``UNAUTHENTICATED``; grpcio cannot refuse them during the handshake, see
:mod:`securefl.deploy.pki`), then looks the client's certificate up in the
:class:`~securefl.deploy.pki.Enrolment` by its SHA-256 fingerprint: a certificate not enrolled,
or revoked, gets ``PERMISSION_DENIED``.  Each stream remembers the enrolment entry (certificate
fingerprint and verify key) it was let in under.  One stream per client: a new one replaces the
old (a reconnect).  Without TLS (``credentials=None``, the CLI's ``--insecure``) a client is
whoever its first message (an :class:`~securefl.fl.messages.Availability`) says it is, and a
warning says so; a call that sends no first message within ``join_timeout`` seconds
(:data:`JOIN_TIMEOUT`) is ended (``DEADLINE_EXCEEDED``), so idle calls cannot hold the
``max_streams`` slots.

Threads.  gRPC's handler threads only authenticate, put what arrives on one queue and take what
to send from each stream's own queue; every call on the sans-IO
:class:`~securefl.fl.server.FederatedServer` happens in the one thread that calls
:meth:`NetworkServer.wait_for_clients` and :meth:`NetworkServer.run_round`.

Bounds.  Besides :func:`message_limit` on each message, what a client may send is counted as it
arrives, before it is queued: its join, then per message it was sent at most :data:`MAX_REPLIES`
messages and one :data:`END_OF_REPLIES` (a legitimate client sends at most two and the end).  A
client over that ends its stream (``RESOURCE_EXHAUSTED``, with the reason) and is a dropout of
the round: nothing it sent since the step began, or that waits for the time between rounds, goes
to the server program, so none of it is decoded or logged.  The queue from the gRPC threads to
the driver holds :data:`EVENTS_PER_STREAM` events per ``max_streams``; a reader that finds it
full waits (gRPC's flow control then holds its client back).  So the messages held at once are
at most that queue, plus per connected client ``MAX_REPLIES + 1`` per message it owes an answer
to, each at most ``max_message_bytes``.

Rounds.  :meth:`NetworkServer.run_round` mirrors :func:`securefl.fl.turns.run_turns`: it sends a
step's messages; the step ends when every client that was sent one has ended its replies or
disconnected, or when ``step_deadline`` seconds have passed (checked before each event, so a
stream of events cannot hold a step open); the replies are then handed to the
server **in client-id order**, whatever order they arrived in, and the server's ``close_step``
gives the next step: the server program sees the same calls in the same order as in process, so
the weights come out bit for bit those of the in-process transport.  A reply that arrives
after its step's deadline goes to the server at the end of the step it arrives in, if its round
is still open (the server refuses it as unexpected: that client is a dropout of the round, which
secure aggregation recovers from, Bonawitz et al., CCS 2017, and a plain sum aggregates
without), or between rounds if its round is over (refused there, it costs the client nothing in
the round it has been sampled for since).  A message over
:func:`message_limit` ends that client's stream (gRPC's ``RESOURCE_EXHAUSTED``); malformed bytes,
a wrong round or a replay are refused by the server program, which drops that client from the
round; neither stops the server.

Membership.  A client that disconnects is reported to the server as unavailable (it is not
sampled until it joins again); the enrolment list is re-read between rounds and on every new
connection, and then every stream whose client is no longer enrolled with the entry it was let in
under (removed, or re-enrolled with another certificate or key: what
:meth:`~securefl.deploy.pki.Enrolment.refresh` reports, tested per stream) is ended
(``PERMISSION_DENIED``) without a restart; what it sent and the server has not taken is dropped.
"""

from __future__ import annotations

import collections
import enum
import logging
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from securefl.deploy.pki import EnrolledClient, Enrolment, TlsFiles, certificate_fingerprint
from securefl.errors import ConfigError, DecodeError
from securefl.fl.codec import decode, encode
from securefl.fl.messages import Availability
from securefl.fl.secure_channel import RingEncoding
from securefl.fl.server import FederatedServer
from securefl.fl.turns import Traffic
from securefl.protocols.secagg.ring import packed_size

log = logging.getLogger(__name__)

SERVICE = "securefl.v1.Federation"
METHOD = f"/{SERVICE}/Session"
FINISHED_KEY = "securefl-finished"
"""Trailing metadata on the OK status that ends a stream once the federation has finished."""
CLIENT_ID_KEY = "securefl-client-id"
"""Initial metadata: the server let the client in, and the id it knows the client by."""
END_OF_REPLIES = b""
"""What a client sends after its replies to one message: its turn is over."""
TLS_VERSION = b"TLSv1.3"

ServerTls = TlsFiles
"""The server's certificate and key, and the CA its clients' certificates must chain to."""

MESSAGE_MARGIN = 64 * 1024
"""Bytes :func:`message_limit` allows beyond the vectors: headers, settings, a round's setup."""
PER_CLIENT_BYTES = 512
"""Bytes :func:`message_limit` allows per client of a round: a secure-aggregation key-directory
entry (id, two 32-byte keys, a 64-byte signature), a relayed pair of sealed Shamir shares
(160 bytes) and an id in a round's participant list each fit several times over."""

KEEPALIVE = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)
"""HTTP/2 pings both ways, so a peer whose machine vanished is noticed within a minute."""

MAX_REPLIES = 4
"""The most messages a client may send in answer to one message it was sent, besides its
:data:`END_OF_REPLIES` (a legitimate client sends at most two: a
:class:`~securefl.fl.messages.Decline` and an :class:`~securefl.fl.messages.Availability`, or
one :class:`~securefl.fl.messages.AggregationMessage`)."""
EVENTS_PER_STREAM = 2
"""The queue from the gRPC threads to the driver holds at most this many events per concurrent
call (:attr:`NetworkServer.max_streams`); a reader that finds it full waits."""
JOIN_TIMEOUT = 5.0
"""Seconds a call without TLS has to send its first message (its join) before it is ended."""


def message_limit(num_params: int, *, clients: int, ring: RingEncoding | None = None) -> int:
    """The largest message a legitimate peer of a federation sends, with room to spare: the
    larger of a :class:`~securefl.fl.messages.TrainRequest`'s model (``4·num_params`` bytes of
    float32, as large as a plain sum's contribution) and, with secure aggregation, the masked
    vector packed at the ring's bits (``ceil(vector_length·bits/8)``), plus
    :data:`PER_CLIENT_BYTES` per client (the messages that grow with a round's size) and
    :data:`MESSAGE_MARGIN`.  ``ring`` is the federation's secure channel (``None`` without secure
    aggregation); ``clients`` the most clients a round can have."""
    if num_params < 1 or clients < 1:
        raise ValueError(f"num_params {num_params} and clients {clients} must be positive")
    vectors = 4 * num_params
    if ring is not None:
        vectors = max(vectors, packed_size(ring.vector_length, ring.config.bits))
    return vectors + PER_CLIENT_BYTES * clients + MESSAGE_MARGIN


# ---- what the server tells its caller --------------------------------------------------------


@dataclass(frozen=True)
class ClientConnected:
    client_id: int
    connected: int
    """Clients connected now."""


@dataclass(frozen=True)
class ClientDisconnected:
    client_id: int
    connected: int
    reason: str


@dataclass(frozen=True)
class StepStarted:
    round_index: int
    step: int
    clients: int
    """Clients sent a message in this step."""
    deadline_seconds: float


@dataclass(frozen=True)
class RoundFinished:
    round_index: int
    traffic: Traffic


NetworkEvent = ClientConnected | ClientDisconnected | StepStarted | RoundFinished
"""What :class:`NetworkServer` reports through ``on_event``, always from its driver thread."""


# ---- between the gRPC threads and the driver -------------------------------------------------


class _Close(enum.Enum):
    CLOSED = "closed"
    """The call has ended (cancelled by the client, or the connection is gone)."""


@dataclass(frozen=True)
class _End:
    """End a stream: OK with the finished marker, or an error status."""

    code: grpc.StatusCode | None
    details: str = ""


_FINISHED = _End(None)


_Step = tuple[int, int]
"""(round index, step index)."""


@dataclass(eq=False)
class _Stream:
    """One client's call: the enrolment entry it was let in under (``None``: none yet), what to
    send it (filled by the driver, emptied by its handler thread), the step of each message it has
    not finished answering (the driver's only), and what it may still send (its reader's and the
    driver's, under ``lock``): its join, then per message it was sent up to :data:`MAX_REPLIES`
    messages and one :data:`END_OF_REPLIES`."""

    client_id: int
    entry: EnrolledClient | None
    joined: bool = False
    outbox: queue.Queue[bytes | _End | _Close] = field(default_factory=queue.Queue)
    answering: collections.deque[_Step] = field(default_factory=collections.deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    owed: int = 0
    """Messages sent to the client that it has not ended its replies to."""
    replied: int = 0
    """Messages it sent in answer to the oldest of those."""

    def send(self, data: bytes, step: _Step) -> None:
        """Send ``data`` (the driver): the client may answer it."""
        with self.lock:
            self.owed += 1
        self.answering.append(step)
        self.outbox.put(data)

    def admit(self, data: bytes) -> str | None:
        """Count ``data`` against what the client may send (its reader); why not, if over."""
        with self.lock:
            if not self.joined:
                self.joined = True
                return None
            if data == END_OF_REPLIES:
                if self.owed == 0:
                    return "it ended its replies to a message it was not sent"
                self.owed -= 1
                self.replied = 0
                return None
            if self.owed == 0:
                return "it sent a message while it had nothing to answer"
            if self.replied >= MAX_REPLIES:
                return f"it sent more than {MAX_REPLIES} replies to one message"
            self.replied += 1
            return None

    def answers(self, data: bytes) -> _Step | None:
        """The step of the message ``data`` answers (``None``: a message nobody asked for, such as
        a join); the client's end of replies closes that message."""
        step = self.answering[0] if self.answering else None
        if data == END_OF_REPLIES and self.answering:
            self.answering.popleft()
        return step


@dataclass(frozen=True)
class _Opened:
    stream: _Stream


@dataclass(frozen=True)
class _Received:
    stream: _Stream
    data: bytes


@dataclass(frozen=True)
class _Gone:
    stream: _Stream
    reason: str
    cut: bool = False
    """The server ended it for sending more than it may: what it sent is not trusted."""


_Event = _Opened | _Received | _Gone


class NetworkServer:
    """Serves a federation's clients over gRPC; drives a :class:`FederatedServer` round by round.

    ``address`` is host:port (port 0: any free port, :meth:`start` says which); ``credentials``
    the server's TLS files (``None``: plain text, which logs a warning); ``enrolment`` the clients
    it accepts; ``max_message_bytes`` the largest message either way (:func:`message_limit`);
    ``step_deadline`` how long a step waits for replies, in seconds; ``on_event`` receives a
    :data:`NetworkEvent` as things happen (from the thread driving the rounds); ``max_streams``
    is how many calls it serves at once (default: twice the clients enrolled at the start, plus
    8, as a reconnecting client's old call may linger); ``join_timeout`` how long a call without
    TLS has to send its join.
    """

    def __init__(
        self,
        address: str,
        *,
        credentials: ServerTls | None,
        enrolment: Enrolment,
        max_message_bytes: int,
        step_deadline: float,
        on_event: Callable[[NetworkEvent], None] | None = None,
        max_streams: int | None = None,
        join_timeout: float = JOIN_TIMEOUT,
    ) -> None:
        if not step_deadline > 0:
            raise ValueError(f"step_deadline {step_deadline} must be positive")
        self.address = address
        self.credentials = credentials
        self.enrolment = enrolment
        self.max_message_bytes = max_message_bytes
        self.step_deadline = step_deadline
        self.on_event = on_event
        self.max_streams = max_streams or 2 * len(enrolment.ids) + 8
        self.join_timeout = join_timeout
        self._events: queue.Queue[_Event] = queue.Queue(EVENTS_PER_STREAM * self.max_streams)
        self._stopping = threading.Event()
        self._streams: dict[int, _Stream] = {}  # the driver's: client id -> its current stream
        self._pending: list[tuple[int, bytes]] = []  # to hand over before the next round or wait
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._readers: list[threading.Thread] = []
        self._readers_lock = threading.Lock()
        self._finished = False
        if credentials is None:
            log.warning(
                "serving WITHOUT TLS: traffic is readable and alterable on the network, and a client "
                "is whoever its first message says it is; use TLS outside a test"
            )

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> int:
        """Listen; the bound port."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._stopping.clear()
        self._executor = futures.ThreadPoolExecutor(self.max_streams, thread_name_prefix="securefl-grpc")
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Session": grpc.stream_stream_rpc_method_handler(self._session)}
        )
        server = grpc.server(
            self._executor,
            handlers=[handler],
            maximum_concurrent_rpcs=self.max_streams,
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a second server on this port fails instead of sharing it
                *KEEPALIVE,
            ],
        )
        try:
            if self.credentials is None:
                port = server.add_insecure_port(self.address)
            else:
                files = self.credentials
                port = server.add_secure_port(
                    self.address,
                    grpc.ssl_server_credentials(
                        [(files.private_key.read_bytes(), files.certificate.read_bytes())],
                        root_certificates=files.ca_certificate.read_bytes(),
                        require_client_auth=True,
                    ),
                )
        except RuntimeError:
            port = 0
        if port == 0:
            server.stop(None)
            self._executor.shutdown()
            raise ConfigError(
                f"cannot listen on {self.address}: the port is in use or the address is not this "
                "machine's; choose another `federation.address`"
            )
        server.start()
        self._server = server
        log.info("listening on %s (port %d)", self.address, port)
        return port

    def close(self, grace: float | None = None) -> None:
        """Stop serving: streams still open are cancelled (after ``grace`` seconds)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # readers waiting on a full queue give up
        server.stop(grace).wait()
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.join(timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._streams.clear()

    def __enter__(self) -> NetworkServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def finish(self, grace: float = 5.0) -> None:
        """The federation has finished: end every stream with OK and :data:`FINISHED_KEY` (its
        client then exits; a client connecting from now on is told at once), then stop serving."""
        self._finished = True
        while (event := self._next_event(0)) is not None:
            if isinstance(event, _Opened):
                self._streams[event.stream.client_id] = event.stream
        for stream in self._streams.values():
            stream.outbox.put(_FINISHED)
        self._streams.clear()
        self.close(grace)

    @property
    def connected(self) -> frozenset[int]:
        """The clients with an open stream (as the driver last saw them)."""
        return frozenset(self._streams)

    # ---- the gRPC side (handler threads) -----------------------------------------------------

    def _session(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        first: bytes | None = None
        if self.credentials is None:
            first, client_id, entry = self._claimed_identity(requests, context)
        else:
            client_id, entry = self._certified_identity(context)
        context.send_initial_metadata(((CLIENT_ID_KEY, str(client_id)),))
        if self._finished:
            context.set_trailing_metadata(((FINISHED_KEY, "1"),))
            return
        stream = _Stream(client_id, entry, joined=first is not None)
        if not context.add_callback(lambda: stream.outbox.put(_Close.CLOSED)):
            return
        if not self._put(_Opened(stream)):
            return
        if first is not None and not self._put(_Received(stream, first)):
            return
        reader = threading.Thread(
            target=self._read, args=(stream, requests), name=f"securefl-read-{client_id}", daemon=True
        )
        with self._readers_lock:
            self._readers = [r for r in self._readers if r.is_alive()] + [reader]
        reader.start()
        while True:
            item = stream.outbox.get()
            if isinstance(item, bytes):
                yield item
            elif item is _Close.CLOSED:
                return
            elif item.code is None:
                context.set_trailing_metadata(((FINISHED_KEY, "1"),))
                return
            else:
                context.abort(item.code, item.details)

    def _certified_identity(self, context: grpc.ServicerContext) -> tuple[int, EnrolledClient]:
        auth = context.auth_context()
        version = auth.get("ssl_tls_version", [b"?"])[0]
        if version != TLS_VERSION:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"this federation accepts TLS 1.3 only, the connection negotiated {version.decode()}: "
                "upgrade the client's TLS library",
            )
        certificates = auth.get("x509_pem_cert")
        if not certificates:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate: present your identity")
        try:
            self.enrolment.refresh()
        except ConfigError as error:
            log.error("%s; keeping the enrolment list read before", error)
        fingerprint = certificate_fingerprint(certificates[0])
        client_id = self.enrolment.client_id_of(certificates[0])
        entry = None if client_id is None else self.enrolment.clients.get(client_id)
        if client_id is None or entry is None or entry.certificate_sha256 != fingerprint:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this certificate is not enrolled in the federation (never, or revoked): ask the "
                "federation operator to enrol this client's certificate",
            )
        assert client_id is not None and entry is not None
        return client_id, entry

    def _claimed_identity(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> tuple[bytes, int, EnrolledClient]:
        """The first message, read within :attr:`join_timeout` (a call that sends nothing would
        hold one of the :attr:`max_streams` slots for good), and whom it claims to be."""
        arrived: queue.Queue[bytes | None] = queue.Queue(1)

        def read_first() -> None:
            try:
                arrived.put(next(requests))
            except (StopIteration, grpc.RpcError):
                arrived.put(None)

        threading.Thread(target=read_first, name="securefl-join", daemon=True).start()
        try:
            first = arrived.get(timeout=self.join_timeout)
        except queue.Empty:
            context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no join message within {self.join_timeout:g}s: a session starts with the client's "
                "join message",
            )
        try:
            if first is None:
                raise DecodeError("no first message")
            message = decode(first)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with the client's join message")
        if not isinstance(message, Availability):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with the client's join message")
        assert isinstance(message, Availability)
        entry = self.enrolment.clients.get(message.client_id)
        if entry is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"client {message.client_id} is not enrolled")
        assert first is not None and entry is not None
        return first, message.client_id, entry

    def _put(self, event: _Event) -> bool:
        """Queue ``event`` for the driver, waiting while the queue is full; ``False`` if the
        server stops first."""
        while not self._stopping.is_set():
            try:
                self._events.put(event, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, stream: _Stream, requests: Iterator[bytes]) -> None:
        reason, cut = "it closed the stream", False
        try:
            for data in requests:
                if (excess := stream.admit(data)) is not None:
                    reason, cut = f"{excess}: its stream is ended", True
                    stream.outbox.put(_End(grpc.StatusCode.RESOURCE_EXHAUSTED, _excess(excess)))
                    break
                if not self._put(_Received(stream, data)):
                    break
        except grpc.RpcError:  # gRPC says no more than this on the server's side
            reason = "the call broke: cancelled, the connection lost, or a message over max_message_bytes"
        self._put(_Gone(stream, reason, cut))
        stream.outbox.put(_Close.CLOSED)

    # ---- the driver side (one thread) --------------------------------------------------------

    def _emit(self, event: NetworkEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _next_event(self, timeout: float) -> _Event | None:
        try:
            return self._events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def _track(self, event: _Event) -> _Stream | None:
        """Keep :attr:`_streams` up to date; the event's stream if it is its client's current one."""
        stream = event.stream
        current = self._streams.get(stream.client_id)
        match event:
            case _Opened():
                self._end_revoked()  # the enrolment list was re-read for this connection
                if not self._still_enrolled(stream):  # revoked since it was let in
                    stream.outbox.put(_End(grpc.StatusCode.PERMISSION_DENIED, _revoked(stream.client_id)))
                    return None
                current = self._streams.get(stream.client_id)
                if current is not None:
                    current.outbox.put(_End(grpc.StatusCode.ABORTED, "replaced by a newer connection"))
                self._streams[stream.client_id] = stream
                self._emit(ClientConnected(stream.client_id, len(self._streams)))
                return stream
            case _Gone() if current is stream:
                self._depart(stream.client_id, event.reason, distrust=event.cut)
                return None
        return stream if current is stream else None

    def _still_enrolled(self, stream: _Stream) -> bool:
        """Whether ``stream``'s client is still enrolled with the certificate (and key) it was let
        in with: :meth:`Enrolment.refresh`'s test, per stream."""
        return stream.entry is not None and self.enrolment.clients.get(stream.client_id) == stream.entry

    def _end_revoked(self) -> list[int]:
        """End the streams of clients removed from the enrolment list or enrolled there with
        another certificate or key since their stream was let in; their ids."""
        revoked = sorted(c for c, s in self._streams.items() if not self._still_enrolled(s))
        for client_id in revoked:
            self._streams[client_id].outbox.put(_End(grpc.StatusCode.PERMISSION_DENIED, _revoked(client_id)))
            self._depart(client_id, "revoked", distrust=True)
        return revoked

    def _depart(self, client_id: int, reason: str, *, distrust: bool = False) -> None:
        """``client_id``'s stream is over: the server hears it is unavailable (until it rejoins);
        with ``distrust``, what it sent that waits for the server is dropped first."""
        del self._streams[client_id]
        if distrust:
            self._pending = [(c, data) for c, data in self._pending if c != client_id]
        self._pending.append((client_id, encode(Availability(client_id, False))))
        log.info("client %d disconnected: %s", client_id, reason)
        self._emit(ClientDisconnected(client_id, len(self._streams), reason))

    def _absorb(self, event: _Event) -> None:
        """An event outside a step: messages wait for the next round or wait."""
        stream = self._track(event)
        if stream is not None and isinstance(event, _Received):
            stream.answers(event.data)
            if event.data != END_OF_REPLIES:
                self._pending.append((stream.client_id, event.data))

    def _settle(self, server: FederatedServer) -> None:
        """Before a round or a wait: take in what has arrived, end revoked clients' streams, and
        hand the server what waited (per client in arrival order, clients in id order)."""
        while (event := self._next_event(0)) is not None:
            self._absorb(event)
        try:
            self.enrolment.refresh()
        except ConfigError as error:
            log.error("%s; keeping the enrolment list read before", error)
        self._end_revoked()
        pending, self._pending = self._pending, []
        for client_id, data in sorted(pending, key=lambda item: item[0]):  # sorted() is stable
            server.receive(client_id, data)

    def wait_for_clients(self, server: FederatedServer, count: int, timeout: float) -> int:
        """Hand the clients' joins to ``server`` until ``count`` connected clients can train or
        ``timeout`` seconds have passed; how many connected clients can train."""
        deadline = time.monotonic() + timeout
        while True:
            self._settle(server)
            ready = len(set(server.eligible) & set(self._streams))
            remaining = deadline - time.monotonic()
            if ready >= count or remaining <= 0:
                return ready
            event = self._next_event(remaining)
            if event is not None:
                self._absorb(event)

    def run_round(self, server: FederatedServer) -> Traffic:
        """One round over the network, from the server's train requests to its record."""
        self._settle(server)
        traffic = Traffic()
        outgoing = server.start_round()
        step = 0
        while not server.finished:
            awaited: Counter[int] = Counter()
            for client_id, data in outgoing:
                stream = self._streams.get(client_id)
                if stream is not None:  # a client gone is a dropout of this step
                    stream.send(data, (server.round_index, step))
                    traffic.bytes_down[client_id] += len(data)
                    awaited[client_id] += 1
            self._emit(StepStarted(server.round_index, step, len(awaited), self.step_deadline))
            replies, seconds = self._collect(awaited, (server.round_index, step))
            traffic.client_seconds.append(seconds)
            started = time.perf_counter()
            for client_id in sorted(replies):
                for data in replies[client_id]:
                    traffic.bytes_up[client_id] += len(data)
                    server.receive(client_id, data)
            traffic.server_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
            outgoing = server.close_step()
            traffic.server_seconds.append(time.perf_counter() - started)
            step += 1
        self._emit(RoundFinished(server.round_index, traffic))
        return traffic

    def _collect(
        self, awaited: Counter[int], current: _Step
    ) -> tuple[dict[int, list[bytes]], dict[int, float]]:
        """A step's replies, until every awaited client has ended its replies or gone, or the
        deadline: per client, what answers a message of this round (the server judges it now: a
        reply to an earlier step is late, and drops its client), and the seconds each awaited
        client took.  Replies to an earlier round, and messages nobody asked for, wait for the
        time between rounds (the server refuses the former there without costing the client the
        round it is in now)."""
        sent = time.monotonic()
        deadline = sent + self.step_deadline
        replies: dict[int, list[bytes]] = defaultdict(list)
        seconds: dict[int, float] = {}
        while +awaited:
            remaining = deadline - time.monotonic()  # checked first: a flood cannot hold the step open
            if remaining <= 0:
                late = sorted(+awaited)
                log.info(
                    "step deadline (%gs) passed without the replies of clients %s", self.step_deadline, late
                )
                break
            event = self._next_event(remaining)
            if event is None:
                continue
            before = set(self._streams)
            client_id = event.stream.client_id
            was_current = self._streams.get(client_id) is event.stream
            stream = self._track(event)
            if isinstance(event, _Gone) and event.cut and was_current:
                replies.pop(client_id, None)  # over its bound: nothing it sent goes to the server
            for revoked in before - set(self._streams) - {client_id}:
                replies.pop(revoked, None)  # ended at the re-read of the enrolment list
                awaited.pop(revoked, None)
            if isinstance(event, _Opened) or client_id not in self._streams:
                awaited.pop(client_id, None)  # gone, revoked or reconnected: it lost this step
                continue
            if stream is None or not isinstance(event, _Received):
                continue  # from a stream its client has replaced
            answered = stream.answers(event.data)
            if event.data == END_OF_REPLIES:
                if answered == current and awaited[client_id] > 0:
                    awaited[client_id] -= 1
                    seconds[client_id] = time.monotonic() - sent
            elif answered is not None and answered[0] == current[0]:
                replies[client_id].append(event.data)
            else:
                self._pending.append((client_id, event.data))
        return replies, seconds


def _excess(why: str) -> str:
    return (
        f"{why}: a client answers each message it is sent with at most {MAX_REPLIES} messages and "
        "one end of replies"
    )


def _revoked(client_id: int) -> str:
    return f"client {client_id} was revoked from the federation's enrolment list: ask its operator"
