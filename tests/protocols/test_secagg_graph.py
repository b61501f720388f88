"""Random Harary graphs: k-regular, symmetric, connected, uniform relabelling."""

from __future__ import annotations

import itertools
from collections import Counter

from scipy import stats
from secagg_helpers import DeterministicRandom

from securefl.protocols.secagg import RoundSetup, SecAggParams
from securefl.protocols.secagg.graph import neighbourhoods, random_permutation


def is_connected(graph: dict[int, frozenset[int]]) -> bool:
    start = next(iter(graph))
    seen, frontier = {start}, [start]
    while frontier:
        node = frontier.pop()
        for other in graph[node] - seen:
            seen.add(other)
            frontier.append(other)
    return seen == set(graph)


def test_harary_graph_is_k_regular_symmetric_connected():
    ids = tuple(range(5, 105, 2))  # 50 arbitrary client ids
    for k in (2, 4, 10, 48):
        params = SecAggParams(num_clients=50, threshold=2, neighbors=k)
        setup = RoundSetup.create(ids, vector_length=3, random_source=DeterministicRandom(str(k)))
        graph = neighbourhoods(params, setup)
        assert set(graph) == set(ids)
        assert all(len(peers) == k and node not in peers for node, peers in graph.items())
        assert all(node in graph[peer] for node, peers in graph.items() for peer in peers)
        assert is_connected(graph)


def test_complete_graph_when_neighbors_is_none():
    setup = RoundSetup.create([1, 2, 3, 4], vector_length=1)
    graph = neighbourhoods(SecAggParams(num_clients=4, threshold=2), setup)
    assert graph == {c: frozenset({1, 2, 3, 4} - {c}) for c in (1, 2, 3, 4)}


def test_permutation_is_uniform_over_seeds():
    source = DeterministicRandom("permutations")
    counts = Counter(
        tuple(random_permutation([0, 1, 2, 3], seed=source(32), round_id=0)) for _ in range(4800)
    )
    assert set(counts) == set(itertools.permutations(range(4)))
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3


def test_same_setup_same_graph_different_seed_different_graph():
    params = SecAggParams(num_clients=30, threshold=2, neighbors=4)
    a = RoundSetup(0, tuple(range(30)), 1, bytes(32))
    b = RoundSetup(0, tuple(range(30)), 1, bytes(31) + b"\x01")
    assert neighbourhoods(params, a) == neighbourhoods(params, a)
    assert neighbourhoods(params, a) != neighbourhoods(params, b)
