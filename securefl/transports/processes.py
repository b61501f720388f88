"""Worker processes: the client side of every round on several cores, the server in this process.

:class:`ProcessTransport` forks ``workers`` processes once per run; each hosts a fixed set of
client programs (round-robin by client id) with their shards, trainers, ledgers and aggregation
halves, inherited at the fork (copy-on-write: nothing is shipped per round) and kept across rounds.
Each turn of a round (:func:`securefl.fl.turns.run_turns`) sends every worker the encoded messages
of its clients, the workers compute in parallel with one torch thread each (a forked process cannot
safely start another OpenMP pool after its parent ran one with more threads: a run with more than
one worker has ``threads`` 1, :class:`~securefl.config.RunConfig`), and the server receives the
replies in client-id order, so results are bit for bit those of the in-process transport.

A worker exits when told to, when the parent dies (it sees end-of-file: a killed run leaves nothing
behind), or after reporting an exception in a client program; a worker's death is reported with its
exit code.  Between the processes only bytes travel, framed here (no pickle): a kind byte, then per client its
id and length-prefixed messages (and, in a reply, its compute seconds).

The client programs' state lives in the workers: what the simulation reads from the parent's
copies of them afterwards would be stale, so DP-SGD (whose per-client ledgers the run reports) is
refused with more than one worker (:class:`~securefl.config.RunConfig`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait

import torch

from securefl.errors import DecodeError
from securefl.fl.client import FederatedClient
from securefl.fl.server import FederatedServer
from securefl.fl.turns import NO_FAULTS, Faults, Replies, Traffic, run_turns
from securefl.protocols.wire import ByteReader, ByteWriter

FaultsFor = Callable[[int, Sequence[int]], Faults]

_JOIN, _TURN, _STOP = 0, 1, 2
_ANSWERED, _FAILED = 0, 1
_F64 = struct.Struct(">d")


class ProcessTransport:
    """Carries a federation's bytes between this process's server and clients hosted by workers."""

    def __init__(self, *, workers: int, faults_for: FaultsFor | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers {workers} < 1")
        self.workers = workers
        self.faults_for = faults_for
        self._connections: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._host: dict[int, int] = {}  # client id -> worker index

    def enrol(self, server: FederatedServer, clients: Mapping[int, FederatedClient]) -> None:
        """Start the workers (each inherits its clients) and enrol every client with the server."""
        if self._processes:
            raise RuntimeError("the workers are already running")
        context = multiprocessing.get_context("fork")
        hosted: list[dict[int, FederatedClient]] = [{} for _ in range(self.workers)]
        for index, client_id in enumerate(sorted(clients)):
            hosted[index % self.workers][client_id] = clients[client_id]
            self._host[client_id] = index % self.workers
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
        first = server.start_round()
        if server.finished:
            return Traffic()
        participants = sorted({client_id for client_id, _ in first})
        faults = self.faults_for(server.round_index, participants) if self.faults_for else NO_FAULTS
        return run_turns(server, lambda inboxes: self._exchange(_TURN, inboxes), first, faults=faults)

    def _exchange(self, kind: int, inboxes: Mapping[int, list[bytes]]) -> Replies:
        by_worker: list[dict[int, list[bytes]]] = [{} for _ in self._connections]
        for client_id, messages in inboxes.items():
            by_worker[self._host[client_id]][client_id] = messages
        asked = [index for index, share in enumerate(by_worker) if share]
        for index in asked:  # every worker computes at once
            try:
                self._connections[index].send_bytes(_frame(kind, by_worker[index]))
            except OSError:
                raise self._died(index) from None
        replies: Replies = {}
        for index in asked:
            connection, process = self._connections[index], self._processes[index]
            wait([connection, process.sentinel])  # a reply, or the worker's death
            try:
                data = connection.recv_bytes()
            except (EOFError, OSError):
                raise self._died(index) from None
            if data[0] == _FAILED:
                raise RuntimeError(f"worker {index} failed: {data[1:].decode('utf-8', 'replace')}")
            answered = _unframe_replies(data[1:], index)
            if set(answered) != set(by_worker[index]):
                raise RuntimeError(f"worker {index} answered for clients it was not asked about")
            replies.update(answered)
        return replies

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


def _serve(connection: Connection, clients: dict[int, FederatedClient], inherited: list[Connection]) -> None:
    """A worker: answer each turn for the clients it hosts until told to stop or the parent goes.

    It closes the parent's ends of every pipe it inherited, so the parent's death (even by
    SIGKILL) reaches it as end-of-file; Ctrl-C is the parent's to handle."""
    for other in inherited:
        other.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    while True:
        try:
            data = connection.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        if data[0] == _STOP:
            connection.close()
            return
        try:
            replies: Replies = {}
            for client_id, messages in _unframe(data[1:]).items():
                started = time.perf_counter()
                if data[0] == _JOIN:
                    out = [clients[client_id].join()]
                else:
                    out = [reply for message in messages for reply in clients[client_id].receive(message)]
                replies[client_id] = (out, time.perf_counter() - started)
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


def _frame_replies(replies: Replies) -> bytes:
    w = ByteWriter()
    w.u32(len(replies))
    for client_id, (messages, seconds) in replies.items():
        w.u32(client_id)
        w.pack(_F64, seconds)
        _messages(w, messages)
    return w.bytes()


def _unframe_replies(data: bytes, worker: int) -> Replies:
    r = ByteReader(data)
    replies: Replies = {}
    try:
        for _ in range(r.u32()):
            client_id, seconds = r.u32(), float(r.unpack(_F64))
            replies[client_id] = (_read_messages(r), seconds)
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
