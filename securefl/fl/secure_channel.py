"""FedAvg updates summed through secure aggregation: the server learns sums and nothing else.

Each client turns its :class:`~securefl.fl.types.Contribution` into one vector over Z_{2^bits}
(:mod:`securefl.fl.quantize`) holding, side by side,

- ``w · clip(Δ, ±c)``   its weighted update, each coordinate clipped to ``secagg.clip`` ``c``,
- ``w``                 its weight (sample count, capped at the public bound ``w_max``),
- ``w · min(loss, 100)`` its weighted training loss,
- the number of update coordinates the clip changed,

and hands it straight to a client of the secure-aggregation protocol (Bonawitz et al., CCS 2017;
:mod:`securefl.protocols.secagg`). The server side gets the protocol's output, the sum over the
survivors, and decodes the four sums: FedAvg divides the first by the second, so the server never
sees one client's update, sample count or loss. What this module returns, an
:class:`~securefl.fl.types.Aggregate`, is built only from that sum and the protocol's statistics.

The channel is split into the half each program runs: :class:`SecureAggregationRound` on the
server (the protocol's :class:`~securefl.protocols.secagg.ServerProtocol` nested, and the decoding
of the sum) and :class:`SecureAggregationClient` on each client (the encoding of its contribution
and its :class:`~securefl.protocols.secagg.ClientProtocol`, with the :class:`RoundIdGuard` it keeps
across rounds).  They exchange bytes only.  Each client computes the round's protocol parameters
itself from the public configuration and the announced participants; the server sends only the
:class:`~securefl.protocols.secagg.RoundSetup`.  The encoding is a plug point
(:class:`RingEncoding`): this channel's fixed point, or distributed DP's noised integers
(:mod:`securefl.privacy.distributed`).

Dropouts are simulated per round (:meth:`SecureAggregationChannel.simulated_dropouts`): each
client leaves with probability ``secagg.dropout_rate`` at a random protocol step; the round then
aggregates the survivors, or aborts below the threshold.  A client whose update is NaN or inf has
no fixed-point encoding (the quantizer refuses it): it declines the round before it advertises
keys, a dropout of the planned round (which keeps its size and threshold).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.config import SecAggConfig
from securefl.errors import (
    ConfigError,
    NonFiniteUpdateError,
    RemoteProtocolError,
    RoundAbortedError,
    ThresholdNotMetError,
)
from securefl.fl.quantize import FixedPointCodec, level_for
from securefl.fl.turns import NO_FAULTS, Faults, Traffic, aggregate_in_process
from securefl.fl.types import Aggregate, Contribution, SignedAggregation
from securefl.protocols.crypto import keys
from securefl.protocols.secagg import (
    ClientProtocol,
    DropoutPlan,
    RoundIdGuard,
    RoundSetup,
    SecAggParams,
    ServerProtocol,
    ServerState,
    decode,
    decode_setup,
    encode,
    encode_setup,
    enforce_parameter_rules,
    protocol_steps,
)

log = logging.getLogger(__name__)

LOSS_CAP = 100.0
"""Training losses are clipped at this value before they enter the secure sum."""

DEFAULT_CLIP = 1.0
"""Default ``secagg.clip`` in parameter units. The default CNN's largest update coordinate in a
round was 0.32 (measured over three rounds of the default run): 3× headroom, and the fraction of
clipped coordinates is reported every round so a binding clip is visible."""

PARAMS_TO_CONFIG = {
    "bits": "secagg.bits",
    "threshold": "secagg.threshold",
    "neighbors": "secagg.neighbors",
    "max_colluders": "secagg.max_colluders",
    "active_adversary": "secagg.active_adversary",
    "dropout_rate": "secagg.dropout_rate",
    "input_bound": "secagg.clip",
}
""":class:`~securefl.protocols.secagg.SecAggParams` parameter (and the dropout rate of its rules)
-> the :class:`~securefl.config.RunConfig` field path that sets it: ``protocols/`` knows no
configuration and names its own parameters.  ``input_bound`` is what ``secagg.clip`` bounds
(each coordinate's bound is the clip times the largest client weight).  A round's size is no
setting (``clients_per_round``, ``fraction`` or sampling and dropouts make it): the protocol
words it as "a round of n clients"."""

COMPLETE_GRAPH = ("`neighbors` None", "drop `secagg.neighbors`")
"""How the protocol names the complete graph, and how a run asks for it (no ``secagg.neighbors``)."""


def in_config_text(message: str) -> str:
    """``message`` (from :class:`~securefl.protocols.secagg.SecAggParams` or its rules) with each
    backticked protocol parameter named by its field path, `` `bits` `` -> `` `secagg.bits` ``,
    which the CLI shows as its flag; "`` `neighbors` `` None" becomes "drop `` `secagg.neighbors` ``"."""
    message = message.replace(*COMPLETE_GRAPH)
    for name, path in PARAMS_TO_CONFIG.items():
        message = message.replace(f"`{name}`", f"`{path}`")
    return message


def in_config_terms(error: ConfigError) -> ConfigError:
    """``error`` with its message :func:`in_config_text`."""
    return type(error)(in_config_text(str(error)))


def _ignore(message: str) -> None:
    """A probe's rule warnings: only whether the round runs matters."""


class RingEncoding(Protocol):
    """How contributions become vectors over the ring and how the survivors' sum becomes an
    :class:`~securefl.fl.types.Aggregate`: the part of a secure channel that is not the protocol."""

    @property
    def config(self) -> SecAggConfig: ...

    @property
    def vector_length(self) -> int: ...

    @property
    def round_sizes(self) -> frozenset[int]:
        """The round sizes the configuration can produce; a client refuses any other."""
        ...

    def round_parameters(self, num_clients: int) -> SecAggParams:
        """The protocol parameters of a round of ``num_clients``; :class:`RoundAbortedError` when
        such a round cannot run (the server side) -- the client side computes the same."""
        ...

    def encode_input(
        self, contribution: Contribution, *, params: SecAggParams, round_index: int
    ) -> np.ndarray: ...

    def decode_sum(
        self, total: np.ndarray, *, survivors: tuple[int, ...], params: SecAggParams, round_index: int
    ) -> Aggregate: ...


class SecureChannel(RingEncoding, SignedAggregation, Protocol):
    """A secure channel: a :class:`RingEncoding` with its two halves (this module's
    :class:`SecureAggregationChannel`, or :class:`~securefl.privacy.distributed.DistributedDPChannel`)."""

    def simulated_dropouts(self, round_index: int, participants: Sequence[int]) -> Faults: ...

    def with_verify_keys(self, verify_keys: Mapping[int, Ed25519PublicKey]) -> SecureChannel: ...

    def client(
        self, client_id: int, *, signing_key: Ed25519PrivateKey | None = None
    ) -> SecureAggregationClient: ...

    def open_round(
        self, *, round_index: int, participants: Sequence[int], context: bytes
    ) -> SecureAggregationRound: ...


class SecureAggregationChannel:
    """An :class:`~securefl.fl.types.Aggregation` whose server half only sees sums.

    ``verify_keys`` (active mode): every client's Ed25519 public key, known to all up front (the
    federation's enrolment); each client's half gets its own signing key from whoever set it up.
    """

    def __init__(
        self,
        *,
        config: SecAggConfig,
        num_params: int,
        weight_bound: float,
        clients_per_round: int,
        max_clients: int | None = None,
        dp_clip_norm: float | None = None,
        seed: int,
        verify_keys: Mapping[int, Ed25519PublicKey] | None = None,
    ) -> None:
        """``clients_per_round`` is the planned round (validated now, before anyone trains);
        ``max_clients`` the most a round can have (Poisson sampling: every client), whose sum
        must still fit the ring. With ``dp_clip_norm`` (DP-FedAvg) each update's L2 norm stays
        below it *after* rounding, and the data-dependent clip count is not sent."""
        self.config = config
        self.num_params = num_params
        self.weight_bound = float(weight_bound)
        self.clip = config.clip if config.clip is not None else DEFAULT_CLIP
        self.dp_clip_norm = dp_clip_norm
        self.seed = seed
        self.verify_keys = dict(verify_keys) if verify_keys is not None else None
        self.clients_per_round = clients_per_round
        self.max_clients = max(max_clients or clients_per_round, clients_per_round)
        self._warned: set[str] = set()  # shared by this channel's copies (with_verify_keys)
        if clients_per_round < 2:
            raise ConfigError(
                f"secure aggregation needs at least 2 clients per round, got "
                f"{clients_per_round}: raise `clients_per_round`"
            )
        self.params_for(clients_per_round, self.codec_for(clients_per_round))
        widest = self.codec_for(max(max_clients or clients_per_round, clients_per_round))
        if dp_clip_norm is not None and self._rounding_norm(widest) >= dp_clip_norm:
            raise ConfigError(
                f"with `secagg.bits` = {config.bits}, rounding could move an update by more than the "
                f"DP clip norm {dp_clip_norm}: raise `secagg.bits`"
            )

    def codec_for(self, num_clients: int) -> FixedPointCodec:
        """The fixed-point codec with headroom for the sum of ``num_clients`` vectors.

        Every entry gets one public bound: ``w_max · c`` for the update, ``w_max · LOSS_CAP`` for
        the loss. The weight gets the bound ``L`` (the level), so its quantization step is exactly
        1 and the weight sum comes out exact; so does the clip count while it is at most ``L``
        (its bound is ``max(num_params, L)``).
        """
        level = level_for(bits=self.config.bits, num_clients=num_clients)
        if self.weight_bound > level:
            raise ConfigError(
                f"a {self.config.bits}-bit ring leaves {level} levels per client for {num_clients} "
                f"clients, fewer than the largest client weight {self.weight_bound:.0f}: raise `secagg.bits`"
            )
        w = self.weight_bound
        bounds = torch.cat(
            [
                torch.full((self.num_params,), w * self.clip, dtype=torch.float64),
                torch.tensor([level, w * LOSS_CAP, max(self.num_params, level)], dtype=torch.float64),
            ]
        )
        return FixedPointCodec(bounds=bounds, level=level)

    def params_for(
        self, num_clients: int, codec: FixedPointCodec | None, *, quiet: bool = False
    ) -> SecAggParams:
        """The protocol parameters of a round with ``num_clients`` clients (under
        ``secagg.neighbors`` auto, the degree, threshold and colluders ``choose_parameters`` gives
        this size: :meth:`~securefl.config.SecAggConfig.chosen_parameters`), checked against the
        rules of ``choose_parameters`` at the simulated dropout rate: refused against an active
        server, a loud warning otherwise (``enforce_parameter_rules``; :meth:`warn_once`, none
        when ``quiet``), both in the configuration's terms.

        ``codec=None``: the inputs are already ring elements and the sum is taken modulo
        ``2^bits``; the caller bounds the probability that it wraps (distributed DP)."""
        try:
            params = SecAggParams(
                num_clients=num_clients,
                threshold=self.config.threshold_count(num_clients),
                bits=self.config.bits,
                neighbors=self.config.neighbors_for(num_clients),
                input_bound=None if codec is None else codec.max_value,
                active_adversary=self.config.active_adversary,
                max_colluders=self.config.colluders_for(num_clients),
            )
            enforce_parameter_rules(
                params, dropout_rate=self.config.dropout_rate, warn=_ignore if quiet else self.warn_once
            )
        except ConfigError as error:
            raise in_config_terms(error) from error
        return params

    def warn_once(self, message: str) -> None:
        """Warn (a :class:`UserWarning` and a logged warning) in the configuration's terms, once
        per distinct message for this channel: every client and the server compute each round's
        parameters, and a run's rounds share them."""
        message = in_config_text(message)
        if message in self._warned:
            return
        self._warned.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)
        log.warning(message)

    def smallest_round(self, max_clients: int) -> int:
        """The fewest clients a round can start with and complete when nobody drops out.

        A round with fewer aborts before the protocol starts (fewer than 2 clients, fewer than
        the threshold, no more clients than SecAgg+ neighbours, ...), and so does nothing else:
        every size from this one up to ``max_clients`` runs, or the channel is refused. DP-FedAvg
        under Poisson sampling needs this number: whether a round releases a sum then depends on
        whether one more user was sampled (:mod:`securefl.privacy.central`).
        """
        runnable = [m for m in range(2, max_clients + 1) if self.probe_params(m) is not None]
        if not runnable or runnable != list(range(runnable[0], max_clients + 1)):
            raise ConfigError(
                f"secure aggregation runs rounds of {runnable or 'no'} clients, not every size from "
                f"the smallest up to {max_clients}: change `secagg.threshold` or `secagg.neighbors`"
            )
        return runnable[0]

    def round_params(self) -> list[SecAggParams]:
        """The parameters of every round size that can run: the planned round when its size is
        fixed (a client left out for a non-finite update is a dropout of that round, which keeps
        its threshold), else (Poisson sampling) every size from :meth:`smallest_round` up to
        ``max_clients``."""
        if self.max_clients == self.clients_per_round:
            return [self.params_for(self.clients_per_round, self.codec_for(self.clients_per_round))]
        rounds = []
        for size in range(self.smallest_round(self.max_clients), self.max_clients + 1):
            params = self.probe_params(size)
            assert params is not None  # smallest_round: every size from it up runs
            rounds.append(params)
        return rounds

    @functools.cached_property
    def round_sizes(self) -> frozenset[int]:
        """The sizes a round of this configuration can have (:meth:`round_params`): exactly the
        planned one under fixed-size sampling, every runnable size under Poisson sampling.  A
        client refuses any other."""
        return frozenset(params.num_clients for params in self.round_params())

    @property
    def fewest_clients(self) -> int:
        """The smallest round the configuration can run."""
        return min(self.round_sizes)

    def probe_params(self, num_clients: int) -> SecAggParams | None:
        """The parameters a round of ``num_clients`` would get, or ``None`` if it cannot run.
        Only the answer matters here: the passive-mode rule warnings are silenced for the probe
        (a round that runs still warns)."""
        try:
            return self.params_for(num_clients, self.codec_for(num_clients), quiet=True)
        except ConfigError:
            return None

    def with_verify_keys(self, verify_keys: Mapping[int, Ed25519PublicKey]) -> SecureAggregationChannel:
        """This channel with another directory of the clients' public signing keys."""
        other = copy.copy(self)
        other.verify_keys = dict(verify_keys)
        return other

    # ---- the fixed-point encoding (RingEncoding) ------------------------------------------

    @property
    def vector_length(self) -> int:
        """The update, the weight, the loss and the clip count."""
        return self.num_params + 3

    def round_parameters(self, num_clients: int) -> SecAggParams:
        """The parameters of a round of ``num_clients``; :class:`RoundAbortedError` (nothing is
        revealed) when it cannot run: fewer than 2 clients (the sum would be one client's
        update), a ring too small for them, or a threshold the rules refuse."""
        if num_clients < 2:
            raise RoundAbortedError(
                f"{num_clients} client(s) sampled: secure aggregation needs at least 2, "
                "or the sum would be one client's update",
                details={"survivors": 0},
            )
        try:
            return self.params_for(num_clients, self.codec_for(num_clients))
        except ConfigError as error:  # e.g. a Poisson round below the threshold: reveal nothing
            raise RoundAbortedError(
                f"{num_clients} clients cannot run this protocol: {error}", details={"survivors": 0}
            ) from None

    def encode_input(
        self, contribution: Contribution, *, params: SecAggParams, round_index: int
    ) -> np.ndarray:
        """Client side: clip, weight, append weight, loss and clip count, quantize.  Raises
        :class:`~securefl.errors.NonFiniteUpdateError` for a NaN or inf update."""
        codec = self.codec_for(params.num_clients)
        weight = min(contribution.weight, self.weight_bound)
        loss = contribution.train_loss if math.isfinite(contribution.train_loss) else 0.0
        delta = contribution.weighted_delta.to(torch.float64) / contribution.weight
        # clamp would turn ±inf into ±c: keep non-finite entries, so the quantizer refuses them
        clipped = torch.where(torch.isfinite(delta), delta.clamp(-self.clip, self.clip), delta)
        changed = float((clipped != delta).sum()) if self.dp_clip_norm is None else 0.0
        if self.dp_clip_norm is not None:  # keep the norm below the clip after rounding too
            room = self.dp_clip_norm - self._rounding_norm(codec)
            clipped = clipped * min(1.0, room / max(float(clipped.norm()), 1e-30))
        vector = torch.cat(
            [
                weight * clipped,
                torch.tensor([weight, weight * min(loss, LOSS_CAP), changed], dtype=torch.float64),
            ]
        )
        state = np.random.SeedSequence([self.seed, round_index, contribution.client_id, 0x51])
        generator = torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0] >> 1))
        # As the ring's words (uint32 up to 32 bits): the protocol holds every client's input
        # until it masks it, half the memory of the codec's uint64 (same values: all < 2^bits).
        return codec.encode(vector, generator=generator).astype(params.word_dtype, copy=False)

    def decode_sum(
        self, total: np.ndarray, *, survivors: tuple[int, ...], params: SecAggParams, round_index: int
    ) -> Aggregate:
        """Server side: the four sums of the survivors' vectors."""
        codec = self.codec_for(params.num_clients)
        count = len(survivors)
        sums = codec.decode_sum(total, count=count)
        weight_sum = float(sums[self.num_params])
        details: dict[str, Any] = {}
        if self.dp_clip_norm is None:
            details["secagg_clipped_fraction"] = float(sums[-1]) / (count * self.num_params)
        details["quantization_error_bound"] = (
            count * float(codec.step[0]) / weight_sum if weight_sum > 0 else math.inf
        )
        return Aggregate(
            weighted_delta_sum=sums[: self.num_params].to(torch.float32),
            weight_sum=weight_sum,
            survivors=survivors,
            train_loss_sum=float(sums[self.num_params + 1]),
            details=details,
        )

    def _rounding_norm(self, codec: FixedPointCodec) -> float:
        """The most stochastic rounding can add to a weight-1 update's L2 norm."""
        return math.sqrt(self.num_params) * float(codec.step[0]) / self.weight_bound

    # ---- the two halves ----------------------------------------------------------------

    def open_round(
        self, *, round_index: int, participants: Sequence[int], context: bytes
    ) -> SecureAggregationRound:
        return SecureAggregationRound(
            self,
            round_index=round_index,
            participants=participants,
            context=context,
            verify_keys=self.verify_keys,
        )

    def client(
        self, client_id: int, *, signing_key: Ed25519PrivateKey | None = None
    ) -> SecureAggregationClient:
        return SecureAggregationClient(
            self, client_id=client_id, signing_key=signing_key, verify_keys=self.verify_keys
        )

    def simulated_dropouts(self, round_index: int, participants: Sequence[int]) -> Faults:
        """The simulated crashes of a round (``secagg.dropout_rate``): turn ``k`` is protocol
        step ``k``; reproducible from the run's seed and the round."""
        if self.config.dropout_rate == 0:
            return NO_FAULTS
        return simulated_dropouts(self, round_index=round_index, participants=participants, seed=self.seed)

    def aggregate(
        self,
        contributions: list[Contribution],
        *,
        round_index: int,
        contexts: Mapping[int, bytes] | None = None,
    ) -> Aggregate:
        """The survivors' sums, both halves in one process, with this round's simulated dropouts.
        ``contexts``: the model context each client computed from the model it received
        (:func:`securefl.defences.consistency.model_context`), bound into its session; clients
        shown different models end up in different sessions."""
        return aggregate_securely(self, contributions, round_index=round_index, contexts=contexts)


def simulated_dropouts(
    encoding: RingEncoding, *, round_index: int, participants: Sequence[int], seed: int
) -> Faults:
    """Each participant drops with probability ``secagg.dropout_rate`` before or after a random
    step of the round's protocol (:meth:`DropoutPlan.random`), as synchronous-turn faults."""
    params = encoding.round_parameters(len(participants))
    steps = protocol_steps(params)
    plan = DropoutPlan.random(
        sorted(participants),
        rate=encoding.config.dropout_rate,
        steps=steps,
        generator=np.random.default_rng([seed, round_index, 0xD0]),
    )
    return Faults(
        before={c: steps.index(d.step) for c, d in plan.dropouts.items() if not d.after_sending},
        after={c: steps.index(d.step) for c, d in plan.dropouts.items() if d.after_sending},
    )


def aggregate_securely(
    encoding: SecureChannel,
    contributions: list[Contribution],
    *,
    round_index: int,
    contexts: Mapping[int, bytes] | None = None,
) -> Aggregate:
    """:meth:`SecureAggregationChannel.aggregate` for any :class:`RingEncoding` channel: both
    halves in synchronous turns with the round's simulated dropouts.  In active mode every client
    gets a fresh Ed25519 identity for this call (the server knows the public halves up front)."""
    participants = sorted(c.client_id for c in contributions)
    faults = encoding.simulated_dropouts(round_index, participants)
    signing_keys: dict[int, Ed25519PrivateKey] = {}
    if encoding.config.active_adversary:
        signing_keys = {c: keys.generate_signing_key() for c in participants}
        encoding = encoding.with_verify_keys({c: k.public_key() for c, k in signing_keys.items()})
    clients = {c: encoding.client(c, signing_key=signing_keys.get(c)) for c in participants}
    try:
        aggregate, traffic = aggregate_in_process(
            encoding,
            contributions,
            round_index=round_index,
            contexts=contexts,
            faults=faults,
            clients=clients,
        )
    except RoundAbortedError as error:
        error.details["non_finite_dropped"] = sum(client.declined_non_finite for client in clients.values())
        raise
    details = {**aggregate.details, **traffic_details(traffic)}
    details["non_finite_dropped"] = sum(client.declined_non_finite for client in clients.values())
    return dataclasses.replace(aggregate, details=details)


def traffic_details(traffic: Traffic) -> dict[str, Any]:
    """The bytes each direction carried and the compute time of each side, for a round's record."""
    seconds = traffic.mean_client_seconds()
    return {
        "bytes_up": traffic.total_up,
        "bytes_down": traffic.total_down,
        "bytes_up_per_client": max(traffic.bytes_up.values(), default=0),
        "client_seconds": sum(seconds),
        "server_seconds": sum(traffic.server_seconds),
    }


class SecureAggregationRound:
    """The server half of one secure-aggregation round: the nested
    :class:`~securefl.protocols.secagg.ServerProtocol`, then the decoding of the sum.  It sees
    the masked vectors' sum and nothing else; who answered each step is recorded as dropouts."""

    def __init__(
        self,
        encoding: RingEncoding,
        *,
        round_index: int,
        participants: Sequence[int],
        context: bytes,
        verify_keys: Mapping[int, Ed25519PublicKey] | None,
    ) -> None:
        self.encoding = encoding
        self.params = encoding.round_parameters(len(participants))  # RoundAbortedError: reveal nothing
        if len(participants) not in encoding.round_sizes:  # every client would refuse it
            raise RoundAbortedError(
                f"{len(participants)} clients sampled; the configuration's rounds have "
                f"{_sizes(encoding.round_sizes)}: the round does not start",
                details={"survivors": 0},
            )
        self.setup = RoundSetup.create(
            sorted(participants), vector_length=encoding.vector_length, round_id=round_index, context=context
        )
        self.round_index = round_index
        self._setup_bytes = encode_setup(self.setup)
        self._server = ServerProtocol(
            params=self.params,
            setup=self.setup,
            verify_keys=verify_keys if self.params.active_adversary else None,
        )
        self._expected = frozenset(self.setup.participants)
        self._answered: set[int] = set()
        self.dropouts: dict[str, int] = {}
        self._result: Aggregate | None = None

    def setup_for(self, client_id: int) -> bytes:
        return self._setup_bytes

    def receive(self, client_id: int, payload: bytes) -> None:
        message = decode(payload)
        if getattr(message, "sender", None) != client_id:
            raise RemoteProtocolError(
                f"a message signed as client {getattr(message, 'sender', None)} arrived from client "
                f"{client_id}: refused"
            )
        self._server.receive(message)
        self._answered.add(client_id)

    def close_step(self) -> list[tuple[int, bytes]]:
        step = self._server.step
        missing = len(self._expected - self._answered)
        if missing:
            self.dropouts[step.label] = missing
        self._expected, self._answered = frozenset(self._answered), set()
        try:
            outgoing = self._server.close_step()
        except ThresholdNotMetError as error:
            raise RoundAbortedError(
                str(error),
                step=step,
                details={"abort_step": step.label, "survivors": 0, "dropouts": self.dropouts},
            ) from None
        if self._server.state is ServerState.FINISHED:
            output = self._server.result
            aggregate = self.encoding.decode_sum(
                output.sum,
                survivors=tuple(sorted(output.survivors)),
                params=self.params,
                round_index=self.round_index,
            )
            self._result = dataclasses.replace(
                aggregate, details={**aggregate.details, "dropouts": self.dropouts}
            )
        return [(message.recipient, encode(message)) for message in outgoing]

    @property
    def result(self) -> Aggregate | None:
        return self._result


class SecureAggregationClient:
    """A client's half of secure aggregation, kept across its rounds: it encodes its contribution
    and runs a :class:`~securefl.protocols.secagg.ClientProtocol` per round, with the
    :class:`RoundIdGuard` that makes it refuse a round id it has seen, and (active mode) its own
    Ed25519 signing key."""

    def __init__(
        self,
        encoding: RingEncoding,
        *,
        client_id: int,
        signing_key: Ed25519PrivateKey | None,
        verify_keys: Mapping[int, Ed25519PublicKey] | None,
    ) -> None:
        self.encoding = encoding
        self.client_id = client_id
        self.guard = RoundIdGuard()
        self._signing_key = signing_key
        self._verify_keys = verify_keys
        self._protocol: ClientProtocol | None = None
        self.declined_non_finite = 0

    def check_setup(self, *, round_index: int, setup: bytes) -> tuple[RoundSetup, SecAggParams]:
        """The announced round and the parameters this client computes for it from the public
        configuration, before it trains; :class:`RemoteProtocolError` for a setup it refuses: one
        for another round or a round id it has seen, one that does not list it, a round size the
        configuration cannot produce (a server shrinking the round to isolate a client lowers the
        threshold), a participant without a known signing key (active mode), another vector length."""
        announced = decode_setup(setup)
        if announced.round_id != round_index:
            raise RemoteProtocolError(
                f"the setup is for round {announced.round_id}, the model for round {round_index}: refused"
            )
        if round_index in self.guard.seen:
            raise RemoteProtocolError(f"client {self.client_id} has seen round id {round_index}: refused")
        if self.client_id not in announced.participants:
            raise RemoteProtocolError(
                f"the setup of round {round_index} does not list client {self.client_id}: refused"
            )
        size = len(announced.participants)
        allowed = self.encoding.round_sizes
        if size not in allowed:
            raise RemoteProtocolError(
                f"the setup of round {round_index} lists {size} clients; the configuration's rounds have "
                f"{_sizes(allowed)}: refused (a smaller round has a lower threshold)"
            )
        if self._verify_keys is not None and set(announced.participants) - set(self._verify_keys):
            raise RemoteProtocolError(
                f"the setup of round {round_index} lists clients without an enrolled signing key: refused"
            )
        if announced.vector_length != self.encoding.vector_length:
            raise RemoteProtocolError(
                f"the setup announces vectors of {announced.vector_length} values, this channel "
                f"sends {self.encoding.vector_length}: refused"
            )
        # The parameters come from the public configuration, never from the server.
        return announced, self.encoding.round_parameters(size)

    def start(
        self, contribution: Contribution, *, round_index: int, setup: bytes, context: bytes
    ) -> list[bytes]:
        self._protocol = None
        announced, params = self.check_setup(round_index=round_index, setup=setup)
        try:
            vector = self.encoding.encode_input(contribution, params=params, round_index=round_index)
        except NonFiniteUpdateError:
            self.declined_non_finite += 1
            raise
        protocol = ClientProtocol(
            client_id=self.client_id,
            params=params,
            setup=announced,
            input_vector=vector,
            signing_key=self._signing_key,
            verify_keys=self._verify_keys,
            round_guard=self.guard,
            expected_context=context,
        )
        outgoing = protocol.start()
        self._protocol = protocol
        return [encode(message) for message in outgoing]

    def receive(self, payload: bytes) -> list[bytes]:
        if self._protocol is None:
            raise RemoteProtocolError(f"client {self.client_id} is in no secure-aggregation round: refused")
        return [encode(message) for message in self._protocol.receive(decode(payload))]


def _sizes(allowed: frozenset[int]) -> str:
    low, high = min(allowed), max(allowed)
    return f"{low} clients" if low == high else f"{low} to {high} clients"
