"""Who masks with whom: the complete graph or a random Harary graph of degree k (SecAgg+).

Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS 2020), replace
the complete graph of Bonawitz et al. with a sparse random graph: each client agrees keys, shares
secrets and masks only with its ``k`` neighbours.  We use their random Harary graph: the Harary
graph H(k, n) (clients on a ring, each linked to the ``k/2`` nearest on either side) with the
ring order given by a uniformly random permutation.  The permutation is Fisher-Yates driven by an
AES-256-CTR stream keyed from the round's graph seed (rejection-sampled, so exactly uniform); the
server and every client derive the same graph from the same :class:`RoundSetup`.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from types import MappingProxyType

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.protocols.crypto.keys import KeyPurpose, derive_key
from securefl.protocols.secagg.params import RoundSetup, SecAggParams


class _UniformIntegers:
    """Uniform integers below a bound from an AES-CTR stream, by rejection sampling."""

    def __init__(self, key: bytes) -> None:
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._buffer = b""

    def _word(self) -> int:
        if len(self._buffer) < 4:
            self._buffer = self._encryptor.update(bytes(4096))
        word, self._buffer = self._buffer[:4], self._buffer[4:]
        return int.from_bytes(word, "big")

    def below(self, bound: int) -> int:
        limit = (2**32 // bound) * bound
        while True:
            word = self._word()
            if word < limit:
                return word % bound


def random_permutation(items: Sequence[int], *, seed: bytes, round_id: int) -> list[int]:
    """A uniformly random permutation of ``items`` determined by ``seed`` and ``round_id``."""
    key = derive_key(seed, purpose=KeyPurpose.GRAPH_PERMUTATION, round_id=round_id, parties=())
    stream = _UniformIntegers(key)
    order = list(items)
    for i in range(len(order) - 1, 0, -1):
        j = stream.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def harary_ring(order: Sequence[int], degree: int) -> dict[int, frozenset[int]]:
    """Neighbourhoods of H(degree, n) on the ring ``order``: ``degree/2`` nearest each side."""
    n = len(order)
    half = degree // 2
    return {
        node: frozenset(order[(position + offset) % n] for offset in range(-half, half + 1) if offset != 0)
        for position, node in enumerate(order)
    }


@functools.lru_cache(maxsize=4)
def neighbourhoods(params: SecAggParams, setup: RoundSetup) -> Mapping[int, frozenset[int]]:
    """Every participant's (open) neighbourhood: all others, or its random-Harary neighbours.

    Read-only and computed once per ``(params, setup)`` in a process: the graph is public and the
    same for every party, so the clients a simulation hosts share one instead of building n
    graphs of n neighbourhoods each (1,000 clients: O(n^2 k) work and memory otherwise)."""
    participants = setup.participants
    if params.complete_graph:
        everyone = frozenset(participants)
        return MappingProxyType({client: everyone - {client} for client in participants})
    order = random_permutation(participants, seed=setup.graph_seed, round_id=setup.round_id)
    return MappingProxyType(harary_ring(order, params.degree))


def induces_connected_subgraph(graph: Mapping[int, frozenset[int]], nodes: Collection[int]) -> bool:
    """Whether ``nodes`` induce a connected subgraph of ``graph`` (breadth-first search).

    This is what secure aggregation over a sparse graph needs of the survivor set ``S``: if
    ``G[S]`` is connected, every proper non-empty subset ``A`` of ``S`` has an edge into
    ``S \\ A``, whose pairwise mask hides ``A``'s partial sum (Bell et al., CCS 2020, section 3).
    The empty set counts as connected.
    """
    remaining = set(nodes)
    if not remaining:
        return True
    frontier = [remaining.pop()]
    while frontier:
        node = frontier.pop()
        reached = graph[node] & remaining
        remaining -= reached
        frontier.extend(reached)
    return not remaining
