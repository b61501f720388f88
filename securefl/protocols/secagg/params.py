"""Parameters of one secure-aggregation round, validated on construction, with the overflow proof.

:class:`SecAggParams` fixes the number of clients ``n``, the Shamir threshold ``t``, the ring
Z_{2^bits} of the inputs, the SecAgg+ neighbour degree ``k`` (Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020; ``None`` is the complete graph of
Bonawitz et al., CCS 2017), the per-coordinate input bound every client promises, and the threat
model.  A config whose sum could wrap around ``2**bits`` is refused: with every input coordinate
in ``[0, input_bound]``, the sum of ``n`` inputs is at most ``n * input_bound``, which must stay
below ``2**bits`` for the unmasked sum to be the true integer sum.

:func:`choose_parameters` picks ``k`` and ``t`` from ``n``, the dropout rate and the corruption
rate with the rule documented there.  :class:`RoundSetup` is what a round's server and clients
agree on before it starts (round id, participants, vector length, the graph seed).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from securefl.errors import ConfigError
from securefl.protocols.crypto.keys import KEY_BYTES, RandomSource, random_bytes

MIN_BITS = 8
MAX_BITS = 62
MAX_CLIENT_ID = 2**32 - 2  # Shamir evaluates client ``u`` at x = u + 1, which must fit in 32 bits


@dataclass(frozen=True)
class SecAggParams:
    """n, t, k, bits, input bound and threat model of a secure-aggregation round.

    - ``num_clients``: clients that start the round (``n``).
    - ``threshold``: Shamir threshold ``t``; with the complete graph, at least ``t`` clients must
      remain at every step; with SecAgg+, at least ``t`` of every client's ``k + 1`` share
      holders (its neighbours and itself).  Fewer aborts the round, revealing nothing.
    - ``bits``: inputs and the sum live in Z_{2^bits}, 8 <= bits <= 62 (uploads are packed at
      ``bits`` per coordinate).
    - ``neighbors``: SecAgg+ degree ``k`` of the random Harary graph (even, 2 <= k < n), or
      ``None`` for the complete graph of the original protocol.
    - ``input_bound``: every client promises coordinates in ``[0, input_bound]``; refused if
      ``n * input_bound >= 2**bits`` (the sum could wrap).  ``None`` skips the proof: the output
      is then the sum modulo ``2**bits``.
    - ``active_adversary``: the server may deviate from the protocol; adds Ed25519-signed keys
      and the ConsistencyCheck round over the survivor set (clients' signing keys are known to
      everyone up front).
    """

    num_clients: int
    threshold: int
    bits: int = 32
    neighbors: int | None = None
    input_bound: int | None = None
    active_adversary: bool = False

    def __post_init__(self) -> None:
        n, t, k = self.num_clients, self.threshold, self.neighbors
        if not _is_int(n) or n < 2:
            raise ConfigError(f"num_clients {n!r} must be an integer >= 2: secure aggregation "
                              "needs at least two clients")
        if not _is_int(self.bits) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigError(f"bits {self.bits!r} is outside {MIN_BITS}..{MAX_BITS}: choose a "
                              "ring size in that range (e.g. --secagg-bits 32)")
        if k is not None:
            if not _is_int(k) or k < 2:
                raise ConfigError(f"neighbors {k!r} must be an even integer >= 2 (or None for "
                                  "the complete graph)")
            if k >= n:
                raise ConfigError(f"neighbors {k} >= clients {n}: use fewer neighbours than "
                                  "clients, or neighbors=None for the complete graph")
            if k % 2:
                raise ConfigError(f"neighbors {k} is odd: a Harary graph links k/2 peers on each "
                                  f"side, use {k + 1} or {k - 1}")
        if not _is_int(t) or t < 1:
            raise ConfigError(f"threshold {t!r} must be an integer >= 1")
        if t > n:
            raise ConfigError(f"threshold {t} > clients {n}: lower the threshold "
                              "(--secagg-threshold) or add clients")
        if k is not None and t > k + 1:
            raise ConfigError(f"threshold {t} > neighbors + 1 = {k + 1} share holders per client:"
                              " lower the threshold or raise neighbors")
        if self.input_bound is not None:
            bound = self.input_bound
            if not _is_int(bound) or bound < 0:
                raise ConfigError(f"input_bound {bound!r} must be a non-negative integer")
            if n * bound >= 2**self.bits:
                raise ConfigError(
                    f"num_clients {n} * input_bound {bound} = {n * bound} >= 2^{self.bits}: the "
                    "sum could wrap; raise bits, lower input_bound (clip harder) or use fewer "
                    "clients per round")
        if not isinstance(self.active_adversary, bool):
            raise ConfigError("active_adversary must be True or False")

    @property
    def complete_graph(self) -> bool:
        """Whether every pair of clients shares a mask (the original protocol)."""
        return self.neighbors is None

    @property
    def degree(self) -> int:
        """Neighbours per client: ``k``, or ``n - 1`` for the complete graph."""
        return self.num_clients - 1 if self.neighbors is None else self.neighbors

    @property
    def share_holders(self) -> int:
        """Clients holding shares of one client's secrets: its neighbours and itself."""
        return self.degree + 1

    @property
    def signature_threshold(self) -> int:
        """Active mode: valid survivor-set signatures a client needs before it unmasks.

        ``max(t, floor(n/2) + 1)``.  Honest clients sign one survivor set per round, so a server
        colluding with ``c`` clients cannot show two different sets ``t``-signed to two honest
        clients as long as ``2 * signature_threshold > n + c``.
        """
        return max(self.threshold, self.num_clients // 2 + 1)

    @property
    def modulus(self) -> int:
        """The ring size ``2**bits``."""
        return 2**self.bits

    @property
    def word_dtype(self) -> np.dtype:
        """numpy word type of ring vectors: uint32 for bits <= 32, else uint64."""
        return np.dtype(np.uint32) if self.bits <= 32 else np.dtype(np.uint64)

    @property
    def sum_bound(self) -> int | None:
        """The largest possible sum ``n * input_bound`` (< 2**bits), or ``None`` if unbounded."""
        return None if self.input_bound is None else self.num_clients * self.input_bound


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class RoundSetup:
    """What server and clients agree on before a round: id, participants, vector length, graph.

    ``graph_seed`` (32 bytes) selects the random Harary graph of SecAgg+; it is drawn by whoever
    sets the round up (the simulation draws it from the random source).  A server that can choose
    it can choose who neighbours whom, which matters against an active adversary: see the threat
    model in :mod:`securefl.protocols.secagg`.
    """

    round_id: int
    participants: tuple[int, ...]
    vector_length: int
    graph_seed: bytes

    def __post_init__(self) -> None:
        if not _is_int(self.round_id) or not 0 <= self.round_id < 2**64:
            raise ConfigError(f"round_id {self.round_id!r} must be an integer in [0, 2^64)")
        participants = tuple(self.participants)
        if any(not _is_int(p) or not 0 <= p <= MAX_CLIENT_ID for p in participants):
            raise ConfigError(f"client ids must be integers in [0, {MAX_CLIENT_ID}]")
        if list(participants) != sorted(set(participants)):
            raise ConfigError("participants must be distinct and sorted")
        object.__setattr__(self, "participants", tuple(int(p) for p in participants))
        if not _is_int(self.vector_length) or not 1 <= self.vector_length < 2**32:
            raise ConfigError(f"vector length {self.vector_length!r} must be in [1, 2^32)")
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) != KEY_BYTES:
            raise ConfigError(f"graph_seed must be {KEY_BYTES} bytes")

    @classmethod
    def create(
        cls,
        participants: tuple[int, ...] | list[int],
        *,
        vector_length: int,
        round_id: int = 0,
        random_source: RandomSource = os.urandom,
    ) -> RoundSetup:
        """A setup with a fresh graph seed from ``random_source``."""
        return cls(
            round_id=round_id,
            participants=tuple(sorted(participants)),
            vector_length=vector_length,
            graph_seed=random_bytes(random_source, KEY_BYTES),
        )

    def check(self, params: SecAggParams) -> None:
        """Raise :class:`ConfigError` unless this setup fits ``params``."""
        if len(self.participants) != params.num_clients:
            raise ConfigError(
                f"{len(self.participants)} participants but num_clients is "
                f"{params.num_clients}: make them equal")


# --------------------------------------------------------------------------------------------
# Choosing k and t
# --------------------------------------------------------------------------------------------


def _log_binomial_pmf(trials: int, successes: int, p: float) -> float:
    return (
        math.lgamma(trials + 1)
        - math.lgamma(successes + 1)
        - math.lgamma(trials - successes + 1)
        + successes * math.log(p)
        + (trials - successes) * math.log1p(-p)
    )


def binomial_tail_at_least(trials: int, p: float, at_least: int) -> float:
    """P[Binomial(trials, p) >= at_least], summed exactly in log space."""
    if at_least <= 0:
        return 1.0
    if at_least > trials:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return min(1.0, math.fsum(
        math.exp(_log_binomial_pmf(trials, i, p)) for i in range(at_least, trials + 1)
    ))


def hypergeometric_tail_at_least(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[at least ``at_least`` marked among ``draws`` taken without replacement], exactly."""
    upper = min(marked, draws)
    if at_least > upper:
        return 0.0
    favourable = sum(
        math.comb(marked, i) * math.comb(population - marked, draws - i)
        for i in range(max(at_least, 0), upper + 1)
    )
    return favourable / math.comb(population, draws)


def choose_parameters(
    num_clients: int,
    *,
    dropout_rate: float,
    corruption_rate: float,
    bits: int = 32,
    input_bound: int | None = None,
    active_adversary: bool = False,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> SecAggParams:
    """Choose the SecAgg+ degree ``k`` and threshold ``t`` for ``n`` clients.

    Assumptions: each client drops independently with probability ``dropout_rate`` (δ); at most
    ``c = ceil(corruption_rate * n)`` clients are corrupted (collude with the server), chosen
    before and independently of the random graph.  Failure targets: security ``2**-security_bits`` (σ),
    correctness ``2**-correctness_bits`` (η), each a union bound over the ``n`` clients.

    The rule: take the smallest even ``k`` (trying 2, 4, ... and finally the complete graph,
    ``k = n - 1``) for which a ``t`` exists with

    1. connectivity (SecAgg+ only; Bell et al. need the honest survivors to stay connected so the
       server only learns their total): on the Harary ring, removing nodes disconnects the graph
       only if two disjoint runs of ``k/2`` consecutive nodes are removed, so require
       ``n**2 * (δ + c/n)**k <= 2**-σ``;
    2. privacy of the shares: ``t`` is the smallest integer >= 2 with
       ``n * P[Hypergeometric(n - 1, c, k) >= t] <= 2**-σ`` (a client's corrupted neighbours hold
       fewer than ``t`` of its shares; for the complete graph this is Bonawitz et al.'s
       ``t > c``);
    3. active adversary only: the consistency check must stop split views,
       ``2 * max(t, n//2 + 1) > n + c`` (raise ``t`` if needed);
    4. correctness: ``n * P[Bin(k + 1, 1 - δ) < t] <= 2**-η`` (enough share holders survive to
       unmask every client), and in active mode ``P[Bin(n, 1 - δ) < max(t, n//2 + 1)] <= 2**-η``.

    Raises :class:`ConfigError` if even the complete graph cannot meet the targets.
    """
    n = num_clients
    if not _is_int(n) or n < 2:
        raise ConfigError(f"num_clients {n!r} must be an integer >= 2")
    for name, rate in (("dropout_rate", dropout_rate), ("corruption_rate", corruption_rate)):
        if not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"{name} {rate!r} must be in [0, 1)")
    if dropout_rate + corruption_rate >= 1.0:
        raise ConfigError("dropout_rate + corruption_rate must be below 1: no honest survivors")
    security = 2.0 ** -security_bits
    correctness = 2.0 ** -correctness_bits
    corrupted = math.ceil(corruption_rate * n)
    removal = dropout_rate + corrupted / n
    candidates: list[int | None] = [k for k in range(2, n - 1, 2)] + [None]
    for k in candidates:
        degree = n - 1 if k is None else k
        holders = degree + 1
        if k is not None and n * n * removal**k > security:
            continue
        threshold = next(
            (t for t in range(2, holders + 1)
             if n * hypergeometric_tail_at_least(n - 1, corrupted, degree, t) <= security),
            None,
        )
        if threshold is None:
            continue
        if active_adversary:
            needed = (n + corrupted) // 2 + 1
            if n // 2 + 1 < needed:
                threshold = max(threshold, needed)
            if threshold > holders:
                continue
            signers = max(threshold, n // 2 + 1)
            if 1.0 - binomial_tail_at_least(n, 1.0 - dropout_rate, signers) > correctness:
                continue
        unrecoverable = 1.0 - binomial_tail_at_least(holders, 1.0 - dropout_rate, threshold)
        if n * unrecoverable > correctness:
            continue
        return SecAggParams(
            num_clients=n,
            threshold=threshold,
            bits=bits,
            neighbors=k,
            input_bound=input_bound,
            active_adversary=active_adversary,
        )
    raise ConfigError(
        f"no neighbour degree and threshold meet 2^-{security_bits} security and "
        f"2^-{correctness_bits} correctness for {n} clients with dropout_rate {dropout_rate} and "
        f"corruption_rate {corruption_rate}: lower the rates, add clients or relax the targets")
