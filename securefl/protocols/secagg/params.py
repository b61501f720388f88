"""Parameters of one secure-aggregation round, validated on construction, with the overflow proof.

:class:`SecAggParams` fixes the number of clients ``n``, the Shamir threshold ``t``, the ring
Z_{2^bits} of the inputs, the SecAgg+ neighbour degree ``k`` (Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020; ``None`` is the complete graph of
Bonawitz et al., CCS 2017), the per-coordinate input bound every client promises, and the threat
model.  A config whose sum could wrap around ``2**bits`` is refused: with every input coordinate
in ``[0, input_bound]``, the sum of ``n`` inputs is at most ``n * input_bound``, which must stay
below ``2**bits`` for the unmasked sum to be the true integer sum.

:func:`choose_parameters` picks ``k`` and ``t`` from ``n``, the dropout rate and the corruption
rate with the rule documented there; :func:`assess_parameters` checks given parameters against the
same rules.  :class:`RoundSetup` is what a round's server and clients agree on before it starts
(round id, participants, vector length, the graph seed, application context), and
:func:`session_hash` binds every signature of a round to all of it.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes

from securefl.errors import ConfigError
from securefl.protocols.crypto.keys import KEY_BYTES, RandomSource, random_bytes

MIN_BITS = 8
MAX_BITS = 62
MAX_CLIENT_ID = 2**32 - 2  # Shamir evaluates client ``u`` at x = u + 1, which must fit in 32 bits
MIN_THRESHOLD = 2  # with t = 1 every share is the secret itself

logger = logging.getLogger(__name__)


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
    - ``max_colluders``: ``c``, how many clients may collude with the server; ``None`` takes the
      largest ``c`` the other parameters tolerate (:attr:`colluders_tolerated`).  Combinations
      that cannot be secure for ``c`` are refused:

      * the complete graph needs ``t > c``: the server's coalition then holds fewer than ``t``
        shares of any honest client's secrets (Bonawitz et al., theorems 6.3 and 6.5);
      * active mode needs ``2 * signature_threshold > n + c`` (no split views, see
        :attr:`signature_threshold`, which is chosen so this holds; ``c <= n - 2`` keeps it at
        most ``n``);
      * active mode with the complete graph needs ``2t > n + c`` (with ``max_colluders=None``,
        ``2t > n``): otherwise a server that relays to one client only the shares of ``t - 1``
        partners and declares them dropped gets ``t`` signers without that client and unmasks
        it alone (proof of sufficiency in :mod:`securefl.protocols.secagg`);
      * active mode with SecAgg+ needs ``c = 0``: a colluder inside a band the server declares
        dropped bridges the survivors' graph, so no client can detect a cut locally; and
        ``2t > k + 2``: with ``t <= k/2 + 1`` a server that withholds from a band of clients the
        shares of everyone outside it unmasks the band's sum (with ``t <= (k + 1)/2`` a single
        client's input);
      * passive SecAgg+ takes any ``c``: its guarantee is probabilistic, under the assumptions
        of :func:`choose_parameters` (colluders chosen independently of the random graph);
        :func:`assess_parameters` says whether the rules hold for ``c`` and a dropout rate.
    """

    num_clients: int
    threshold: int
    bits: int = 32
    neighbors: int | None = None
    input_bound: int | None = None
    active_adversary: bool = False
    max_colluders: int | None = None

    def __post_init__(self) -> None:
        n, t, k = self.num_clients, self.threshold, self.neighbors
        if not _is_int(n) or n < 2:
            raise ConfigError(
                f"a round of {n!r} client(s) cannot run: secure aggregation needs a whole number of at "
                "least two clients"
            )
        if not _is_int(self.bits) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigError(
                f"`bits` {self.bits!r} is outside {MIN_BITS}..{MAX_BITS}: choose a ring size in that "
                "range (e.g. `bits` 32)"
            )
        if k is not None:
            if not _is_int(k) or k < 2:
                raise ConfigError(
                    f"`neighbors` {k!r} must be an even integer >= 2, or `neighbors` None for the "
                    "complete graph"
                )
            if k >= n:
                raise ConfigError(
                    f"`neighbors` {k} > the {n - 1} peers of a client in a round of {n} clients: use "
                    "fewer neighbours than clients, or `neighbors` None for the complete graph"
                )
            if k % 2:
                raise ConfigError(
                    f"`neighbors` {k} is odd: a Harary graph links k/2 peers on each "
                    f"side, set `neighbors` to {k + 1} or {k - 1}"
                )
        if not _is_int(t) or t < MIN_THRESHOLD:
            raise ConfigError(
                f"`threshold` {t!r} must be an integer >= {MIN_THRESHOLD}: with "
                "a threshold of 1 every share is the secret itself, so one share holder "
                "and the server could unmask a client"
            )
        if t > n:
            raise ConfigError(
                f"`threshold` {t} exceeds a round of {n} clients: lower `threshold` or sample more "
                "clients per round"
            )
        if k is not None and t > k + 1:
            raise ConfigError(
                f"`threshold` {t} > {k + 1} share holders per client (`neighbors` {k} + 1):"
                " lower `threshold` or raise `neighbors`"
            )
        if self.input_bound is not None:
            bound = self.input_bound
            if not _is_int(bound) or bound < 0:
                raise ConfigError(f"`input_bound` {bound!r} must be a non-negative integer")
            if n * bound >= 2**self.bits:
                raise ConfigError(
                    f"a round of {n} clients * `input_bound` {bound} = {n * bound} >= 2^{self.bits}: "
                    "the sum could wrap; raise `bits`, lower `input_bound` (clip harder) or sample "
                    "fewer clients per round"
                )
        if not isinstance(self.active_adversary, bool):
            raise ConfigError("`active_adversary` must be True or False")
        self._check_colluders()

    def _check_colluders(self) -> None:
        n, t, c = self.num_clients, self.threshold, self.max_colluders
        if c is not None and (not _is_int(c) or not 0 <= c <= n - 2):
            raise ConfigError(
                f"`max_colluders` {c!r} must be an integer in [0, {n - 2}] in a round of {n} clients: at "
                "least two honest clients are needed for a sum to hide anything"
            )
        if c is not None and self.complete_graph and t <= c:
            raise ConfigError(
                f"`threshold` {t} <= `max_colluders` {c}: {c} colluding clients would hold enough "
                f"shares to unmask an honest client; raise `threshold` to at least {c + 1} "
                "or lower `max_colluders`"
            )
        if not self.active_adversary:
            return
        if self.complete_graph and 2 * t <= n + (c or 0):
            bound = (
                f"n + c = {n} + {c} (a round of {n} clients, `max_colluders` {c})"
                if c is not None
                else f"n = {n} (a round of {n} clients; no c >= 0 fits)"
            )
            raise ConfigError(
                f"`active_adversary` needs 2 * threshold > {bound}, so `threshold` >= "
                f"{(n + (c or 0)) // 2 + 1}, not {t}: the threshold must exceed half the share "
                "holders plus the colluders, or a server that withholds shares from one client "
                "and declares its partners dropped unmasks it alone (proof in "
                "securefl.protocols.secagg); raise `threshold`" + (" or lower `max_colluders`" if c else "")
            )
        if self.complete_graph:
            return
        k = self.degree
        if c:
            raise ConfigError(
                f"`active_adversary` with SecAgg+ (`neighbors` {k}) is secure only for "
                f"`max_colluders` 0, not {c}: a colluder inside a band of clients the server "
                "declares dropped bridges the survivors' graph, which no client can detect; use "
                "the complete graph (`neighbors` None), which tolerates c < 2t - n colluders"
            )
        if 2 * t <= k + 2:
            raise ConfigError(
                f"`active_adversary` with SecAgg+ (`neighbors` {k}) needs 2 * threshold > k + 2, so "
                f"`threshold` >= {k // 2 + 2}, not {t}: the threshold must exceed half of each "
                f"client's {k + 1} share holders by more than one, or a server that withholds "
                "shares unmasks one client, or a band of clients, alone (proof in "
                "securefl.protocols.secagg); raise `threshold` or lower `neighbors`"
            )

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
    def colluders_tolerated(self) -> int:
        """``c``: clients that may collude with the server while the guarantees hold.

        ``max_colluders`` when given (validated on construction).  Otherwise the largest ``c`` the
        threshold itself tolerates, without raising the signature threshold above ``t``, and
        never more than ``n - 2`` (two honest clients, or the sum is one client's input):

        - complete graph, passive: ``t - 1`` (``t > c``; Bonawitz et al., theorem 6.3);
        - complete graph, active: ``min(t - 1, 2t - n - 1)`` (``t > c`` and ``2t > n + c``:
          Bonawitz et al.'s active model, proof in :mod:`securefl.protocols.secagg`); a
          threshold with ``2t <= n`` tolerates no ``c >= 0`` and is refused on construction;
          the default threshold ``floor(2n/3) + 1`` of :class:`~securefl.config.SecAggConfig`
          gives ``c = 3`` for ``n = 10``;
        - SecAgg+, active: 0 (see the class docstring; ``2t > k + 2`` is required too);
        - SecAgg+, passive: ``t - 1``, so no client's share holders include ``t`` colluders;
          whether colluders can also cut the random graph is for :func:`assess_parameters`.
        """
        if self.max_colluders is not None:
            return int(self.max_colluders)
        n, t = self.num_clients, self.threshold
        if not self.active_adversary:
            return min(t - 1, n - 2)
        if not self.complete_graph:
            return 0
        return min(t - 1, 2 * t - n - 1, n - 2)  # >= 0: construction refuses 2t <= n

    @property
    def signature_threshold(self) -> int:
        """Active mode: valid survivor-set signatures a client needs before it unmasks.

        ``max(t, floor((n + c) / 2) + 1)`` with ``c`` = :attr:`colluders_tolerated`.  Proof that
        no two honest clients can be shown different survivor sets: honest clients sign one
        survivor set per session (their state machine signs once), and signatures are bound to
        the session (:func:`session_hash`).  If sets ``S != S'`` each carry ``s`` valid
        signatures, at most ``c`` signers of each are colluders, so at least ``s - c`` honest
        clients signed each; were these disjoint, ``2(s - c) + c <= n``, i.e. ``2s <= n + c``.
        With ``s >= floor((n + c)/2) + 1``, ``2s > n + c``, so some honest client signed both: a
        contradiction.  (Bonawitz et al., section 6.3, need exactly ``2s > n + c``.)
        """
        return max(self.threshold, (self.num_clients + self.colluders_tolerated) // 2 + 1)

    @property
    def modulus(self) -> int:
        """The ring size ``2**bits``."""
        return 1 << self.bits

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
    sets the round up (the simulation draws it from the random source).  It is public.  A server
    that chooses it chooses who neighbours whom; why that gives an active server nothing is in the
    threat model of :mod:`securefl.protocols.secagg`.  ``context`` is application data every
    party must agree on (e.g. the hash of the global model being trained); it enters the
    :func:`session_hash` that every signature covers.
    """

    round_id: int
    participants: tuple[int, ...]
    vector_length: int
    graph_seed: bytes
    context: bytes = b""

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
        if not isinstance(self.context, bytes) or len(self.context) >= 2**32:
            raise ConfigError("context must be bytes shorter than 2^32")

    @classmethod
    def create(
        cls,
        participants: tuple[int, ...] | list[int],
        *,
        vector_length: int,
        round_id: int = 0,
        random_source: RandomSource = os.urandom,
        context: bytes = b"",
    ) -> RoundSetup:
        """A setup with a fresh graph seed from ``random_source``."""
        return cls(
            round_id=round_id,
            participants=tuple(sorted(participants)),
            vector_length=vector_length,
            graph_seed=random_bytes(random_source, KEY_BYTES),
            context=context,
        )

    def check(self, params: SecAggParams) -> None:
        """Raise :class:`ConfigError` unless this setup fits ``params``."""
        if len(self.participants) != params.num_clients:
            raise ConfigError(
                f"{len(self.participants)} participants but num_clients is "
                f"{params.num_clients}: make them equal"
            )


def session_hash(params: SecAggParams, setup: RoundSetup) -> bytes:
    """SHA-256 of everything that defines a session: the parameters and the round setup.

    Canonical and injective: a domain label, then every field as a 4-byte big-endian length and
    its bytes (integers as 8-byte big-endian, ``None`` as the empty string, participants as
    their 4-byte ids), in a fixed order.  Signatures cover this hash, so a signature made under
    other parameters, another round id, graph seed, context or participants does not verify.
    Everything here is chosen by the server: a server that repeats a whole setup gets the same
    hash, so this alone does not stop replay across sessions; each client's
    :class:`~securefl.protocols.secagg.client.RoundIdGuard` does (active mode requires it).
    """

    def integer(value: int | None) -> bytes:
        return b"" if value is None else int(value).to_bytes(8, "big")

    fields = (
        integer(params.num_clients),
        integer(params.threshold),
        integer(params.bits),
        integer(params.neighbors),
        integer(params.input_bound),
        integer(int(params.active_adversary)),
        integer(params.colluders_tolerated),
        integer(setup.round_id),
        b"".join(p.to_bytes(4, "big") for p in setup.participants),
        integer(setup.vector_length),
        setup.graph_seed,
        setup.context,
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"securefl/secagg/v1/session\x00")
    for value in fields:
        digest.update(len(value).to_bytes(4, "big") + value)
    return digest.finalize()


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
    return min(1.0, math.fsum(math.exp(_log_binomial_pmf(trials, i, p)) for i in range(at_least, trials + 1)))


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


def assess_parameters(
    params: SecAggParams,
    *,
    dropout_rate: float,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> tuple[str, ...]:
    """The rules of :func:`choose_parameters` that ``params`` break at ``dropout_rate``.

    Uses ``c`` = ``params.colluders_tolerated``, the dropout rate δ and the targets σ, η of
    :func:`choose_parameters`; returns one sentence per violated rule (empty if all hold), each
    saying what to change.  What a violation means is the caller's choice;
    :func:`enforce_parameter_rules` refuses in active mode and warns in passive mode.
    """
    _check_rate("dropout_rate", dropout_rate)
    n, t, k = params.num_clients, params.threshold, params.degree
    c = params.colluders_tolerated
    security, correctness = 2.0**-security_bits, 2.0**-correctness_bits
    violated = []
    if not params.complete_graph and n * n * min(1.0, dropout_rate + c / n) ** k > security:
        violated.append(
            f"connectivity: with dropout rate {dropout_rate} and {c} colluders, the survivors' "
            f"graph of degree {k} can be cut (bound n^2 (δ + c/n)^k = "
            f"{n * n * min(1.0, dropout_rate + c / n) ** k:.2g} > 2^-{security_bits}); raise "
            "`neighbors`, lower `dropout_rate` or `max_colluders`"
        )
    if n * hypergeometric_tail_at_least(n - 1, c, k, t) > security:
        violated.append(
            f"share privacy: {c} colluders hold {t} of some client's {k + 1} shares with "
            f"probability up to {n * hypergeometric_tail_at_least(n - 1, c, k, t):.2g} > "
            f"2^-{security_bits}; raise `threshold` or `neighbors`, or lower `max_colluders`"
        )
    unrecoverable = n * (1.0 - binomial_tail_at_least(k + 1, 1.0 - dropout_rate, t))
    if unrecoverable > correctness:
        violated.append(
            f"correctness: with dropout rate {dropout_rate}, fewer than `threshold` {t} of some "
            f"client's {k + 1} share holders survive with probability up to "
            f"{unrecoverable:.2g} > 2^-{correctness_bits}; lower `threshold`, raise `neighbors` "
            "or lower `dropout_rate`"
        )
    if params.active_adversary:
        unsigned = 1.0 - binomial_tail_at_least(n, 1.0 - dropout_rate, params.signature_threshold)
        if unsigned > correctness:
            violated.append(
                f"correctness: with dropout rate {dropout_rate}, fewer than the "
                f"{params.signature_threshold} survivor-set signatures needed for {c} colluders "
                f"arrive with probability {unsigned:.2g} > 2^-{correctness_bits}; sample more clients per "
                "round, lower `max_colluders` or lower `dropout_rate`"
            )
    return tuple(violated)


def enforce_parameter_rules(
    params: SecAggParams, *, dropout_rate: float, warn: Callable[[str], None] | None = None
) -> tuple[str, ...]:
    """Refuse (active mode) or warn loudly about (passive mode) rules ``params`` break.

    Active mode raises :class:`ConfigError` listing every violated rule of
    :func:`assess_parameters`; passive mode calls ``warn`` with a message per rule -- by default
    it issues a :class:`UserWarning` and logs a warning; a caller that names the parameters
    otherwise, or warns once per message, passes its own.  Returns the violated rules.
    """
    violated = assess_parameters(params, dropout_rate=dropout_rate)
    if violated and params.active_adversary:
        raise ConfigError(
            "secure-aggregation parameters refused against an active server: " + "; ".join(violated)
        )
    for rule in violated:
        message = f"secure-aggregation parameters break a rule of choose_parameters: {rule}"
        if warn is not None:
            warn(message)
            continue
        warnings.warn(message, UserWarning, stacklevel=2)
        logger.warning(message)
    return violated


def _check_rate(name: str, rate: object) -> None:
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
        raise ConfigError(f"`{name}` {rate!r} must be in [0, 1)")


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
    3. active adversary only: SecAgg+ only if ``c = 0`` (see :class:`SecAggParams`), and ``t``
       is raised to ``floor((n + c)/2) + 1`` (complete graph, ``2t > n + c``) or ``k/2 + 2``
       (SecAgg+, ``2t > k + 2``), so no client can be unmasked alone by withholding shares; the
       consistency check must stop split views, ``2 * signature_threshold > n + c``, which
       :attr:`SecAggParams.signature_threshold` guarantees for ``max_colluders = c``;
    4. correctness: ``n * P[Bin(k + 1, 1 - δ) < t] <= 2**-η`` (enough share holders survive to
       unmask every client), and in active mode ``P[Bin(n, 1 - δ) < signature_threshold] <= 2**-η``.

    The result has ``max_colluders = c``; :func:`assess_parameters` checks rules 1, 2 and 4 for
    any given parameters.  Raises :class:`ConfigError` if even the complete graph cannot meet the
    targets.
    """
    n = num_clients
    if not _is_int(n) or n < 2:
        raise ConfigError(
            f"a round of {n!r} client(s) cannot run: secure aggregation needs a whole number of at "
            "least two clients"
        )
    _check_rate("dropout_rate", dropout_rate)
    _check_rate("corruption_rate", corruption_rate)
    if dropout_rate + corruption_rate >= 1.0:
        raise ConfigError("`dropout_rate` + `corruption_rate` must be below 1: no honest survivors")
    security = 2.0**-security_bits
    corrupted = math.ceil(corruption_rate * n)
    sparse_allowed = not (active_adversary and corrupted > 0)
    candidates: list[int | None] = [k for k in range(2, n - 1, 2) if sparse_allowed] + [None]
    for k in candidates:
        degree = n - 1 if k is None else k
        threshold = next(
            (
                t
                for t in range(2, degree + 2)
                if n * hypergeometric_tail_at_least(n - 1, corrupted, degree, t) <= security
            ),
            None,
        )
        if threshold is None or corrupted > n - 2:
            continue
        if active_adversary:
            threshold = max(threshold, (n + corrupted) // 2 + 1 if k is None else k // 2 + 2)
            if threshold > degree + 1:
                continue
        params = SecAggParams(
            num_clients=n,
            threshold=threshold,
            bits=bits,
            neighbors=k,
            input_bound=input_bound,
            active_adversary=active_adversary,
            max_colluders=corrupted,
        )
        if not assess_parameters(
            params, dropout_rate=dropout_rate, security_bits=security_bits, correctness_bits=correctness_bits
        ):
            return params
    raise ConfigError(
        f"no neighbour degree and threshold meet 2^-{security_bits} security and "
        f"2^-{correctness_bits} correctness for {n} clients with dropout_rate {dropout_rate} and "
        f"corruption_rate {corruption_rate}"
        + (
            " against an active server (which needs 2t > n + c, or 2t > k + 2 with SecAgg+)"
            if active_adversary
            else ""
        )
        + ": lower the rates, add clients or relax the targets"
    )
