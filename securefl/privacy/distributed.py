"""Distributed user-level DP under secure aggregation: every client noises its own update, the
server adds nothing and can only unmask a sum that is already private.

The pipeline of Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation" (ICML 2021), with the Skellam noise of Agarwal, Kairouz & Liu,
"The Skellam Mechanism for Differentially Private Federated Learning" (NeurIPS 2021).  Per client
and round, on the client side (:meth:`DistributedDPChannel.encode`):

1. clip the update to L2 norm ``c`` (DP-FedAvg's :class:`~securefl.privacy.central.ClipUpdate`);
2. rotate it with a randomized Hadamard transform ``x -> H·D·x / sqrt(d)`` (zero-padded to the
   next power of two ``d``; the signs ``D`` come from a public per-round seed, so the server can
   invert it), which spreads the norm evenly over the coordinates;
3. scale by ``s`` and round each coordinate randomly up or down (unbiased), *conditionally*:
   redraw until the rounded vector's squared norm is at most
   ``Δ2² = min((s·c + sqrt(d))², (s·c)² + d/4 + sqrt(2·ln(1/β))·(s·c + sqrt(d)/2))`` (Kairouz et
   al. 2021, section 4.1; each draw succeeds with probability at least ``1 − β``, ``β = e^-0.5``);
4. add Skellam noise of variance ``μ/(t − c)`` to every coordinate (integers: the sum of the
   survivors' shares is again Skellam), ``μ = (z·s·c)²``, ``t`` the round's secure-aggregation
   threshold and ``c`` the clients that may collude with the server (the protocol's
   :attr:`~securefl.protocols.secagg.SecAggParams.colluders_tolerated`, ``secagg.max_colluders``);
5. reduce modulo ``2^bits`` and hand the vector to the secure-aggregation protocol
   (the halves of :class:`~securefl.fl.secure_channel.SecureAggregationChannel`, the same run as
   plain secure aggregation).

The server side gets the protocol's sum, maps it to signed integers, divides by ``s``, un-rotates
and (:class:`DistributedDPServerUpdate`) divides by the expected number of clients per round.

**Dropouts and colluders (approach (a) of issue 13).**  A round that completes has at least ``t``
survivors (complete graph: ``t`` must remain at every step; SecAgg+: at least ``t`` of a
survivor's share holders survived).  Up to ``c`` of them may be the server's accomplices, who know
their own shares and can subtract them; the other ``survivors − c >= t − c`` add noise of
variance ``(survivors − c) · μ/(t − c) >= μ``: at least the variance central DP-FedAvg adds at the
same noise multiplier ``z``.  The accountant uses exactly that honest variance with the
*realised* survivor count of every round (:class:`Release`).  Sizing each share for all ``m``
sampled clients instead (``μ/m``) would release only ``survivors/m · μ`` when clients drop; the
benchmark reports the ε that would have given.  The price: without dropouts a round carries
``m/(t − c)`` times the target variance, and with the default ``c = t − 1`` (the most the
threshold tolerates) every client adds the whole ``μ``, which is local DP's noise; state the
colluders you assume with ``secagg.max_colluders``.  (The Dordis add-then-remove scheme, which
releases exactly ``μ``, is not implemented: it needs the noise seeds secret-shared inside the
protocol.)

**Neighbouring and accounting.**  The adversary is the server, which runs the client sampling and
sees who takes part in every protocol run: participation is public, and amplification by
subsampling (which needs a secret sample) does not apply, under Poisson or fixed-size sampling
alike.  The guarantee is for replacing all of one user's data: given who takes part, that moves
the sum of rounded vectors by at most ``2·Δ2`` in L2 and ``2·Δ1`` in L1, ``Δ1 = min(sqrt(d)·Δ2,
Δ2²)`` (an integer vector's L1 norm is at most its squared L2 norm), which is the substitution
multiplier 2 of central DP (:func:`~securefl.privacy.central.sensitivity_multiplier`).  Each round
that completes is the Skellam mechanism with those sensitivities and the realised variance
(:mod:`securefl.privacy.skellam`); RDP composes over rounds and is converted to (ε, δ).  A round
that aborts releases nothing, and whether it aborts depends on dropouts and participation only,
not on any user's data: it is counted, at zero cost.  Dropouts may be combined with either
sampling scheme (unlike central DP's Poisson case, where the server's output reveals the abort).

**Wrap-around.**  The scale ``s`` is the largest for which the sum of the most clients a round can
have, with the most noise a round can carry, wraps the ``2^bits`` ring with probability at most
``WRAP_PROBABILITY`` per round: each rotated coordinate of the clients' sum is sub-Gaussian with
variance proxy ``(n·s·c)²/d`` (Hoeffding over the random signs), the rounding adds at most ``n``,
and the Skellam noise obeys Bernstein's inequality; a union bound over the ``d`` coordinates
(:func:`choose_scale`).  The probability is over the rotation signs, for updates chosen
independently of them.  The signs are public (they derive from the run's seed in ``config.json``),
so clients who collude can align their updates with a round's signs and make its sum wrap: that
corrupts the model update of that round, not the privacy of anyone's data (every honest client's
norm bound and noise share are enforced on its own side, the ring sum is private whether or not it
wrapped, and decoding it is post-processing).

**Numeric ceilings.**  The scale is also capped (:data:`MAX_SQUARED_NORM`,
:data:`MAX_TARGET_VARIANCE`) so that the rounded norm bound ``Δ2²`` is below ``2^52`` and each
Poisson mean of a noise share at most ``2^43``, far below numpy's limit (about ``2^63``).  Wide
rings (from about 27 bits at ``z = 1``, so the default 32 too) or small noise multipliers would
otherwise push ``s`` to where an int64 norm check wraps or the sampler refuses its mean.  The
cap costs nothing measurable: ε depends on ``s`` only through the rounding's inflation
``Δ2/(s·c)`` and the Skellam correction term, both of which shrink as ``s`` grows and are already
about 0.05% and ``3·10^-5`` in ε at 16 bits (scale 3578; ``docs/benchmarks.md``), while the cap
allows ``s·c`` up to about ``2^26`` (or noise of standard deviation ``2^22`` per share): the
inflation at the cap is below ``10^-5`` for ``z <= 10``, and ε within ``10^-4`` of a 20-bit
ring's (``tests/privacy/test_distributed.py``).

**Randomness.**  The rounding and the noise of each client come from a numpy generator seeded by
the operating system (:mod:`secrets`) for that client and round and never stored: a seed in
``config.json`` would let the server subtract the noise.  The rotation signs are public (derived
from the run's seed and the round).  numpy's Poisson sampler is not hardened against
floating-point attacks on the noise.  Compared with central DP at the same settings, the price is
the rounding (``Δ2 / (s·c)`` > 1 in the sensitivity), the Skellam correction term, the noise of
``survivors/t`` threshold-sized shares, and no subsampling amplification.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.config import SecAggConfig
from securefl.errors import ConfigError, RoundAbortedError
from securefl.fl.record import json_float
from securefl.fl.secure_channel import (
    SecureAggregationChannel,
    SecureAggregationClient,
    SecureAggregationRound,
    aggregate_securely,
    simulated_dropouts,
)
from securefl.fl.turns import NO_FAULTS, Faults
from securefl.fl.types import Aggregate, Contribution
from securefl.privacy.central import DPFedAvgServerUpdate, sensitivity_multiplier
from securefl.privacy.skellam import skellam_epsilon
from securefl.protocols.secagg import SecAggParams

log = logging.getLogger(__name__)

ROUNDING_BETA = math.exp(-0.5)
"""``β`` of conditional rounding: a draw is redrawn with probability at most ``β`` (TFF's choice)."""

WRAP_PROBABILITY = 1e-9
"""Largest probability that one round's sum wraps the ring (union bound, :func:`choose_scale`)."""

MAX_ROUNDING_DRAWS = 1000
"""Conditional rounding gives up after this many draws (probability below ``β^1000``)."""

MAX_SQUARED_NORM = 2**52
"""Ceiling on ``Δ2²`` (scaled units) that :func:`choose_scale` keeps: below ``2^53``, so the bound
is an exact float64 and every rounded coordinate is below ``2^27`` in magnitude."""

MAX_TARGET_VARIANCE = 2**44
"""Ceiling on the target variance ``μ = (z·s·c)²`` (scaled units) that :func:`choose_scale` keeps:
no client's share exceeds ``μ``, so each of its two Poisson means is at most ``2^43``, far below
numpy's limit (about ``2^63``) and where float64 still resolves every integer."""


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised Walsh-Hadamard transform ``H·x`` of a vector whose length is a power of
    two (Sylvester's ``H``: symmetric, ``H·H = d·I``), in ``O(d log d)``."""
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(f"length {d} is not a power of two")
    y, h = x, 1
    while h < d:
        pairs = y.reshape(d // (2 * h), 2, h)
        y = torch.stack((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), dim=1)
        h *= 2
    return y.reshape(d)


def padded_length(dim: int) -> int:
    """The next power of two at or above ``dim``."""
    return 1 << max(0, (int(dim) - 1).bit_length())


class RandomizedHadamard:
    """``x -> H·D·x / sqrt(d)`` with public random signs ``D``: an orthogonal rotation of ``R^dim``
    zero-padded to ``R^d``, ``d`` the next power of two."""

    def __init__(self, dim: int, *, seed: Sequence[int]) -> None:
        self.dim = int(dim)
        self.padded = padded_length(self.dim)
        signs = np.random.default_rng(list(seed)).integers(0, 2, self.padded) * 2 - 1
        self.signs = torch.from_numpy(signs.astype(np.float64))

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        padded = torch.zeros(self.padded, dtype=torch.float64)
        padded[: self.dim] = x.to(torch.float64)
        return hadamard(self.signs * padded) / math.sqrt(self.padded)

    def unrotate(self, y: torch.Tensor) -> torch.Tensor:
        return (self.signs * hadamard(y.to(torch.float64)) / math.sqrt(self.padded))[: self.dim]


def rounded_l2_bound(scaled_clip: float, dim: int, beta: float = ROUNDING_BETA) -> float:
    """``Δ2``: the L2 norm conditional rounding lets through for inputs of norm ``scaled_clip``
    in ``dim`` coordinates (Kairouz et al. 2021, section 4.1)."""
    deterministic = (scaled_clip + math.sqrt(dim)) ** 2
    conditional = (
        scaled_clip**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (scaled_clip + math.sqrt(dim) / 2)
    )
    return math.sqrt(min(deterministic, conditional))


def squared_norm(v: np.ndarray) -> int:
    """``||v||²`` of an int64 vector, exactly, as a Python int (``np.dot`` on int64 wraps silently).

    Each coordinate is at most ``p = max |v_i| < 2^31`` in magnitude, so a block of
    ``floor((2^63 − 1)/p²)`` squares sums within int64; Python adds the blocks' sums exactly.
    """
    peak = max(int(v.max(initial=0)), -int(v.min(initial=0)))  # np.abs(-2^63) is negative
    if peak >= 2**31:
        raise ValueError(f"coordinate of magnitude {peak} >= 2^31: its square would not fit int64")
    block = (2**63 - 1) // max(peak, 1) ** 2
    return sum(int(np.dot(v[i : i + block], v[i : i + block])) for i in range(0, v.size, block))


def conditional_round(x: np.ndarray, *, l2_bound: float, rng: np.random.Generator) -> np.ndarray:
    """Round every coordinate down or up with the probabilities that keep it unbiased, redrawn
    until the rounded vector's L2 norm is at most ``l2_bound`` (int64).

    The norm is compared exactly (:func:`squared_norm`; Python compares an int with a float
    exactly).  ``l2_bound²`` must be at most :data:`MAX_SQUARED_NORM`.  A coordinate beyond
    ``l2_bound + 1`` in magnitude (or not finite) cannot round into the bound: refused at once,
    before any cast to int64 could overflow.
    """
    if not 0 <= l2_bound**2 <= MAX_SQUARED_NORM:
        raise ValueError(f"norm bound {l2_bound:.4g}: its square must be at most 2^52 (choose_scale caps it)")
    if not bool(np.all(np.abs(x) <= l2_bound + 1)):  # also false for NaN
        raise ValueError(
            f"a coordinate exceeds the norm bound {l2_bound:.4g} (or is not finite): the input "
            "exceeds the clip norm it was scaled for"
        )
    floor = np.floor(x)
    fraction = x - floor
    for _ in range(MAX_ROUNDING_DRAWS):
        rounded: np.ndarray = (floor + (rng.random(x.shape) < fraction)).astype(np.int64)
        if squared_norm(rounded) <= l2_bound**2:
            return rounded
    raise ValueError(
        f"conditional rounding found no draw within norm {l2_bound:.4g} in {MAX_ROUNDING_DRAWS} "
        "draws: the input exceeds the clip norm it was scaled for"
    )


def skellam_noise(shape: int, variance: float, rng: np.random.Generator) -> np.ndarray:
    """Symmetric Skellam noise ``Poisson(v/2) − Poisson(v/2)`` of variance ``v`` (int64)."""
    if variance <= 0:
        return np.zeros(shape, dtype=np.int64)
    positive = rng.poisson(variance / 2, shape).astype(np.int64)
    return positive - rng.poisson(variance / 2, shape).astype(np.int64)


def wrap_bound(
    scale: float, *, clip_norm: float, dim: int, clients: int, noise_variance: float, failure: float
) -> float:
    """A bound that every coordinate of the ring sum stays within, except with probability at most
    ``failure`` in all: sub-Gaussian signal (random signs), rounding of at most 1 per client, and
    Skellam noise of variance ``noise_variance`` (Bernstein), union over ``dim`` coordinates."""
    log_term = math.log(4 * dim / failure)  # each tail gets failure / (2·dim), two-sided
    signal = scale * clients * clip_norm * math.sqrt(2 * log_term / dim)
    noise = log_term / 3 + math.sqrt(log_term**2 / 9 + 2 * noise_variance * log_term)
    return signal + clients + noise


def choose_scale(
    *, bits: int, clip_norm: float, dim: int, clients: int, noise_multiplier: float, noise_ratio: float
) -> float:
    """The largest scale ``s`` whose ring sum wraps with probability at most ``WRAP_PROBABILITY``:
    ``clients`` the most a round can sum, ``noise_ratio`` the most noise a round can carry in
    units of the target ``(z·s·c)²`` (largest ``survivors / t``).

    Capped where ``Δ2² > MAX_SQUARED_NORM`` or ``(z·s·c)² > MAX_TARGET_VARIANCE`` (exact norm
    checks, Poisson means far from numpy's limit; the module docstring says why that costs
    nothing).  Every condition grows with ``s``, so bisection finds the largest ``s`` meeting all.
    """
    limit = 2 ** (bits - 1) - 1
    if rounded_l2_bound(0.0, dim) ** 2 > MAX_SQUARED_NORM:
        raise ConfigError(
            f"a model of {dim} (padded) parameters cannot be encoded for distributed DP: rounding "
            "alone could give a squared norm above 2^52"
        )

    def fits(scaled_clip: float) -> bool:  # scaled_clip = s·c
        deviation = noise_multiplier * scaled_clip  # z·s·c: inf rather than an overflow when squared
        target = deviation * deviation
        return (
            rounded_l2_bound(scaled_clip, dim) ** 2 <= MAX_SQUARED_NORM
            and target <= MAX_TARGET_VARIANCE
            and wrap_bound(
                scaled_clip,
                clip_norm=1.0,
                dim=dim,
                clients=clients,
                noise_variance=noise_ratio * target,
                failure=WRAP_PROBABILITY,
            )
            <= limit
        )

    if not fits(0.0):  # the caps hold at 0 (the dimension was checked above): the ring is too small
        raise ConfigError(
            f"a {bits}-bit ring cannot hold the sum of {clients} clients' rounded updates: raise "
            "`secagg.bits`"
        )
    low, high = 0.0, float(2**bits)
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    if not low > 0:
        raise ConfigError(
            f"noise multiplier {noise_multiplier} is too large to encode: its noise would not fit "
            "the ring (or exceed 2^44 in variance) at any scale; lower `central_dp.noise_multiplier`"
        )
    return low / clip_norm


@dataclass(frozen=True)
class Release:
    """What one round's sum carried, per coordinate in parameter units (the server's view)."""

    released: bool
    """Whether the round released a sum (an aborted or empty round releases nothing, at no cost;
    a released round whose honest noise is 0 has no finite guarantee: ε = inf)."""
    survivors: int
    colluders: int
    """``c``: survivors that may collude with the server (the protocol's collusion bound)."""
    variance: float
    """The Skellam noise in the sum: ``survivors · μ/(t − c)``."""
    honest_variance: float
    """The part colluders cannot subtract, which the accountant uses: ``(survivors − c)·μ/(t − c)``."""


NOTHING_RELEASED = Release(released=False, survivors=0, colluders=0, variance=0.0, honest_variance=0.0)
"""The release of a round that aborted or was never aggregated."""


class DistributedDPChannel:
    """Secure aggregation of clipped updates that each client noises with its Skellam share.

    Implements :class:`~securefl.fl.types.SignedAggregation` (an
    :class:`~securefl.fl.types.Aggregation` whose client halves sign); ``secure`` runs the protocol.
    After each call :meth:`take_release` says what the round's sum carried (survivors, noise
    variance), for :class:`DistributedDPServerUpdate` to account.
    """

    def __init__(
        self,
        *,
        secure: SecureAggregationChannel,
        num_params: int,
        clip_norm: float,
        noise_multiplier: float,
        delta: float,
        max_clients: int,
        seed: int,
    ) -> None:
        if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
            raise ConfigError(
                f"noise multiplier {noise_multiplier} is not a positive finite number: distributed "
                "DP needs noise, use a positive `central_dp.noise_multiplier`"
            )
        self.secure = secure
        self.num_params = int(num_params)
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.seed = seed
        self.padded = padded_length(num_params)
        sizes = range(secure.smallest_round(max_clients), max_clients + 1)
        rounds = [secure.probe_params(m) for m in sizes]  # every size runs (smallest_round)
        self.noise_ratio = max(p.num_clients / self.honest_floor(p) for p in rounds if p is not None)
        self.scale = choose_scale(
            bits=secure.config.bits,
            clip_norm=self.clip_norm,
            dim=self.padded,
            clients=max_clients,
            noise_multiplier=self.noise_multiplier,
            noise_ratio=self.noise_ratio,
        )
        scaled_clip = self.scale * self.clip_norm
        self.l2_bound = rounded_l2_bound(scaled_clip, self.padded)
        self.l1_bound = min(math.sqrt(self.padded) * self.l2_bound, self.l2_bound**2)
        self.target_variance = (self.noise_multiplier * scaled_clip) ** 2
        multiplier = sensitivity_multiplier(
            client_sampling="fixed", min_released_clients=1, sample_known=True
        )
        self.sensitivity = (multiplier * self.l1_bound, multiplier * self.l2_bound)
        self.rounding_inflation = self.l2_bound / scaled_clip
        if self.rounding_inflation > 1.1:
            log.warning(
                "with %d bits, rounding inflates the sensitivity by %.0f%%: raise `secagg.bits`",
                secure.config.bits,
                100 * (self.rounding_inflation - 1),
            )
        self._release: Release | None = None  # of the last call

    def rotation(self, round_index: int) -> RandomizedHadamard:
        """The round's public rotation (its signs derive from the run's seed and the round)."""
        return RandomizedHadamard(self.num_params, seed=[self.seed, round_index, 0x4AD])

    @staticmethod
    def honest_floor(params: SecAggParams) -> int:
        """``t − c``: the fewest honest survivors of a round that completes, ``t`` the threshold
        and ``c`` the clients that may collude with the server (they know their own shares)."""
        floor = params.threshold - params.colluders_tolerated
        if floor < 1:
            raise ConfigError(
                f"with threshold {params.threshold} and {params.colluders_tolerated} colluding "
                "clients a round may complete with no honest survivor, whose noise would protect "
                "the sum: lower `secagg.max_colluders` or raise `secagg.threshold`"
            )
        return floor

    def share_variance(self, params: SecAggParams) -> float:
        """Each client's Skellam variance: ``μ/(t − c)``, so that the honest ones among any ``t``
        survivors give ``μ`` even when ``c`` colluders subtract their own shares."""
        return self.target_variance / self.honest_floor(params)

    def encode(
        self, contribution: Contribution, *, rotation: RandomizedHadamard, share_variance: float
    ) -> np.ndarray:
        """Client side: rotate, scale, round conditionally, add the Skellam share, reduce mod
        ``2^bits``.  The rounding and noise generator is seeded by the OS and dropped after."""
        if contribution.weight != 1.0:
            raise ValueError("distributed DP needs each client's update clipped with weight 1 (ClipUpdate)")
        rng = np.random.default_rng(secrets.randbits(128))
        rotated = rotation.rotate(contribution.weighted_delta).numpy() * self.scale
        rounded = conditional_round(rotated, l2_bound=self.l2_bound, rng=rng)
        noised = rounded + skellam_noise(rotated.shape[0], share_variance, rng)
        encoded: np.ndarray = np.mod(noised, 2**self.secure.config.bits).astype(np.uint64)
        return encoded

    def decode(self, total: np.ndarray, *, rotation: RandomizedHadamard) -> torch.Tensor:
        """Server side: the ring sum as signed integers, unscaled and un-rotated."""
        modulus = 2**self.secure.config.bits
        signed = (total.astype(np.int64) + modulus // 2) % modulus - modulus // 2
        return rotation.unrotate(torch.from_numpy(signed.astype(np.float64)) / self.scale)

    # ---- the noised-integer encoding (RingEncoding) --------------------------------------

    @property
    def config(self) -> SecAggConfig:
        return self.secure.config

    @property
    def vector_length(self) -> int:
        """The rotated update, zero-padded to a power of two."""
        return self.padded

    @property
    def fewest_clients(self) -> int:
        return self.secure.fewest_clients

    @property
    def round_sizes(self) -> frozenset[int]:
        """The round sizes of the secure channel's configuration."""
        return self.secure.round_sizes

    def round_parameters(self, num_clients: int) -> SecAggParams:
        """The protocol parameters of a round of ``num_clients`` (inputs are ring elements
        already: no fixed-point codec); :class:`RoundAbortedError` when it cannot run."""
        if num_clients < 2:
            raise RoundAbortedError(
                f"{num_clients} client(s) sampled: secure aggregation needs at least 2",
                details={"survivors": 0},
            )
        try:
            return self.secure.params_for(num_clients, None)
        except ConfigError as error:
            raise RoundAbortedError(
                f"{num_clients} clients cannot run this protocol: {error}", details={"survivors": 0}
            ) from None

    def encode_input(
        self, contribution: Contribution, *, params: SecAggParams, round_index: int
    ) -> np.ndarray:
        """Client side: the clipped update rotated, rounded and noised with this client's share."""
        return self.encode(
            contribution, rotation=self.rotation(round_index), share_variance=self.share_variance(params)
        )

    def decode_sum(
        self, total: np.ndarray, *, survivors: tuple[int, ...], params: SecAggParams, round_index: int
    ) -> Aggregate:
        """Server side: the noised sum in parameter units, and what it carried (:meth:`take_release`)."""
        share = self.share_variance(params)
        count = len(survivors)
        self._release = Release(
            released=True,
            survivors=count,
            colluders=params.colluders_tolerated,
            variance=count * share / self.scale**2,
            honest_variance=(count - params.colluders_tolerated) * share / self.scale**2,
        )
        return Aggregate(
            weighted_delta_sum=self.decode(total, rotation=self.rotation(round_index)).to(torch.float32),
            weight_sum=float(count),
            survivors=survivors,
            train_loss_sum=0.0,
            details={"released_noise_variance": self._release.variance},
        )

    # ---- the two halves (the secure channel's, with this encoding) ------------------------

    def open_round(
        self, *, round_index: int, participants: Sequence[int], context: bytes
    ) -> SecureAggregationRound:
        self._release = None  # an aborted round releases nothing
        return SecureAggregationRound(
            self,
            round_index=round_index,
            participants=participants,
            context=context,
            verify_keys=self.secure.verify_keys,
        )

    def client(
        self, client_id: int, *, signing_key: Ed25519PrivateKey | None = None
    ) -> SecureAggregationClient:
        return SecureAggregationClient(
            self, client_id=client_id, signing_key=signing_key, verify_keys=self.secure.verify_keys
        )

    def simulated_dropouts(self, round_index: int, participants: Sequence[int]) -> Faults:
        if self.config.dropout_rate == 0:
            return NO_FAULTS
        return simulated_dropouts(
            self, round_index=round_index, participants=participants, seed=self.secure.seed
        )

    def with_verify_keys(self, verify_keys: Mapping[int, Ed25519PublicKey]) -> DistributedDPChannel:
        other = copy.copy(self)
        other.secure = self.secure.with_verify_keys(verify_keys)
        return other

    def aggregate(
        self,
        contributions: list[Contribution],
        *,
        round_index: int,
        contexts: Mapping[int, bytes] | None = None,
    ) -> Aggregate:
        """Both halves in one process (as :meth:`SecureAggregationChannel.aggregate`)."""
        self._release = None
        return aggregate_securely(self, contributions, round_index=round_index, contexts=contexts)

    def take_release(self) -> Release:
        """What the round aggregated since the last call released (nothing: aborted, or never
        aggregated)."""
        release, self._release = self._release or NOTHING_RELEASED, None
        return release

    def epsilon_of(self, honest_variances: Sequence[float]) -> float:
        """User-level ε after released rounds whose honest survivors' noise had these variances
        per coordinate, in parameter units; a released round with no honest noise (variance
        <= 0) gives ε = inf.  Leave out rounds that released nothing (:attr:`Release.released`)."""
        l1, l2 = self.sensitivity
        scaled = [v * self.scale**2 for v in honest_variances]
        return skellam_epsilon(scaled, l1=l1, l2=l2, delta=self.delta)


class DistributedDPServerUpdate:
    """The server side of distributed DP: ``global + sum / (q·N)`` (DP-FedAvg's fixed
    denominator, McMahan et al. 2018) with no noise of its own, and the accountant of what each
    round's sum carried.

    Implements :class:`~securefl.fl.types.ServerUpdate` and
    :class:`~securefl.fl.types.PrivacyAccounting`.  Every round goes through it, an empty or
    aborted one too, so every round is counted.

    Beside the realised ε it reports two figures at the same noise, for a like-for-like
    comparison: this mechanism's ε had every released round carried exactly the target variance
    ``μ = (z·c)²`` of honest noise (``user_epsilon_at_target_noise``; the realised ε is at most
    that, since every completed round carries at least ``μ``), and ``central_reference``'s, central
    DP-FedAvg's accountant at the same settings, whose trusted server adds exactly ``μ`` every round
    (``central_epsilon_at_target_noise``, reported for comparison only).  The realised ε is not the
    one to set against central DP's: with more than ``t`` survivors a round carries more noise.
    """

    def __init__(
        self,
        *,
        channel: DistributedDPChannel,
        expected_clients: float,
        central_reference: DPFedAvgServerUpdate | None = None,
    ) -> None:
        if not expected_clients > 0:
            raise ConfigError(f"expected clients per round {expected_clients} <= 0")
        self.channel = channel
        self.expected_clients = float(expected_clients)
        self.central_reference = central_reference
        self._releases: list[Release] = []
        self._epsilons: list[float] = []

    def __call__(self, global_params: torch.Tensor, aggregate: Aggregate) -> torch.Tensor:
        self._releases.append(self.channel.take_release())
        released = [r.honest_variance for r in self._releases if r.released]
        self._epsilons.append(self.channel.epsilon_of(released))
        return global_params + aggregate.weighted_delta_sum / self.expected_clients

    def _epsilon_at_target_noise(self) -> float:
        """This mechanism's ε had every released round carried exactly ``μ`` of honest noise."""
        released = sum(r.released for r in self._releases)
        return self.channel.epsilon_of([self.channel.target_variance / self.channel.scale**2] * released)

    def _central_epsilon(self) -> float | None:
        if self.central_reference is None:
            return None
        return self.central_reference.epsilon_after(len(self._releases))

    def round_metrics(self) -> dict[str, float]:
        metrics = {
            "user_epsilon": self._epsilons[-1] if self._epsilons else 0.0,
            "user_epsilon_at_target_noise": self._epsilon_at_target_noise(),
            "user_delta": self.channel.delta,
            "released_noise_variance": self._releases[-1].variance if self._releases else 0.0,
            "honest_noise_variance": self._releases[-1].honest_variance if self._releases else 0.0,
        }
        central = self._central_epsilon()
        if central is not None:
            metrics["central_epsilon_at_target_noise"] = central
        return metrics

    def ledger(self) -> dict[str, Any]:
        scale2 = self.channel.scale**2
        epsilon = self._epsilons[-1] if self._epsilons else 0.0
        central = self._central_epsilon()
        return {
            "user_level": {
                "mechanism": "distributed Skellam (Agarwal, Kairouz & Liu 2021) under secure "
                "aggregation: clipped, Hadamard-rotated, conditionally rounded updates (Kairouz, "
                "Liu & Steinke 2021), each client adds its noise share; the server adds none",
                "neighbouring": "replace all of one user's data; who takes part in each round is "
                "public (the server samples and sees the protocol's participants)",
                "public": [
                    "who took part in each round and who survived (the server runs the protocol)",
                    "the rotation signs (from the run's seed and the round), the scale, the bits",
                ],
                "accounting": "RDP of the Skellam mechanism with L1 and L2 sensitivity of the "
                "rounded rotated vectors, multiplier 2 (substitution), no subsampling amplification "
                "(the sample is known to the server), composed over every round at its realised "
                "variance; an aborted round releases nothing and costs nothing",
                "dropouts": "approach (a): each client adds variance mu/(t-c), so the honest ones "
                "among any t survivors give the target mu even if c colluders subtract their "
                "shares; accounted per round: (survivors-c)*mu/(t-c)",
                "sensitivity_multiplier": 2,
                "sensitivity_l1": self.channel.sensitivity[0] / self.channel.scale,
                "sensitivity_l2": self.channel.sensitivity[1] / self.channel.scale,
                "rounding_inflation": self.channel.rounding_inflation,
                "accountant": "rdp (Skellam, Theorem 3.5)",
                "delta": self.channel.delta,
                "noise_multiplier": self.channel.noise_multiplier,
                "clip_norm": self.channel.clip_norm,
                "bits": self.channel.secure.config.bits,
                "scale": self.channel.scale,
                "padded_dimension": self.channel.padded,
                "wrap_probability_per_round": WRAP_PROBABILITY,
                "target_noise_variance": self.channel.target_variance / scale2,
                "rounds": len(self._releases),
                "survivors_each_round": [r.survivors for r in self._releases],
                "released_noise_variance_each_round": [r.variance for r in self._releases],
                "honest_noise_variance_each_round": [r.honest_variance for r in self._releases],
                "colluders_each_round": [r.colluders for r in self._releases],
                "epsilon": json_float(epsilon),
                "epsilon_after_each_round": [json_float(e) for e in self._epsilons],
                "released_each_round": [r.released for r in self._releases],
                "epsilon_at_target_noise": json_float(self._epsilon_at_target_noise()),
                "central_dp_epsilon_at_target_noise": None if central is None else json_float(central),
            }
        }


__all__ = [
    "MAX_SQUARED_NORM",
    "MAX_TARGET_VARIANCE",
    "NOTHING_RELEASED",
    "DistributedDPChannel",
    "DistributedDPServerUpdate",
    "Release",
    "RandomizedHadamard",
    "choose_scale",
    "conditional_round",
    "hadamard",
    "padded_length",
    "rounded_l2_bound",
    "skellam_noise",
    "squared_norm",
    "wrap_bound",
]
