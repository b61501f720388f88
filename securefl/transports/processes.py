"""Worker processes: the client side of every round on several cores, the server in this process.

:class:`ProcessTransport` forks ``workers`` processes once per run; each hosts a fixed set of
client programs (round-robin by client id) with their shards, trainers, ledgers and aggregation
halves, inherited at the fork (copy-on-write: nothing is shipped per round) and kept across rounds.
Each turn of a round (:func:`securefl.fl.turns.run_turns`) sends every worker the encoded messages
of its clients, the workers compute in parallel with one torch thread each, and the server receives
the replies in client-id order, so results are bit for bit those of the in-process transport.
Between the processes only bytes travel, framed here (no pickle): a kind byte, then per client its
id and length-prefixed messages (and, in a reply, its compute seconds).

The client programs' state lives in the workers: what the simulation reads from the parent's
copies of them afterwards would be stale, so DP-SGD (whose per-client ledgers the run reports) is
refused with more than one worker (:class:`~securefl.config.RunConfig`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection

import torch

from securefl.fl.client import FederatedClient
from securefl.fl.server import FederatedServer
from securefl.fl.turns import NO_FAULTS, Faults, Replies, Traffic, run_turns
from securefl.protocols.wire import ByteReader, ByteWriter

FaultsFor = Callable[[int, Sequence[int]], Faults]

_JOIN, _TURN, _STOP = 0, 1, 2
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
            process = context.Process(target=_serve, args=(child, own), daemon=True)
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
            self._connections[index].send_bytes(_frame(kind, by_worker[index]))
        replies: Replies = {}
        for index in asked:
            try:
                replies.update(_unframe_replies(self._connections[index].recv_bytes()))
            except EOFError:
                raise RuntimeError(f"worker {index} died (see its traceback above)") from None
        return replies

    def close(self) -> None:
        """Stop the workers."""
        for connection in self._connections:
            with contextlib.suppress(OSError):  # a worker that died has closed its end already
                connection.send_bytes(bytes([_STOP]))
            connection.close()
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self._connections, self._processes = [], []

    def __enter__(self) -> ProcessTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _serve(connection: Connection, clients: dict[int, FederatedClient]) -> None:
    """A worker: answer each turn for the clients it hosts until told to stop."""
    torch.set_num_threads(1)
    while True:
        data = connection.recv_bytes()
        if data[0] == _STOP:
            connection.close()
            return
        replies: Replies = {}
        for client_id, messages in _unframe(data[1:]).items():
            started = time.perf_counter()
            if data[0] == _JOIN:
                out = [clients[client_id].join()]
            else:
                out = [reply for message in messages for reply in clients[client_id].receive(message)]
            replies[client_id] = (out, time.perf_counter() - started)
        connection.send_bytes(_frame_replies(replies))


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


def _unframe_replies(data: bytes) -> Replies:
    r = ByteReader(data)
    replies: Replies = {}
    for _ in range(r.u32()):
        client_id, seconds = r.u32(), float(r.unpack(_F64))
        replies[client_id] = (_read_messages(r), seconds)
    return replies


def _messages(w: ByteWriter, messages: list[bytes]) -> None:
    w.u32(len(messages))
    for message in messages:
        w.u32(len(message))
        w.raw(message)


def _read_messages(r: ByteReader) -> list[bytes]:
    return [r.raw(r.u32()) for _ in range(r.u32())]
