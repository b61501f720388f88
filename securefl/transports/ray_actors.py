"""Ray actors: the client side of every round on a Ray cluster, the server in this process.

:class:`RayTransport` joins the Ray cluster at ``ray_address`` (``ray.init``), or starts a local
Ray instance when none is given, and places the clients on actors (Moritz et al. 2018, "Ray: A
Distributed Framework for Emerging AI Applications"), round-robin by client id, one CPU and one
torch thread each.  Each actor builds its client programs itself, with
:class:`~securefl.federation.ClientFactory`, from what it is sent once at start-up: the
configuration as JSON, each client's shard as safetensors bytes, and under active-adversary secure
aggregation each client's Ed25519 signing key as its 32 raw private bytes (and every client's
public key).  The actor keeps its clients -- shards, trainers, DP ledgers, aggregation halves --
across rounds.

Each turn of a round (:func:`securefl.fl.turns.run_turns`) sends every actor only its clients'
encoded messages, as lists of bytes, and gets lists of bytes back (no object of securefl's is
serialised after start-up); the actors compute at once, and the server, which never runs on an
actor, receives the replies in client-id order, so the results are bit for bit those of the
in-process transport with ``threads`` 1.  A DP-SGD client's ledger comes back with its reply when it
changed, and this process's copy of the client takes it over (:mod:`securefl.transports.ledgers`).

The actors rebuild the clients from the configuration: plug points replaced in a
:class:`~securefl.federation.Federation` (another trainer or transform) do not reach them, its
shards and signing keys do.  On a cluster every node needs securefl installed at this version, and
shards and keys cross the network as Ray carries them: enable Ray's TLS (``RAY_USE_TLS``) there.
Ray is imported only when this transport is built (``pip install securefl[ray]``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from securefl.config import RunConfig, ray_endpoint
from securefl.data.datasets import DATASETS
from securefl.errors import ConfigError
from securefl.federation import ClientFactory
from securefl.fl.client import FederatedClient
from securefl.fl.client_pool import ClientPool
from securefl.fl.server import FederatedServer
from securefl.fl.turns import Replies, Traffic, run_turns, sequential
from securefl.fl.types import ClientShard
from securefl.protocols.crypto import keys
from securefl.transports.ledgers import LedgerReports, take_over_ledger
from securefl.transports.round_start import FaultsFor, open_round

log = logging.getLogger(__name__)

STOP_SECONDS = 30.0
"""How long :meth:`RayTransport.close` waits for a killed actor to be gone."""


HostReplies = dict[int, tuple[list[bytes], float, bytes]]
"""An actor's answer to one turn, per client: its replies, the seconds it computed, and its DP
ledger when it changed (else empty bytes)."""

PROBE_SECONDS = 5.0
"""How long a cluster address may take to accept a TCP connection before it counts as unreachable
(Ray itself retries an unreachable address for minutes)."""


def import_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`~securefl.errors.ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "`backend` ray needs Ray, which is not installed here: pip install 'securefl[ray]', "
            "or use `backend` local"
        ) from None
    return ray


class RayTransport:
    """Carries a federation's bytes between this process's server and clients hosted by Ray actors.

    ``shards`` (``shards[c]``: client ``c``'s data, read once, when its actor starts) and
    ``signing_keys`` (active-adversary secure aggregation) are those of the federation the server
    was built for; ``actors``: how many (``None``: one per
    CPU of the cluster), never more than the clients.  ``timeout``: seconds the actors may take to
    start, or to answer one turn (``None``: no limit); past it the run fails naming the actor.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        shards: Sequence[ClientShard],
        signing_keys: Mapping[int, Ed25519PrivateKey] | None = None,
        faults_for: FaultsFor | None = None,
        actors: int | None = None,
        timeout: float | None = None,
    ) -> None:
        if actors is not None and actors < 1:
            raise ValueError(f"actors {actors} < 1")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout {timeout} is not a positive number of seconds")
        self.ray = import_ray()
        self.config = config
        self.shards = shards
        self.signing_keys = signing_keys
        self.faults_for = faults_for
        self.actors = actors
        self.timeout = timeout
        self._handles: list[Any] = []  # the actors, by index
        self._host: dict[int, int] = {}  # client id -> actor index
        self._clients: Mapping[int, FederatedClient] = {}  # this process's copies (ledgers taken over)
        self._started_ray = False

    def enrol(self, server: FederatedServer, clients: Mapping[int, FederatedClient]) -> None:
        """Join (or start) Ray, start the actors with their clients and enrol every client."""
        if self._handles:
            raise RuntimeError("the actors are already running")
        if set(clients) != set(range(len(self.shards))):
            raise ValueError(f"the clients {sorted(clients)} are not those of the {len(self.shards)} shards")
        self._clients = clients
        self._connect()
        cpus = self._cluster_cpus()
        count = min(self.actors or cpus, len(clients))
        if count > cpus:
            raise ConfigError(
                f"`workers` {count} Ray actors need a CPU each, and the Ray cluster has {cpus}: use "
                f"`workers` {cpus} or fewer, or add nodes"
            )
        for index, client_id in enumerate(sorted(clients)):
            self._host[client_id] = index % count
        host = self.ray.remote(num_cpus=1)(ClientHost)
        self._handles = [host.remote() for _ in range(count)]
        config_json = self.config.to_json()
        max_client_samples = max(len(self.shards[c]) for c in clients)
        verify_keys = (
            None
            if self.signing_keys is None
            else {c: keys.public_bytes(key) for c, key in self.signing_keys.items()}
        )
        hosted = self._by_actor(dict.fromkeys(clients, []))
        pending = {
            index: handle.join.remote(
                config_json,
                {c: self._shard_bytes(c) for c in hosted[index]},
                None
                if self.signing_keys is None
                else {c: self.signing_keys[c].private_bytes_raw() for c in hosted[index]},
                verify_keys,
                max_client_samples,
            )
            for index, handle in enumerate(self._handles)
        }
        joined = self._collect(pending, hosted)
        for client_id in sorted(joined):
            for data in joined[client_id][0]:
                server.receive(client_id, data)

    def _shard_bytes(self, client_id: int) -> bytes:
        shard = self.shards[client_id]
        if shard.client_id != client_id:
            raise ValueError(f"shards[{client_id}] is client {shard.client_id}'s shard")
        return shard_to_bytes(shard)

    def run_round(self, server: FederatedServer, clients: Mapping[int, FederatedClient]) -> Traffic:
        """One round, its clients computing on the actors; the traffic it carried."""
        opened = open_round(server, self.faults_for)
        if opened is None:
            return Traffic()
        first, _, faults = opened
        return run_turns(server, self._exchange, first, faults=faults)

    def _exchange(self, inboxes: Mapping[int, list[bytes]]) -> Replies:
        """Every actor's clients compute their inboxes of one turn at once; their replies."""
        by_actor = self._by_actor(inboxes)
        pending = {
            index: handle.turn.remote(by_actor[index])
            for index, handle in enumerate(self._handles)
            if by_actor[index]
        }
        return self._collect(pending, by_actor)

    def _by_actor(self, inboxes: Mapping[int, list[bytes]]) -> list[dict[int, list[bytes]]]:
        by_actor: list[dict[int, list[bytes]]] = [{} for _ in self._handles]
        for client_id, messages in inboxes.items():
            by_actor[self._host[client_id]][client_id] = messages
        return by_actor

    def _collect(self, pending: Mapping[int, Any], asked: Sequence[Mapping[int, object]]) -> Replies:
        """The answers of the actors in ``pending`` (index -> the call's reference) about the
        clients each was ``asked`` about, after this process's copies of the clients took over
        the ledgers that came with them."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        replies: Replies = {}
        for index, reference in pending.items():
            answered = self._answer(index, reference, deadline)
            if not isinstance(answered, dict) or set(answered) != set(asked[index]):
                raise RuntimeError(f"Ray actor {index} answered for clients it was not asked about")
            for client_id, (messages, seconds, ledger) in sorted(answered.items()):
                if ledger:
                    take_over_ledger(self._clients[client_id], ledger, host=f"Ray actor {index}")
                    if isinstance(self._clients, ClientPool):  # the trainer keeps the ledger
                        self._clients.park([client_id])
                replies[client_id] = (messages, seconds)
        return replies

    def _answer(self, index: int, reference: Any, deadline: float | None) -> HostReplies:
        """Actor ``index``'s answer, or an error naming the actor and its clients."""
        exceptions = self.ray.exceptions
        hosted = sorted(c for c, host in self._host.items() if host == index)
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            answer: HostReplies = self.ray.get(reference, timeout=timeout)
        except exceptions.GetTimeoutError:
            raise RuntimeError(
                f"Ray actor {index} (clients {hosted}) did not answer within {self.timeout:g} s"
            ) from None
        except exceptions.RayTaskError as error:
            if isinstance(error.cause, ConfigError):  # e.g. a setting its node cannot honour
                raise ConfigError(f"Ray actor {index} (clients {hosted}): {error.cause}") from None
            raise RuntimeError(
                f"Ray actor {index} (clients {hosted}) failed: {type(error.cause).__name__}: {error.cause}"
            ) from None
        except exceptions.RayActorError as error:
            raise RuntimeError(f"Ray actor {index} (clients {hosted}) died: {error}") from None
        return answer

    def _connect(self) -> None:
        """Join the cluster at ``config.ray_address``, or start a local instance (loopback, one
        CPU per actor at least); a Ray already running in this process is used as it is."""
        ray, address = self.ray, self.config.ray_address
        if ray.is_initialized():
            if address is not None:
                raise ConfigError(
                    f"Ray is already running in this process, so `ray_address` {address} cannot be "
                    "joined: drop `ray_address` to use it, or call ray.shutdown() first"
                )
            return
        if address is None:
            cores = len(os.sched_getaffinity(0))
            ray.init(
                num_cpus=max(cores, self.actors or 0),
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
            )
        else:
            endpoint = ray_endpoint(address)
            if endpoint is not None:
                _probe(address, *endpoint)
            try:
                ray.init(address=address)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ConfigError(
                    f"cannot join the Ray cluster at `ray_address` {address}: {error}; check the "
                    "address and that the cluster runs this Ray version, or drop `ray_address` to "
                    "start a local Ray instance"
                ) from None
        self._started_ray = True

    def _cluster_cpus(self) -> int:
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            raise ConfigError("the Ray cluster offers no CPU to run client actors on: add a node with CPUs")
        return cpus

    def close(self) -> None:
        """Stop the actors, and Ray itself when this transport started it."""
        handles, self._handles = self._handles, []
        try:
            for handle in handles:
                self.ray.kill(handle)
            for handle in handles:
                self._wait_until_dead(handle)
        finally:
            if self._started_ray:
                self._started_ray = False
                self.ray.shutdown()

    def _wait_until_dead(self, handle: Any) -> None:
        """``ray.kill`` only asks: wait, bounded by :data:`STOP_SECONDS`, until a call to the actor
        fails, so a closed transport leaves no actor computing or holding a CPU."""
        deadline = time.monotonic() + STOP_SECONDS
        while time.monotonic() < deadline:
            try:
                self.ray.get(handle.__ray_ready__.remote(), timeout=1.0)
            except self.ray.exceptions.RayActorError:
                return
            except self.ray.exceptions.GetTimeoutError:
                pass
            self.ray.kill(handle)
        log.warning("a Ray actor was still running %g s after it was killed", STOP_SECONDS)

    def __enter__(self) -> RayTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _probe(address: str, host: str, port: int) -> None:
    """Refuse at once a cluster address nothing listens on (Ray would retry it for minutes)."""
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as error:
        raise ConfigError(
            f"no Ray cluster answers at `ray_address` {address} ({error}): start one there with "
            "`ray start --head`, check the address, or drop `ray_address` to start a local Ray instance"
        ) from None


class ClientHost:
    """The body of one actor: the client programs of its shards, built here from the configuration
    when it joins and kept across rounds; bytes in, bytes out.  (Built in :meth:`join`, not in the
    actor's constructor, so that an error building them -- a setting this node cannot honour --
    reaches the driver as itself.)"""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.clients: dict[int, FederatedClient] = {}
        self._deliver = sequential({})
        self._ledgers = LedgerReports()

    def join(
        self,
        config_json: str,
        shards: dict[int, bytes],
        signing_keys: dict[int, bytes] | None,
        verify_keys: dict[int, bytes] | None,
        max_client_samples: int,
    ) -> HostReplies:
        """Build the client program of each of ``shards`` (client id -> :func:`shard_to_bytes`),
        signing with its raw Ed25519 key of ``signing_keys`` and verifying its peers with
        ``verify_keys``; each one's enrolment message."""
        if self.clients:
            raise RuntimeError("this actor's clients have joined already")
        config = RunConfig.from_mapping(json.loads(config_json))
        factory = ClientFactory(
            config,
            info=DATASETS[config.dataset],
            max_client_samples=max_client_samples,
            verify_keys=None
            if verify_keys is None
            else {c: Ed25519PublicKey.from_public_bytes(key) for c, key in verify_keys.items()},
        )
        for client_id, data in sorted(shards.items()):
            key = None if signing_keys is None else signing_keys[client_id]
            self.clients[client_id] = factory.client(
                shard_from_bytes(client_id, data),
                signing_key=None if key is None else Ed25519PrivateKey.from_private_bytes(key),
            )
        self._deliver = sequential({c: client.receive for c, client in self.clients.items()})
        replies: Replies = {}
        for client_id, client in sorted(self.clients.items()):
            started = time.perf_counter()
            replies[client_id] = ([client.join()], time.perf_counter() - started)
        return self._with_ledgers(replies)

    def turn(self, inboxes: dict[int, list[bytes]]) -> HostReplies:
        """The hosted clients' replies to one turn's messages, in client-id order."""
        return self._with_ledgers(self._deliver(inboxes))

    def _with_ledgers(self, replies: Replies) -> HostReplies:
        return {
            c: (messages, seconds, self._ledgers.changed(self.clients[c]))
            for c, (messages, seconds) in replies.items()
        }


def shard_to_bytes(shard: ClientShard) -> bytes:
    """A client's features and targets as safetensors bytes: no pickle."""
    return save_tensors({"x": shard.x, "y": shard.y})


def shard_from_bytes(client_id: int, data: bytes) -> ClientShard:
    """Client ``client_id``'s shard from :func:`shard_to_bytes`'s bytes."""
    tensors = load_tensors(data)
    return ClientShard(client_id=client_id, x=tensors["x"], y=tensors["y"])
