"""FedAvg updates summed through secure aggregation: the server learns sums and nothing else.

Each client turns its :class:`~securefl.fl.types.Contribution` into one vector over Z_{2^bits}
(:mod:`securefl.fl.quantize`) holding, side by side,

- ``w · clip(Δ, ±c)``   its weighted update, each coordinate clipped to ``--secagg-clip`` ``c``,
- ``w``                 its weight (sample count, capped at the public bound ``w_max``),
- ``w · min(loss, 100)`` its weighted training loss,
- the number of update coordinates the clip changed,

and hands it straight to a client of the secure-aggregation protocol (Bonawitz et al., CCS 2017;
:mod:`securefl.protocols.secagg`). The server side gets the protocol's output, the sum over the
survivors, and decodes the four sums: FedAvg divides the first by the second, so the server never
sees one client's update, sample count or loss. What this module returns, an
:class:`~securefl.fl.types.Aggregate`, is built only from that sum and the protocol's statistics.

Dropouts are simulated per round: each client leaves with probability ``--dropout-rate`` at a
random protocol step; the round then aggregates the survivors, or aborts below the threshold.
A client whose update is NaN or inf has no fixed-point encoding (the quantizer refuses it): it
sends nothing, a dropout of the planned round before it advertises keys (so the round keeps its size
and threshold), and the round's ``non_finite_dropped`` counts it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Mapping

import numpy as np
import torch

from securefl.config import SecAggConfig
from securefl.errors import ConfigError, NonFiniteUpdateError, ThresholdNotMetError
from securefl.fl.quantize import FixedPointCodec, level_for
from securefl.fl.types import Aggregate, Contribution
from securefl.protocols.secagg import (
    Dropout,
    DropoutPlan,
    RoundAbortedError,
    SecAggParams,
    SecAggResult,
    SecAggStats,
    Step,
    enforce_parameter_rules,
    protocol_steps,
    run_secure_aggregation,
)

log = logging.getLogger(__name__)

LOSS_CAP = 100.0
"""Training losses are clipped at this value before they enter the secure sum."""

DEFAULT_CLIP = 1.0
"""Default ``--secagg-clip`` in parameter units. The default CNN's largest update coordinate in a
round was 0.32 (measured over three rounds of the default run): 3× headroom, and the fraction of
clipped coordinates is reported every round so a binding clip is visible."""


class SecureAggregationAborted(ThresholdNotMetError):
    """A round aborted below threshold; ``details`` says where and who dropped."""

    def __init__(self, message: str, details: dict) -> None:
        super().__init__(message)
        self.details = details


class SecureAggregationChannel:
    """An :class:`~securefl.fl.types.AggregationChannel` whose server side only sees sums."""

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
        self._round_guards: dict = {}  # client id -> RoundIdGuard, filled by the protocol driver
        self.clients_per_round = clients_per_round
        self.max_clients = max(max_clients or clients_per_round, clients_per_round)
        if clients_per_round < 2:
            raise ConfigError(
                f"secure aggregation needs at least 2 clients per round, got "
                f"{clients_per_round}: raise --clients-per-round"
            )
        self.params_for(clients_per_round, self.codec_for(clients_per_round))
        widest = self.codec_for(max(max_clients or clients_per_round, clients_per_round))
        if dp_clip_norm is not None and self._rounding_norm(widest) >= dp_clip_norm:
            raise ConfigError(
                f"with --secagg-bits {config.bits}, rounding could move an update by more than the "
                f"DP clip norm {dp_clip_norm}: raise --secagg-bits"
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
                f"clients, fewer than the largest client weight {self.weight_bound:.0f}: raise --secagg-bits"
            )
        w = self.weight_bound
        bounds = torch.cat(
            [
                torch.full((self.num_params,), w * self.clip, dtype=torch.float64),
                torch.tensor([level, w * LOSS_CAP, max(self.num_params, level)], dtype=torch.float64),
            ]
        )
        return FixedPointCodec(bounds=bounds, level=level)

    def params_for(self, num_clients: int, codec: FixedPointCodec | None) -> SecAggParams:
        """The protocol parameters of a round with ``num_clients`` clients, checked against the
        rules of ``choose_parameters`` at the configured dropout rate: refused against an active
        server, a loud warning otherwise (``enforce_parameter_rules``).

        ``codec=None``: the inputs are already ring elements and the sum is taken modulo
        ``2^bits``; the caller bounds the probability that it wraps (distributed DP)."""
        params = SecAggParams(
            num_clients=num_clients,
            threshold=self.config.threshold_count(num_clients),
            bits=self.config.bits,
            neighbors=self.config.neighbors,
            input_bound=None if codec is None else codec.max_value,
            active_adversary=self.config.active_adversary,
            max_colluders=self.config.max_colluders,
        )
        enforce_parameter_rules(params, dropout_rate=self.config.dropout_rate)
        return params

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
                f"the smallest up to {max_clients}: change --secagg-threshold or --secagg-neighbors"
            )
        return runnable[0]

    def round_params(self) -> list[SecAggParams]:
        """The parameters of every round size that can run: the planned round when its size is
        fixed (a client left out for a non-finite update is a dropout of that round, which keeps
        its threshold), else (Poisson sampling) every size from :meth:`smallest_round` up to
        ``max_clients``."""
        if self.max_clients == self.clients_per_round:
            return [self.params_for(self.clients_per_round, self.codec_for(self.clients_per_round))]
        sizes = range(self.smallest_round(self.max_clients), self.max_clients + 1)
        return [self.probe_params(m) for m in sizes]  # none is None: see smallest_round

    def probe_params(self, num_clients: int) -> SecAggParams | None:
        """The parameters a round of ``num_clients`` would get, or ``None`` if it cannot run.
        Only the answer matters here: the passive-mode rule warnings are silenced for the probe
        (a round that runs still warns)."""
        rules_log = logging.getLogger(enforce_parameter_rules.__module__)
        was_disabled, rules_log.disabled = rules_log.disabled, True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return self.params_for(num_clients, self.codec_for(num_clients))
        except ConfigError:
            return None
        finally:
            rules_log.disabled = was_disabled

    def aggregate(
        self,
        contributions: list[Contribution],
        *,
        round_index: int,
        contexts: Mapping[int, bytes] | None = None,
    ) -> Aggregate:
        """The survivors' sums. ``contexts``: the model context each client computed from the
        model it received (:func:`securefl.defences.consistency.model_context`), bound into its
        session; clients shown different models end up in different sessions."""
        if len(contributions) < 2:
            raise SecureAggregationAborted(
                f"{len(contributions)} client(s) sampled: secure aggregation needs at least 2, "
                "or the sum would be one client's update",
                {"survivors": 0},
            )
        try:
            codec = self.codec_for(len(contributions))
        except ConfigError as error:
            raise SecureAggregationAborted(
                f"{len(contributions)} clients cannot run this protocol: {error}", {"survivors": 0}
            ) from None
        inputs, left_out = self._encode_finite(contributions, codec, round_index)
        try:
            params = self.params_for(len(inputs), codec)
        except ConfigError as error:  # e.g. a Poisson round below the threshold: reveal nothing
            raise SecureAggregationAborted(
                f"{len(inputs)} clients cannot run this protocol: {error}",
                {"survivors": 0, "non_finite_dropped": len(left_out)},
            ) from None
        result, details = self.run_protocol(
            inputs, params=params, round_index=round_index, left_out=left_out, contexts=contexts
        )
        survivors = len(result.survivors)
        sums = codec.decode_sum(result.sum, count=survivors)
        weight_sum = float(sums[self.num_params])
        if self.dp_clip_norm is None:
            details["secagg_clipped_fraction"] = float(sums[-1]) / (survivors * self.num_params)
        details["quantization_error_bound"] = (
            survivors * float(codec.step[0]) / weight_sum if weight_sum > 0 else math.inf
        )
        return Aggregate(
            weighted_delta_sum=sums[: self.num_params].to(torch.float32),
            weight_sum=weight_sum,
            survivors=tuple(sorted(result.survivors)),
            train_loss_sum=float(sums[self.num_params + 1]),
            details=details,
        )

    def run_protocol(
        self,
        inputs: dict[int, np.ndarray],
        *,
        params: SecAggParams,
        round_index: int,
        left_out: frozenset[int] = frozenset(),
        contexts: Mapping[int, bytes] | None = None,
    ) -> tuple[SecAggResult, dict]:
        """One protocol round on the clients' ring vectors, with this round's simulated dropouts:
        the survivors' sum and the round's details (byte counts, timings, dropouts per step).
        The ``left_out`` clients (non-finite updates; their input is a placeholder) drop out before
        advertising keys. Raises :class:`SecureAggregationAborted` below threshold.
        ``contexts`` (client id -> context) puts each client in the session of its own context;
        the server runs in the context most clients hold."""
        contexts = {c: contexts[c] for c in inputs} if contexts else {}
        server_context = Counter(contexts.values()).most_common(1)[0][0] if contexts else b""
        simulated = DropoutPlan.random(
            sorted(inputs),
            rate=self.config.dropout_rate,
            steps=protocol_steps(params),
            generator=np.random.default_rng([self.seed, round_index, 0xD0]),
        )
        dropouts = DropoutPlan(
            {**simulated.dropouts, **{client: Dropout(Step.ADVERTISE_KEYS) for client in left_out}}
        )
        try:
            result = run_secure_aggregation(
                inputs,
                params=params,
                dropouts=dropouts,
                round_id=round_index,
                record_transcript=False,
                round_guards=self._round_guards,  # one per client, kept across rounds
                context=server_context,
                client_contexts=contexts,
            )
        except RoundAbortedError as error:
            details = {**self._details(error.stats), "abort_step": error.step.label, "survivors": 0}
            details["non_finite_dropped"] = len(left_out)
            raise SecureAggregationAborted(str(error), details) from None
        details = self._details(result.stats)
        details["non_finite_dropped"] = len(left_out)
        return result, details

    def _encode_finite(
        self, contributions: list[Contribution], codec: FixedPointCodec, round_index: int
    ) -> tuple[dict[int, np.ndarray], frozenset[int]]:
        """Each client's encoded input, and the clients left out for a non-finite update.

        The quantizer refuses NaN and inf (:class:`~securefl.errors.NonFiniteUpdateError`); such
        a client sends nothing: it is a dropout of the planned round before it advertises keys
        (its input here is an all-zero placeholder that never leaves it), so the round keeps the
        planned size and threshold, and the others aggregate without it (or the round aborts
        below the threshold). Under ``--dp`` whether an update is finite is a function of the already
        private update, so the count may be released; under ``--central-dp`` ``ClipUpdate``
        has already replaced a non-finite update by zero, so the count is always 0 there.
        """
        inputs: dict[int, np.ndarray] = {}
        left_out = set()
        for contribution in contributions:
            try:
                inputs[contribution.client_id] = self._encode(contribution, codec, round_index)
            except NonFiniteUpdateError as error:
                log.warning("client %d leaves round %d: %s", contribution.client_id, round_index, error)
                inputs[contribution.client_id] = np.zeros(self.num_params + 3, dtype=np.uint64)
                left_out.add(contribution.client_id)
        return inputs, frozenset(left_out)

    def _encode(self, contribution: Contribution, codec: FixedPointCodec, round_index: int) -> np.ndarray:
        """Client side: clip, weight, append weight, loss and clip count, quantize."""
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
        return codec.encode(vector, generator=generator)

    def _rounding_norm(self, codec: FixedPointCodec) -> float:
        """The most stochastic rounding can add to a weight-1 update's L2 norm."""
        return math.sqrt(self.num_params) * float(codec.step[0]) / self.weight_bound

    @staticmethod
    def _details(stats: SecAggStats) -> dict:
        dropouts = {step.label: len(ids) for step, ids in stats.dropouts.items()}
        bytes_up = list(stats.bytes_up.values())
        return {
            "dropouts": dropouts,
            "bytes_up": sum(bytes_up),
            "bytes_down": sum(stats.bytes_down.values()),
            "secagg_bytes_up_per_client": max(bytes_up) if bytes_up else 0,
            "secagg_client_seconds": {s.label: v for s, v in stats.mean_client_seconds().items()},
            "secagg_server_seconds": {s.label: v for s, v in stats.server_seconds.items()},
        }
