"""The client side of a federation over gRPC with mutual TLS: one client program, one stream.

:func:`run_client` connects to the server (TLS 1.3, presenting the client's certificate and
checking the server's against the federation's CA and the dialled host), opens the session stream
(:data:`~securefl.transports.grpc_server.METHOD`), sends the client's join message, then answers
every message the server sends with the client program's replies, each answer closed by
:data:`~securefl.transports.grpc_server.END_OF_REPLIES`.  It returns when the server ends the
stream with the finished marker.

Failures.  A lost connection or an unreachable server is retried with exponential backoff and
full jitter (:class:`Backoff`; "Exponential Backoff And Jitter", M. Brooker, AWS Architecture Blog,
2015), and the same :class:`~securefl.fl.client.FederatedClient` rejoins, its state (privacy
ledger, round-id guard) intact: the server treats it as a dropout of any round it missed.  A
refusal is not retried: a certificate the server does not accept (another CA, not enrolled,
revoked), a server certificate this client does not trust, raise
:class:`~securefl.errors.AccessRefusedError` saying what to fix.  gRPC reports a TLS handshake
the server refused as a plain ``UNAVAILABLE``, so after each ``UNAVAILABLE`` the client repeats
the handshake with Python's :mod:`ssl` to tell the two apart.
"""

from __future__ import annotations

import enum
import logging
import queue
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from securefl.deploy.pki import TlsFiles
from securefl.errors import AccessRefusedError, ServerUnreachableError
from securefl.fl.client import FederatedClient
from securefl.transports.grpc_server import CLIENT_ID_KEY, END_OF_REPLIES, FINISHED_KEY, KEEPALIVE, METHOD

log = logging.getLogger(__name__)

ClientTls = TlsFiles
"""The client's certificate and key, and the federation CA the server's certificate must chain to."""

_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
_REFUSAL_ALERTS = re.compile(r"ALERT|CERTIFICATE|VERSION|WRONG_SIGNATURE|NO_SHARED|HANDSHAKE_FAILURE")


@dataclass(frozen=True)
class Backoff:
    """Retry delays: attempt ``k`` (from 0) waits a uniformly random time in
    ``[0, min(maximum, initial·multiplier^k)]`` (full jitter, so clients cut off together do not
    come back together); a client gives up after ``give_up_after`` seconds without reaching the
    server (``None``: never)."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    give_up_after: float | None = 3600.0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.multiplier >= 1):
            raise ValueError("backoff needs 0 < initial <= maximum and multiplier >= 1")
        if self.give_up_after is not None and not self.give_up_after >= 0:
            raise ValueError(f"give_up_after {self.give_up_after} must be 0 or more, or None")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0 for the first)."""
        cap = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return secrets.SystemRandom().uniform(0.0, cap)


class _Outcome(enum.Enum):
    FINISHED = "finished"
    STOPPED = "stopped"
    LOST = "lost"


def run_client(
    client: FederatedClient,
    *,
    address: str,
    tls: ClientTls | None,
    max_message_bytes: int,
    backoff: Backoff = Backoff(),
    stop: threading.Event | None = None,
    before_send: Callable[[], None] | None = None,
) -> None:
    """Serve ``client`` to the server at ``address`` (host:port) until the federation finishes
    or ``stop`` is set.  ``tls`` ``None`` talks plain text (tests and ``--insecure`` only);
    ``before_send`` is called before any reply leaves (a client persists its privacy ledger
    there).  Raises :class:`~securefl.errors.AccessRefusedError` when either side refuses the
    other, :class:`~securefl.errors.ServerUnreachableError` after ``backoff.give_up_after``
    seconds of failed attempts."""
    stop = stop or threading.Event()
    if tls is None:
        log.warning("connecting WITHOUT TLS to %s: use TLS outside a test", address)
    attempt = 0
    failing_since: float | None = None
    while True:
        outcome, accepted, reason = _session(client, address, tls, max_message_bytes, stop, before_send)
        if outcome is not _Outcome.LOST:
            return
        now = time.monotonic()
        if accepted:  # the server let us in: this is a new run of failures
            attempt, failing_since = 0, None
        failing_since = failing_since if failing_since is not None else now
        if backoff.give_up_after is not None and now - failing_since >= backoff.give_up_after:
            raise ServerUnreachableError(
                f"client {client.client_id} could not reach the server at {address} for "
                f"{now - failing_since:.0f}s ({reason}): check that the server runs and the address is right"
            )
        delay = backoff.delay(attempt)
        attempt += 1
        log.info("client %d: %s; retrying in %.1fs", client.client_id, reason, delay)
        if stop.wait(delay):
            return


def _channel(address: str, tls: ClientTls | None, max_message_bytes: int) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 0),  # a stream is never replayed behind our back
        *KEEPALIVE,
    ]
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_certificate.read_bytes(),
        private_key=tls.private_key.read_bytes(),
        certificate_chain=tls.certificate.read_bytes(),
    )
    return grpc.secure_channel(address, credentials, options=options)


def _session(
    client: FederatedClient,
    address: str,
    tls: ClientTls | None,
    max_message_bytes: int,
    stop: threading.Event,
    before_send: Callable[[], None] | None,
) -> tuple[_Outcome, bool, str]:
    """One connection: (how it ended, whether the server accepted us, why it was lost)."""
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (data := outbox.get()) is not None:
            yield data

    channel = _channel(address, tls, max_message_bytes)
    call = channel.stream_stream(METHOD)(requests())
    done = threading.Event()
    watcher = threading.Thread(target=_cancel_on_stop, args=(call, stop, done), daemon=True)
    watcher.start()
    accepted = False
    try:
        outbox.put(client.join())
        try:
            metadata = dict(call.initial_metadata() or ())
            accepted = CLIENT_ID_KEY in metadata
            if accepted and metadata[CLIENT_ID_KEY] != str(client.client_id):
                raise AccessRefusedError(
                    f"the server knows this certificate as client {metadata[CLIENT_ID_KEY]}, but this "
                    f"program is client {client.client_id}: use the identity directory of client "
                    f"{client.client_id}"
                )
            for message in call:
                replies = client.receive(message)
                if replies and before_send is not None:
                    before_send()
                for reply in replies:
                    outbox.put(reply)
                outbox.put(END_OF_REPLIES)
        except grpc.RpcError as error:
            if stop.is_set():
                return _Outcome.STOPPED, accepted, "stopped"
            return _Outcome.LOST, accepted, _refused_or_lost(error, address, tls)
        if stop.is_set():
            return _Outcome.STOPPED, accepted, "stopped"
        if dict(call.trailing_metadata() or ()).get(FINISHED_KEY) == "1":
            log.info("client %d: the federation has finished", client.client_id)
            return _Outcome.FINISHED, accepted, "finished"
        return _Outcome.LOST, accepted, "the server ended the session"
    finally:
        done.set()
        outbox.put(None)
        call.cancel()
        channel.close()
        watcher.join()


def _cancel_on_stop(call: grpc.Future, stop: threading.Event, done: threading.Event) -> None:
    while not done.wait(0.1):
        if stop.is_set():
            call.cancel()
            return


def _refused_or_lost(error: grpc.RpcError, address: str, tls: ClientTls | None) -> str:
    """Raise :class:`AccessRefusedError` if the server refused us or we refused it; otherwise why
    the session was lost (to retry)."""
    code, details = error.code(), error.details()
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        raise AccessRefusedError(f"the server at {address} refused this client: {details}")
    if code is grpc.StatusCode.UNAVAILABLE and tls is not None:
        _check_handshake(address, tls)
    return f"{code.name}: {details}"


def _check_handshake(address: str, tls: ClientTls, timeout: float = 10.0) -> None:
    """Repeat the TLS handshake with Python's :mod:`ssl` and raise :class:`AccessRefusedError` if
    either side refuses the other; return if the server cannot be reached (a reason to retry) or
    accepts us.  In TLS 1.3 the server checks the client's certificate after the client has
    finished its handshake, so a refusal shows as the server hanging up before its first HTTP/2
    frame."""
    host, port = split_address(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=str(tls.ca_certificate))
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as connection,
        ):
            connection.sendall(_HTTP2_PREFACE)
            answered = connection.recv(1)
    except ssl.SSLCertVerificationError as error:
        raise AccessRefusedError(
            f"the server at {address} presented a certificate this client does not trust "
            f"({error.verify_message}): check the address, and that ca.pem in the identity "
            "directory is this federation's CA"
        ) from None
    except ssl.SSLError as error:
        if error.reason is not None and _REFUSAL_ALERTS.search(error.reason):
            raise AccessRefusedError(
                f"the TLS handshake with {address} failed ({error.reason}): the server refused this "
                "client's certificate or TLS version, or does not speak TLS (a server run without "
                "TLS); use an identity from this federation's operator and check the address"
            ) from None
        return
    except OSError:
        return  # unreachable for now: retry
    if not answered:
        raise AccessRefusedError(
            f"the server at {address} hung up right after the TLS handshake: it refused this client's "
            "certificate (issued by another CA, or not a client certificate); use the identity "
            "directory this federation's operator made for this client"
        )


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> (host, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", address)
    if match is None:
        raise ValueError(f"address {address!r} is not host:port or [ipv6]:port")
    host = match.group(1) or match.group(3)
    return host, int(match.group(2) or match.group(4))
