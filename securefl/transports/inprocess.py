"""The in-process transport: the server and every client in one process, one turn at a time.

Every message is encoded and decoded (:mod:`securefl.fl.codec`), so a simulation carries exactly
the bytes a network would; delivery is sequential, in client-id order, and deterministic
(:func:`securefl.fl.turns.run_turns`).  Simulated crashes come from ``faults``: a function of the
round and its participants (the secure channel's seeded dropout plan).

Clients given as a :class:`~securefl.fl.client_pool.ClientPool` exist only while they are used:
each is built to enrol and parked right after, and a round's participants are built when it
starts and parked when it ends, so an idle client costs its shard rows and its memory
(10,000 clients: docs/benchmarks.md, "Large federations").
"""

from __future__ import annotations

from collections.abc import Mapping

from securefl.fl.client import FederatedClient
from securefl.fl.client_pool import ClientPool
from securefl.fl.server import FederatedServer
from securefl.fl.turns import Traffic, run_turns
from securefl.transports.round_start import FaultsFor, open_round


class InProcessTransport:
    """Carries a federation's bytes in this process."""

    def __init__(self, *, faults_for: FaultsFor | None = None) -> None:
        self.faults_for = faults_for

    def enrol(self, server: FederatedServer, clients: Mapping[int, FederatedClient]) -> None:
        """Each client tells the server it is there and whether it can train."""
        for client_id in sorted(clients):
            server.receive(client_id, clients[client_id].join())
            if isinstance(clients, ClientPool):
                clients.park([client_id])

    def close(self) -> None:
        """Nothing to stop: everything ran in this process."""

    def __enter__(self) -> InProcessTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run_round(self, server: FederatedServer, clients: Mapping[int, FederatedClient]) -> Traffic:
        """One round, from the server's train requests to its record; the traffic it carried."""
        opened = open_round(server, self.faults_for)
        if opened is None:
            return Traffic()
        first, participants, faults = opened
        receivers = {c: clients[c].receive for c in participants}
        handed_over = [first]  # not kept here: each train request (a model) goes once read
        del first, opened
        try:
            return run_turns(server, receivers, handed_over.pop(), faults=faults)
        finally:
            if isinstance(clients, ClientPool):
                clients.park(participants)
