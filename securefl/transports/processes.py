"""Worker processes: the client side of every round on several cores, the server in this process.

:class:`ProcessTransport` forks ``workers`` processes once per run; each hosts a fixed set of
client programs (round-robin by client id) with their shards, trainers, ledgers and aggregation
halves, inherited at the fork (copy-on-write: nothing is shipped per round) and kept across rounds.
Each turn of a round (:func:`securefl.fl.turns.run_turns`) sends every worker the encoded messages
of its clients, the workers compute in parallel, and the server receives the replies in client-id
order, so results are bit for bit those of the in-process transport.

Threads: a worker computes with one torch thread, set before its first operation, so it never
enters an OpenMP parallel region: ATen, MKL and oneDNN run a one-thread operation inline.  That is
what makes the fork safe whatever this process did before it: a forked child that *does* open a
multi-threaded region after its parent ran one waits forever at GNU OpenMP's barrier for the
parent's pool threads, which a fork does not copy.  This process keeps its own ``threads`` for the
server's work (aggregation, server update, evaluation).

Privacy ledgers: a client program's DP-SGD ledger lives in the worker that trains it; a reply
carries the client's ledger when it changed, and this process's copy of the client takes it over
before the server sees the reply (:mod:`securefl.transports.ledgers`), so the simulation reports
(each round's ε, ``privacy.json``) what the workers' trainers hold.

A worker exits when told to, when the parent dies (it sees end-of-file: a killed run leaves nothing
behind), or after reporting an exception in a client program; a worker's death is reported with its
exit code.  With ``turn_timeout`` a worker that has not answered a turn in that many seconds (hung,
or stopped by SIGSTOP) is killed, and its clients are dropouts from then on: they answer nothing,
in this round and the next.  Between the processes only bytes travel, framed here (no pickle): a
kind byte, then per client its id and length-prefixed messages (and, in a reply, its compute
seconds and its ledger).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import struct
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection, wait

import torch

from securefl.errors import DecodeError
from securefl.fl.client import FederatedClient
from securefl.fl.server import FederatedServer
from securefl.fl.turns import Replies, Traffic, run_turns
from securefl.protocols.wire import ByteReader, ByteWriter
from securefl.transports.ledgers import LedgerReports, take_over_ledger
from securefl.transports.round_start import FaultsFor, open_round

log = logging.getLogger(__name__)


_JOIN, _TURN, _STOP = 0, 1, 2
_ANSWERED, _FAILED = 0, 1
_F64 = struct.Struct(">d")


class ProcessTransport:
    """Carries a federation's bytes between this process's server and clients hosted by workers.

    ``turn_timeout``: seconds a worker may take to answer one turn (``None``: no limit); one that
    takes longer is killed and its clients drop out of the run."""

    def __init__(
        self, *, workers: int, faults_for: FaultsFor | None = None, turn_timeout: float | None = None
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers {workers} < 1")
        if turn_timeout is not None and not turn_timeout > 0:
            raise ValueError(f"turn timeout {turn_timeout} is not a positive number of seconds")
        self.workers = workers
        self.faults_for = faults_for
        self.turn_timeout = turn_timeout
        self._connections: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._host: dict[int, int] = {}  # client id -> worker index
        self._clients: Mapping[int, FederatedClient] = {}  # this process's copies (ledgers imported)
        self._lost: set[int] = set()  # workers killed for missing a turn's deadline

    def enrol(self, server: FederatedServer, clients: Mapping[int, FederatedClient]) -> None:
        """Start the workers (each inherits its clients) and enrol every client with the server."""
        if self._processes:
            raise RuntimeError("the workers are already running")
        context = multiprocessing.get_context("fork")
        hosted: list[dict[int, FederatedClient]] = [{} for _ in range(self.workers)]
        for index, client_id in enumerate(sorted(clients)):
            hosted[index % self.workers][client_id] = clients[client_id]
            self._host[client_id] = index % self.workers
        self._clients = clients
        for own in hosted:
            parent, child = context.Pipe()
            inherited = [*self._connections, parent]  # the worker closes these: it sees EOF when we die
            process = context.Process(target=_serve, args=(child, own, inherited), daemon=True)
            process.start()
            child.close()
            self._connections.append(parent)
            self._processes.append(process)
        joined = self._exchange(_JOIN, {client_id: [] for client_id in clients})
        for client_id in sorted(joined):
            for data in joined[client_id][0]:
                server.receive(client_id, data)

    def run_round(self, server: FederatedServer, clients: Mapping[int, FederatedClient]) -> Traffic:
        """One round, its clients computing in the workers; the traffic it carried."""
        opened = open_round(server, self.faults_for)
        if opened is None:
            return Traffic()
        first, _, faults = opened
        return run_turns(server, lambda inboxes: self._exchange(_TURN, inboxes), first, faults=faults)

    def _exchange(self, kind: int, inboxes: Mapping[int, list[bytes]]) -> Replies:
        """Every worker's clients compute their inboxes at once; their replies, with nothing from
        the clients of a worker lost to the deadline."""
        by_worker: list[dict[int, list[bytes]]] = [{} for _ in self._connections]
        for client_id, messages in inboxes.items():
            by_worker[self._host[client_id]][client_id] = messages
        asked = [index for index, share in enumerate(by_worker) if share and index not in self._lost]
        for index in asked:  # every worker computes at once
            try:
                self._connections[index].send_bytes(_frame(kind, by_worker[index]))
            except OSError:
                raise self._died(index) from None
        deadline = None if self.turn_timeout is None else time.monotonic() + self.turn_timeout
        replies: Replies = {client_id: ([], 0.0) for client_id in inboxes}
        for index in asked:
            connection, process = self._connections[index], self._processes[index]
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not wait([connection, process.sentinel], timeout):  # a reply, the worker's death, or time
                self._lose(index)
                continue
            try:
                data = connection.recv_bytes()
            except (EOFError, OSError):
                raise self._died(index) from None
            if data[0] == _FAILED:
                raise RuntimeError(f"worker {index} failed: {data[1:].decode('utf-8', 'replace')}")
            answered = _unframe_replies(data[1:], index)
            if set(answered) != set(by_worker[index]):
                raise RuntimeError(f"worker {index} answered for clients it was not asked about")
            for client_id, (messages, seconds, ledger) in answered.items():
                if ledger:
                    take_over_ledger(self._clients[client_id], ledger, host=f"worker {index}")
                replies[client_id] = (messages, seconds)
        return replies

    def _lose(self, index: int) -> None:
        """Kill worker ``index``, which missed a turn's deadline; its clients answer nothing more."""
        process = self._processes[index]
        process.kill()
        process.join()
        self._lost.add(index)
        log.warning(
            "worker %d (pid %d) did not answer within %g s and was killed: its clients %s are "
            "dropouts from now on",
            index,
            process.pid,
            self.turn_timeout,
            sorted(client_id for client_id, host in self._host.items() if host == index),
        )

    def _died(self, index: int) -> RuntimeError:
        process = self._processes[index]
        process.join(timeout=1)
        code = process.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return RuntimeError(f"worker {index} (pid {process.pid}) {how} during the round")

    def close(self) -> None:
        """Stop the workers (those that do not stop in time are killed)."""
        connections, processes = self._connections, self._processes
        self._connections, self._processes = [], []
        try:
            for connection in connections:
                with contextlib.suppress(OSError):  # a worker that died has closed its end already
                    connection.send_bytes(bytes([_STOP]))
            for process in processes:
                process.join(timeout=10)
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                    process.join()
            for connection in connections:
                connection.close()

    def __enter__(self) -> ProcessTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


WorkerReplies = dict[int, tuple[list[bytes], float, bytes]]
"""Per client: its replies, the seconds it computed, and its ledger if it changed (else empty)."""


def _serve(connection: Connection, clients: dict[int, FederatedClient], inherited: list[Connection]) -> None:
    """A worker: answer each turn for the clients it hosts until told to stop or the parent goes.

    It closes the parent's ends of every pipe it inherited, so the parent's death (even by
    SIGKILL) reaches it as end-of-file; Ctrl-C is the parent's to handle.  One torch thread, set
    before anything else runs here (see the module's docstring)."""
    torch.set_num_threads(1)
    for other in inherited:
        other.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ledgers = LedgerReports()
    while True:
        try:
            data = connection.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        if data[0] == _STOP:
            connection.close()
            return
        try:
            replies: WorkerReplies = {}
            for client_id, messages in _unframe(data[1:]).items():
                client = clients[client_id]
                started = time.perf_counter()
                if data[0] == _JOIN:
                    out = [client.join()]
                else:
                    out = [reply for message in messages for reply in client.receive(message)]
                seconds = time.perf_counter() - started
                replies[client_id] = (out, seconds, ledgers.changed(client))
        except Exception as error:  # a bug in a client program: say which, then stop
            connection.send_bytes(bytes([_FAILED]) + f"{type(error).__name__}: {error}".encode())
            connection.close()
            raise
        connection.send_bytes(bytes([_ANSWERED]) + _frame_replies(replies))


def _frame(kind: int, inboxes: Mapping[int, list[bytes]]) -> bytes:
    w = ByteWriter()
    w.u8(kind)
    w.u32(len(inboxes))
    for client_id, messages in inboxes.items():
        w.u32(client_id)
        _messages(w, messages)
    return w.bytes()


def _unframe(data: bytes) -> dict[int, list[bytes]]:
    r = ByteReader(data)
    return {r.u32(): _read_messages(r) for _ in range(r.u32())}


def _frame_replies(replies: WorkerReplies) -> bytes:
    w = ByteWriter()
    w.u32(len(replies))
    for client_id, (messages, seconds, ledger) in replies.items():
        w.u32(client_id)
        w.pack(_F64, seconds)
        _messages(w, messages)
        w.u32(len(ledger))
        w.raw(ledger)
    return w.bytes()


def _unframe_replies(data: bytes, worker: int) -> WorkerReplies:
    r = ByteReader(data)
    replies: WorkerReplies = {}
    try:
        for _ in range(r.u32()):
            client_id, seconds = r.u32(), float(r.unpack(_F64))
            replies[client_id] = (_read_messages(r), seconds, r.raw(r.u32()))
    except DecodeError as error:
        raise RuntimeError(f"worker {worker} sent a malformed reply: {error}") from None
    if r.remaining():
        raise RuntimeError(f"worker {worker} sent {r.remaining()} bytes after its reply")
    return replies


def _messages(w: ByteWriter, messages: list[bytes]) -> None:
    w.u32(len(messages))
    for message in messages:
        w.u32(len(message))
        w.raw(message)


def _read_messages(r: ByteReader) -> list[bytes]:
    return [r.raw(r.u32()) for _ in range(r.u32())]
