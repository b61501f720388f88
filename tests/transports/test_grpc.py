"""A federation over gRPC with mutual TLS, on loopback: the same final weights as the in-process
transport, bit for bit; refused identities; bad peers, stragglers and a restarted server cost a
dropout, never the server.

Every server, client thread and proxy a test starts is stopped by the test (``_network`` and
``_TlsProxy`` clean up in ``finally``), and every wait has a timeout.  Client programs run as
threads of this process, each with its own trainer and its own gRPC channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import queue
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc
import pytest
import torch

from securefl.config import RunConfig, SecAggConfig
from securefl.deploy.pki import (
    Enrolment,
    Identity,
    certificate_fingerprint,
    create_pki,
    revoke,
    write_enrolment,
)
from securefl.errors import AccessRefusedError, ServerUnreachableError
from securefl.federation import Programs, build_federation, build_programs
from securefl.fl.codec import decode, encode
from securefl.fl.messages import Availability, TrainRequest
from securefl.fl.turns import NO_FAULTS, Faults, run_turns
from securefl.transports.grpc_client import Backoff, run_client
from securefl.transports.grpc_server import (
    CLIENT_ID_KEY,
    END_OF_REPLIES,
    MAX_REPLIES,
    METHOD,
    ClientConnected,
    NetworkEvent,
    NetworkServer,
    RoundFinished,
    _Received,
    _Stream,
    message_limit,
)
from securefl.transports.inprocess import InProcessTransport

FAST = Backoff(initial=0.05, maximum=0.5, give_up_after=60.0)
JOIN_TIMEOUT = 60.0
STEP_DEADLINE = 60.0


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_thread_left_behind():
    yield
    deadline = time.monotonic() + 10
    while (left := [t.name for t in threading.enumerate() if t.name.startswith(("securefl-", "test-"))]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not left, f"threads outlived the test: {left}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Five client identities; the federations below enrol the first four (client 4 is a client
    of the right CA that nobody enrolled)."""
    pki = create_pki(tmp_path_factory.mktemp("pki") / "federation", clients=5)
    enrolment = Enrolment.load(pki.enrolment)
    write_enrolment(pki.enrolment, {c: e for c, e in enrolment.clients.items() if c < 4})
    return pki


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return create_pki(tmp_path_factory.mktemp("other") / "federation", clients=4)


def _config(secagg: SecAggConfig | None = None, *, rounds: int = 2) -> RunConfig:
    return RunConfig(
        dataset="digits",
        model="mlp",
        clients=4,
        rounds=rounds,
        lr=0.05,
        batch_size=16,
        threads=1,
        seed=0,
        secagg=secagg,
    )


SECAGG = SecAggConfig()
ACTIVE = SecAggConfig(active_adversary=True)


def _programs(config: RunConfig, pki) -> Programs:
    """The programs of a deployment: each client its own trainer (the simulation shares one) and,
    against an active server, its signing key from its identity, whose public half the server
    knows from the enrolment list."""
    fed = build_federation(config)
    fed = dataclasses.replace(fed, trainers={c: copy.deepcopy(t) for c, t in fed.trainers.items()})
    if fed.signing_keys is not None:
        fed = dataclasses.replace(
            fed,
            signing_keys={c: pki.clients[c].load_signing_key() for c in fed.signing_keys},
            channel=fed.channel.with_verify_keys(Enrolment.load(pki.enrolment).verify_keys()),
        )
    return build_programs(fed)


def _in_process(
    config: RunConfig,
    pki,
    *,
    faults: Mapping[int, Faults] | None = None,
    joined: Callable[[int], bool] = lambda client_id: True,
) -> torch.Tensor:
    """The reference: the same federation in process; ``faults[r]`` crashes clients in round
    ``r``; only the clients ``joined`` says enrol."""
    programs = _programs(config, pki)
    faults = faults or {}
    transport = InProcessTransport(faults_for=lambda round_index, _: faults.get(round_index, NO_FAULTS))
    with transport:
        transport.enrol(programs.server, {c: p for c, p in programs.clients.items() if joined(c)})
        for _ in range(config.rounds):
            transport.run_round(programs.server, programs.clients)
    return programs.server.params


def _limit(programs: Programs, config: RunConfig) -> int:
    ring = programs.server.aggregation if config.secagg is not None else None
    return message_limit(programs.server.params.numel(), clients=config.clients, ring=ring)


class _Network:
    """A server on loopback and client threads running :func:`run_client`."""

    def __init__(self, net: NetworkServer, port: int, limit: int) -> None:
        self.net = net
        self.port = port
        self.limit = limit
        self.address = f"127.0.0.1:{port}"
        self.events: list[NetworkEvent] = []
        self.threads: dict[str, threading.Thread] = {}
        self.errors: dict[str, BaseException] = {}
        self.stop = threading.Event()

    def client(
        self,
        name: str,
        program,
        identity: Identity | None,
        *,
        max_message_bytes: int | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> None:
        def serve() -> None:
            try:
                run_client(
                    program,
                    address=self.address,
                    tls=identity.tls if identity is not None else None,
                    max_message_bytes=max_message_bytes or self.limit,
                    backoff=FAST,
                    stop=self.stop,
                    before_send=before_send,
                )
            except BaseException as error:
                self.errors[name] = error

        thread = threading.Thread(target=serve, name=f"test-client-{name}")
        self.threads[name] = thread
        thread.start()

    def join(self, name: str, timeout: float = 60.0) -> BaseException | None:
        self.threads[name].join(timeout)
        assert not self.threads[name].is_alive(), f"client {name} still runs"
        return self.errors.get(name)


@contextlib.contextmanager
def _network(
    programs: Programs,
    pki,
    config: RunConfig,
    *,
    tls: bool = True,
    port: int = 0,
    step_deadline: float = STEP_DEADLINE,
    enrolment: Path | None = None,
    max_streams: int | None = None,
    join_timeout: float | None = None,
) -> Iterator[_Network]:
    limit = _limit(programs, config)
    events: list[NetworkEvent] = []
    net = NetworkServer(
        f"127.0.0.1:{port}",
        credentials=pki.server.tls if tls else None,
        enrolment=Enrolment.load(enrolment or pki.enrolment),
        max_message_bytes=limit,
        step_deadline=step_deadline,
        on_event=events.append,
        max_streams=max_streams,
        **({} if join_timeout is None else {"join_timeout": join_timeout}),
    )
    network = _Network(net, net.start(), limit)
    network.events = events
    try:
        yield network
    finally:
        network.stop.set()
        net.finish(grace=2.0)
        for name, thread in network.threads.items():
            thread.join(timeout=60)
            assert not thread.is_alive(), f"client thread {name} outlived the test"


def _serve_honest(network: _Network, programs: Programs, pki, ids=range(4), *, tls: bool = True) -> None:
    for c in ids:
        network.client(str(c), programs.clients[c], pki.clients[c] if tls else None)


def _run_rounds(network: _Network, programs: Programs, rounds: int, expected_clients: int) -> None:
    assert network.net.wait_for_clients(programs.server, expected_clients, JOIN_TIMEOUT) == expected_clients
    for _ in range(rounds):
        network.net.run_round(programs.server)


# ---- the same weights as in process ----------------------------------------------------------


@pytest.mark.filterwarnings("ignore:secure-aggregation parameters break a rule")
@pytest.mark.parametrize(
    ("secagg", "tls"),
    [(None, True), (SECAGG, True), (ACTIVE, True), (None, False)],
    ids=["plain", "secagg", "secagg-active", "plain-insecure"],
)
def test_grpc_gives_the_in_process_weights_bit_for_bit(pki, secagg, tls):
    config = _config(secagg)
    expected = _in_process(config, pki)
    programs = _programs(config, pki)
    with _network(programs, pki, config, tls=tls) as network:
        _serve_honest(network, programs, pki, tls=tls)
        _run_rounds(network, programs, config.rounds, 4)
        records = programs.server.records
        network.net.finish()
        for c in range(4):
            assert network.join(str(c)) is None  # the finished marker: every client returned
    assert torch.equal(programs.server.params, expected)
    assert [r.survivors for r in records] == [4, 4]
    finished = [e for e in network.events if isinstance(e, RoundFinished)]
    assert [e.round_index for e in finished] == [1, 2]
    # a client sends its contribution and nothing else of size: the model's float32 vector
    num_params = programs.server.params.numel()
    for client_id, sent in finished[0].traffic.bytes_up.items():
        assert 4 * num_params <= sent <= 1.05 * 4 * num_params + 4096 * (secagg is not None), client_id


@pytest.mark.filterwarnings("ignore:secure-aggregation parameters break a rule")
@pytest.mark.parametrize("secagg", [None, SecAggConfig(bits=62)], ids=["plain", "secagg-62-bits"])
def test_message_limit_fits_the_largest_legitimate_message_with_little_to_spare(pki, secagg):
    config = _config(secagg, rounds=1)
    programs = _programs(config, pki)
    sizes: list[int] = []

    def recording(receive: Callable[[bytes], list[bytes]]) -> Callable[[bytes], list[bytes]]:
        def wrapped(data: bytes) -> list[bytes]:
            replies = receive(data)
            sizes.extend([len(data), *(len(r) for r in replies)])
            return replies

        return wrapped

    for client_id, client in programs.clients.items():
        programs.server.receive(client_id, client.join())
    clients = {c: recording(client.receive) for c, client in programs.clients.items()}
    run_turns(programs.server, clients, programs.server.start_round())
    limit = _limit(programs, config)
    assert max(sizes) <= limit < max(sizes) + 128 * 1024


# ---- who may join ------------------------------------------------------------------------------


def _refusal_run(pki, refused: Callable[[_Network, Programs], None], *, enrolment: Path | None = None):
    """Clients 0-2 honest, client 3's seat taken by ``refused``; one round.  Returns the network and
    the server's params."""
    config = _config(rounds=1)
    programs = _programs(config, pki)
    with _network(programs, pki, config, enrolment=enrolment) as network:
        _serve_honest(network, programs, pki, ids=range(3))
        refused(network, programs)
        error = network.join("refused")
        _run_rounds(network, programs, 1, 3)
    assert torch.equal(programs.server.params, _in_process(config, pki, joined=lambda c: c < 3))
    assert programs.server.records[-1].survivors == 3
    return error, network


def test_a_client_certificate_from_another_ca_is_refused(pki, other_pki):
    # a certificate another CA issued (for a "client-3" too), by someone who trusts our CA
    impostor = dataclasses.replace(other_pki.clients[3], ca_certificate=pki.ca_certificate)
    error, _ = _refusal_run(pki, lambda n, p: n.client("refused", p.clients[3], impostor))
    assert isinstance(error, AccessRefusedError)
    assert "hung up right after the TLS handshake" in str(error)


def test_a_server_certificate_from_another_ca_is_refused_by_the_client(pki, other_pki, tmp_path):
    foreign_ca = tmp_path / "ca.pem"
    foreign_ca.write_bytes(other_pki.ca_certificate.read_bytes())  # this client trusts another CA
    mistrusting = dataclasses.replace(pki.clients[3], ca_certificate=foreign_ca)
    error, _ = _refusal_run(pki, lambda n, p: n.client("refused", p.clients[3], mistrusting))
    assert isinstance(error, AccessRefusedError)
    assert "presented a certificate this client does not trust" in str(error)


def test_a_client_of_the_right_ca_that_is_not_enrolled_is_refused(pki):
    # client 4's certificate is from the federation's CA, but not on the enrolment list
    error, _ = _refusal_run(pki, lambda n, p: n.client("refused", p.clients[3], pki.clients[4]))
    assert isinstance(error, AccessRefusedError)
    assert "not enrolled" in str(error)


def test_a_revoked_client_is_refused(pki, tmp_path):
    enrolment = tmp_path / "enrolment.json"
    enrolment.write_bytes(pki.enrolment.read_bytes())
    revoke(enrolment, 3)
    error, _ = _refusal_run(
        pki, lambda n, p: n.client("refused", p.clients[3], pki.clients[3]), enrolment=enrolment
    )
    assert isinstance(error, AccessRefusedError)
    assert "not enrolled" in str(error)


def test_a_client_revoked_while_connected_is_cut_off_at_the_next_round_without_a_restart(pki, tmp_path):
    enrolment = tmp_path / "enrolment.json"
    enrolment.write_bytes(pki.enrolment.read_bytes())
    config = _config(rounds=2)
    programs = _programs(config, pki)
    with _network(programs, pki, config, enrolment=enrolment) as network:
        _serve_honest(network, programs, pki)
        _run_rounds(network, programs, 1, 4)
        revoke(enrolment, 3)
        network.net.run_round(programs.server)
        error = network.join("3")
        assert isinstance(error, AccessRefusedError) and "revoked" in str(error)
    assert [r.clients for r in programs.server.records] == [4, 3]
    assert torch.equal(programs.server.params, _client_3_leaves_after_round_1(config, pki))


def _client_3_leaves_after_round_1(config: RunConfig, pki) -> torch.Tensor:
    """The reference: client 3 leaves after round 1 (the server hears it cannot train any more)."""
    reference = _programs(config, pki)
    with InProcessTransport() as transport:
        transport.enrol(reference.server, reference.clients)
        transport.run_round(reference.server, reference.clients)
        reference.server.receive(3, encode(Availability(3, False)))
        transport.run_round(reference.server, reference.clients)
    return reference.server.params


def test_a_client_whose_certificate_is_replaced_while_connected_is_cut_off_at_the_next_round(pki, tmp_path):
    """The operator enrols a re-issued certificate under id 3 (the old key leaked): the stream the
    old certificate opened is ended, although id 3 is still enrolled."""
    enrolment = tmp_path / "enrolment.json"
    enrolment.write_bytes(pki.enrolment.read_bytes())
    config = _config(rounds=2)
    programs = _programs(config, pki)
    with _network(programs, pki, config, enrolment=enrolment) as network:
        _serve_honest(network, programs, pki)
        _run_rounds(network, programs, 1, 4)
        clients = Enrolment.load(enrolment).clients
        reissued = certificate_fingerprint(pki.clients[4].certificate.read_bytes())
        clients[3] = dataclasses.replace(clients[3], certificate_sha256=reissued)
        write_enrolment(enrolment, clients)
        network.net.run_round(programs.server)
        error = network.join("3")
        assert isinstance(error, AccessRefusedError) and "revoked" in str(error)
        assert 3 not in network.net.connected
    assert [r.clients for r in programs.server.records] == [4, 3]
    assert torch.equal(programs.server.params, _client_3_leaves_after_round_1(config, pki))


# ---- TLS versions ------------------------------------------------------------------------------


class _TlsProxy:
    """Plain-text HTTP/2 in, TLS out (at most ``maximum``, presenting ``identity``): lets a grpcio
    client reach the server over a TLS version grpcio itself would not choose."""

    def __init__(self, server_port: int, identity: Identity, maximum: ssl.TLSVersion) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.maximum_version = maximum
        self.context.load_verify_locations(cafile=str(identity.ca_certificate))
        self.context.load_cert_chain(str(identity.certificate), str(identity.private_key))
        self.context.set_alpn_protocols(["h2"])
        self.server_port = server_port
        self.versions: list[str | None] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-tls-proxy")
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", 0), self.loop
        ).result(timeout=10)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.server_port, ssl=self.context, server_hostname="127.0.0.1"
        )
        self.versions.append(up_writer.get_extra_info("ssl_object").version())

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


def _session_through(port: int) -> tuple[grpc.StatusCode | None, dict]:
    """Open a session through a plain-text port; its refusal code (None if accepted) and the
    initial metadata."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(METHOD)(iter([encode(Availability(0, True))]), timeout=20)
        metadata = dict(call.initial_metadata() or ())
        try:
            for _ in call:
                break
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                return error.code(), metadata
        finally:
            call.cancel()
    return None, metadata


def test_calls_over_tls_older_than_1_3_are_refused_and_grpc_clients_speak_1_3(pki):
    config = _config(rounds=1)
    programs = _programs(config, pki)
    with _network(programs, pki, config) as network:
        # what grpcio cannot do: refuse TLS 1.2 in the handshake (documented in deploy/pki.py)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cafile=str(pki.clients[0].ca_certificate))
        context.load_cert_chain(str(pki.clients[0].certificate), str(pki.clients[0].private_key))
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", network.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as connection,
        ):
            assert connection.version() == "TLSv1.2"
        # ... what it does instead: a call over TLS 1.2 is refused before any message
        for maximum, expected in (
            (ssl.TLSVersion.TLSv1_2, grpc.StatusCode.UNAUTHENTICATED),
            (ssl.TLSVersion.TLSv1_3, None),
        ):
            proxy = _TlsProxy(network.port, pki.clients[0], maximum)
            try:
                code, metadata = _session_through(proxy.port)
            finally:
                proxy.close()
            assert proxy.versions and set(proxy.versions) == {maximum.name.replace("_", ".")}
            assert code is expected
            assert (CLIENT_ID_KEY in metadata) is (expected is None)
        # and a grpcio client negotiates TLS 1.3 (the server accepts nothing else)
        network.client("0", programs.clients[0], pki.clients[0])
        assert network.net.wait_for_clients(programs.server, 1, JOIN_TIMEOUT) == 1


# ---- bad peers ---------------------------------------------------------------------------------


class _Tampering:
    """A client program whose replies in round ``round_index`` are replaced by ``tamper(replies,
    history)`` (``history``: every reply it sent before)."""

    def __init__(
        self, honest, round_index: int, tamper: Callable[[list[bytes], list[bytes]], list[bytes]]
    ) -> None:
        self.honest = honest
        self.client_id = honest.client_id
        self.round_index = round_index
        self.tamper = tamper
        self.history: list[bytes] = []
        self.current_round = 0

    def join(self) -> bytes:
        return self.honest.join()

    def receive(self, data: bytes) -> list[bytes]:
        message = decode(data)
        if isinstance(message, TrainRequest):
            self.current_round = message.round_index
        replies = self.honest.receive(data)
        if self.current_round == self.round_index:
            replies = self.tamper(replies, self.history)
        self.history.extend(replies)
        return replies


def _garbage(replies: list[bytes], history: list[bytes]) -> list[bytes]:
    return [b"\x00not a round message" for _ in replies]


def _replay(replies: list[bytes], history: list[bytes]) -> list[bytes]:
    return history[: len(replies)]  # the same step's messages of round 1


@pytest.mark.filterwarnings("ignore:secure-aggregation parameters break a rule")
@pytest.mark.parametrize("secagg", [None, SECAGG], ids=["plain", "secagg"])
@pytest.mark.parametrize("attack", ["garbage", "replay", "oversized"])
def test_a_bad_peer_is_dropped_for_the_round_and_the_round_is_right(pki, secagg, attack):
    config = _config(secagg)
    programs = _programs(config, pki)
    expected = _in_process(config, pki, faults={2: Faults(before={3: 0})})  # client 3 drops out of round 2
    with _network(programs, pki, config) as network:
        oversized = network.limit + 1

        def too_big(replies: list[bytes], history: list[bytes]) -> list[bytes]:
            return [b"\x00" * oversized for _ in replies]

        tamper = {"garbage": _garbage, "replay": _replay, "oversized": too_big}[attack]
        _serve_honest(network, programs, pki, ids=range(3))
        # the oversized sender raises its own sending limit, so the server's limit is the one tested
        network.client(
            "3", _Tampering(programs.clients[3], 2, tamper), pki.clients[3], max_message_bytes=4 * oversized
        )
        _run_rounds(network, programs, config.rounds, 4)
    assert torch.equal(programs.server.params, expected)
    assert [r.survivors for r in programs.server.records] == [4, 3]


class _Straggler:
    """A client that holds its replies in round ``round_index`` until ``release`` is set."""

    def __init__(self, honest, round_index: int, release: threading.Event) -> None:
        self.honest = honest
        self.client_id = honest.client_id
        self.round_index = round_index
        self.release = release

    def join(self) -> bytes:
        return self.honest.join()

    def receive(self, data: bytes) -> list[bytes]:
        message = decode(data)
        if isinstance(message, TrainRequest) and message.round_index == self.round_index:
            self.release.wait(timeout=120)
        return self.honest.receive(data)


def test_a_straggler_past_the_deadline_is_dropped_and_the_round_does_not_wait_for_it(pki):
    """Client 3 holds its round-2 reply past the deadline: round 2 ends at the deadline without
    it; its late reply arrives during round 3, which it answers in time and survives (the late
    reply is refused between rounds, not held against round 3)."""
    config = _config(rounds=3)
    programs = _programs(config, pki)
    expected = _in_process(config, pki, faults={2: Faults(before={3: 0})})
    release = threading.Event()
    deadline = 5.0
    try:
        with _network(programs, pki, config, step_deadline=deadline) as network:
            _serve_honest(network, programs, pki, ids=range(3))
            network.client("3", _Straggler(programs.clients[3], 2, release), pki.clients[3])
            _run_rounds(network, programs, 1, 4)
            started = time.monotonic()
            network.net.run_round(programs.server)
            took = time.monotonic() - started
            release.set()
            network.net.run_round(programs.server)
    finally:
        release.set()
    assert deadline <= took < 60  # it waited for the deadline, not for the straggler (held for 120 s)
    assert [r.survivors for r in programs.server.records] == [4, 3, 4]
    assert torch.equal(programs.server.params, expected)


class _RawCall:
    """A call of its own (not :func:`run_client`): joins as ``client_id``, then, once the server
    has sent it a message, sends ``flood`` and waits, sending nothing more; ``join=False`` sends
    nothing at all.  :meth:`close` cancels it."""

    def __init__(
        self,
        address: str,
        identity: Identity | None,
        client_id: int,
        *,
        flood: list[bytes] = (),  # type: ignore[assignment]
        join: bool = True,
    ) -> None:
        if identity is None:
            self.channel = grpc.insecure_channel(address)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=identity.ca_certificate.read_bytes(),
                private_key=identity.private_key.read_bytes(),
                certificate_chain=identity.certificate.read_bytes(),
            )
            self.channel = grpc.secure_channel(address, credentials)
        self.outbox: queue.Queue[bytes | None] = queue.Queue()
        if join:
            self.outbox.put(encode(Availability(client_id, True)))
        self.flood = flood
        self.call = self.channel.stream_stream(METHOD)(iter(self.outbox.get, None))
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.ended = threading.Event()
        self.reader = threading.Thread(target=self._read, name=f"test-raw-{client_id}")
        self.reader.start()

    def _read(self) -> None:
        try:
            for i, _ in enumerate(self.call):
                if i == 0:
                    for data in self.flood:
                        self.outbox.put(data)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            self.code, self.details = error.code(), error.details() or ""
        self.ended.set()

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()
        self.reader.join(timeout=10)
        self.channel.close()


def test_a_client_sending_more_than_it_may_is_cut_off_and_none_of_it_reaches_the_server(pki, monkeypatch):
    """Client 3 answers the train request with many messages and no end of replies (each one
    within the message limit): its stream is ended (RESOURCE_EXHAUSTED) after :data:`MAX_REPLIES`
    of them, none reaches the server program, and it is a dropout of the round."""
    config = _config(rounds=1)
    programs = _programs(config, pki)
    heard: Counter[int] = Counter()
    receive = programs.server.receive

    def counting(client_id: int, data: bytes) -> None:
        heard[client_id] += 1
        receive(client_id, data)

    monkeypatch.setattr(programs.server, "receive", counting)
    with _network(programs, pki, config, step_deadline=30.0) as network:
        _serve_honest(network, programs, pki, ids=range(3))
        flood = [b"\x07" * 4096] * 200
        raw = _RawCall(network.address, pki.clients[3], 3, flood=flood)
        try:
            assert network.net.wait_for_clients(programs.server, 4, JOIN_TIMEOUT) == 4
            started = time.monotonic()
            network.net.run_round(programs.server)
            took = time.monotonic() - started
            assert raw.ended.wait(10)
        finally:
            raw.close()
    assert raw.code is grpc.StatusCode.RESOURCE_EXHAUSTED and f"{MAX_REPLIES} replies" in raw.details
    assert took < 20  # its departure ended the step, not the deadline
    assert heard[3] == 1  # its join (its departure is told at the next round or wait)
    assert programs.server.records[-1].survivors == 3
    assert torch.equal(programs.server.params, _in_process(config, pki, faults={1: Faults(before={3: 0})}))


def test_a_client_ending_replies_it_does_not_owe_is_cut_off(pki):
    """A flood of ends of replies (each of them empty, so no message limit applies) ends the
    stream instead of being queued for the driver."""
    config = _config(rounds=1)
    programs = _programs(config, pki)
    with _network(programs, pki, config, step_deadline=30.0) as network:
        raw = _RawCall(network.address, pki.clients[3], 3, flood=[END_OF_REPLIES] * 1000)
        try:
            assert network.net.wait_for_clients(programs.server, 1, JOIN_TIMEOUT) == 1
            network.net.run_round(programs.server)
            assert raw.ended.wait(10)
        finally:
            raw.close()
    assert raw.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ended its replies to a message it was not sent" in raw.details


def test_a_step_ends_at_its_deadline_while_events_keep_arriving(pki):
    """The deadline is checked before each event, not only when the queue runs dry: a flood
    cannot hold a step open."""
    deadline = 0.3
    net = NetworkServer(
        "127.0.0.1:0",
        credentials=pki.server.tls,
        enrolment=Enrolment.load(pki.enrolment),
        max_message_bytes=1 << 20,
        step_deadline=deadline,
    )
    stranger = _Stream(client_id=2, entry=None)  # not a current stream: its events are ignored
    started = time.monotonic()

    def never_empty(timeout: float) -> _Received:
        if time.monotonic() - started > 10:
            raise AssertionError("the step outlived its deadline by far")
        return _Received(stranger, END_OF_REPLIES)

    net._next_event = never_empty  # type: ignore[method-assign]
    replies, seconds = net._collect(Counter({1: 1}), (1, 0))
    assert deadline <= time.monotonic() - started < 5
    assert not replies and not seconds


def test_without_tls_a_call_that_never_joins_is_ended_and_frees_its_slot(pki):
    """Calls that send nothing hold every slot of a server without TLS only until the join
    timeout: then they end (DEADLINE_EXCEEDED) and an honest client gets in."""
    config = _config(rounds=1)
    programs = _programs(config, pki)
    with _network(programs, pki, config, tls=False, max_streams=2, join_timeout=0.5) as network:
        idle = [_RawCall(network.address, None, 3, join=False) for _ in range(2)]
        try:
            time.sleep(0.2)  # both slots taken
            _serve_honest(network, programs, pki, ids=[0], tls=False)
            assert network.net.wait_for_clients(programs.server, 1, 20) == 1
            for call in idle:
                assert call.ended.wait(10)
        finally:
            for call in idle:
                call.close()
    assert [call.code for call in idle] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
    assert all("no join message within 0.5s" in call.details for call in idle)


# ---- a server restart --------------------------------------------------------------------------


def test_clients_reconnect_with_backoff_after_the_server_restarts_on_the_same_port(pki):
    config = _config(rounds=2)
    programs = _programs(config, pki)
    with _network(programs, pki, config) as first:
        _serve_honest(first, programs, pki)
        _run_rounds(first, programs, 1, 4)
        port = first.port
        first.net.close()  # a crash, as the clients see it: no finished marker
        time.sleep(0.5)  # the clients are now retrying
        with _network(programs, pki, config, port=port) as second:
            first.threads, second.threads = {}, first.threads  # the same client threads, now the second's
            second.stop = first.stop
            assert second.net.wait_for_clients(programs.server, 4, JOIN_TIMEOUT) == 4
            second.net.run_round(programs.server)
            second.net.finish()
            for c in range(4):
                assert second.join(str(c)) is None
            rejoined = {e.client_id for e in second.events if isinstance(e, ClientConnected)}
    assert rejoined == {0, 1, 2, 3}
    assert torch.equal(programs.server.params, _in_process(config, pki))


# ---- the client's own behaviour ----------------------------------------------------------------


def test_before_send_runs_before_a_reply_leaves_and_its_failure_keeps_the_reply_home(pki):
    """The deployment client persists its privacy ledger in ``before_send``: when that fails (a
    full disk), the update must not leave, so the server sees client 0 drop out of round 2."""
    config = _config(rounds=2)
    programs = _programs(config, pki)
    calls: list[int] = []

    def persist() -> None:
        calls.append(programs.server.round_index)
        if len(calls) == 2:
            raise OSError("no space left on device")

    with _network(programs, pki, config) as network:
        _serve_honest(network, programs, pki, ids=range(1, 4))
        network.client("0", programs.clients[0], pki.clients[0], before_send=persist)
        _run_rounds(network, programs, config.rounds, 4)
        error = network.join("0")
    assert isinstance(error, OSError) and calls == [1, 2]
    assert [r.survivors for r in programs.server.records] == [4, 3]
    assert torch.equal(programs.server.params, _in_process(config, pki, faults={2: Faults(before={0: 0})}))


def test_a_client_gives_up_on_an_unreachable_server_after_its_backoff_budget(pki):
    programs = _programs(_config(rounds=1), pki)
    with socket.socket() as placeholder:  # a port nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError, match=f"127.0.0.1:{port}"):
            run_client(
                programs.clients[0],
                address=f"127.0.0.1:{port}",
                tls=pki.clients[0].tls,
                max_message_bytes=1 << 20,
                backoff=Backoff(initial=0.05, maximum=0.2, give_up_after=1.0),
            )
    assert 1.0 <= time.monotonic() - started < 30


def test_backoff_draws_full_jitter_under_an_exponential_cap():
    backoff = Backoff(initial=0.5, maximum=8.0, multiplier=2.0)
    for attempt, cap in enumerate([0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]):
        delays = [backoff.delay(attempt) for _ in range(400)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > 0.9 * cap and min(delays) < 0.1 * cap  # spread over [0, cap]
    with pytest.raises(ValueError):
        Backoff(initial=2.0, maximum=1.0)


def test_a_federation_runs_over_ipv6_loopback(pki):
    config = _config(rounds=1)
    programs = _programs(config, pki)
    net = NetworkServer(
        "[::1]:0",
        credentials=pki.server.tls,
        enrolment=Enrolment.load(pki.enrolment),
        max_message_bytes=_limit(programs, config),
        step_deadline=STEP_DEADLINE,
    )
    network = _Network(net, net.start(), _limit(programs, config))
    network.address = f"[::1]:{network.port}"
    try:
        _serve_honest(network, programs, pki)
        _run_rounds(network, programs, 1, 4)
        net.finish()
        for c in range(4):
            assert network.join(str(c)) is None
    finally:
        network.stop.set()
        net.close()
        for thread in network.threads.values():
            thread.join(timeout=60)
    assert torch.equal(programs.server.params, _in_process(config, pki))


def test_a_tls_client_refuses_a_server_without_tls(pki):
    programs = _programs(_config(rounds=1), pki)
    net = NetworkServer(
        "127.0.0.1:0",
        credentials=None,
        enrolment=Enrolment.load(pki.enrolment),
        max_message_bytes=1 << 20,
        step_deadline=STEP_DEADLINE,
    )
    port = net.start()
    try:
        with pytest.raises(AccessRefusedError, match="does not speak TLS"):
            run_client(
                programs.clients[0],
                address=f"127.0.0.1:{port}",
                tls=pki.clients[0].tls,
                max_message_bytes=1 << 20,
                backoff=FAST,
            )
    finally:
        net.close()
