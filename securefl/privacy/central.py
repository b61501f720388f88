"""User-level differential privacy at the server: DP-FedAvg (McMahan, Ramage, Talwar, Zhang,
"Learning Differentially Private Recurrent Language Models", ICLR 2018).

Two plug points:

- :class:`ClipUpdate` runs on the client: it scales the whole update to L2 norm at most
  ``clip_norm`` and sends it with weight 1.  Clipping happens before the update leaves the client,
  so it composes with secure aggregation (the server only ever sees the sum).
- :class:`DPFedAvgServerUpdate` runs on the server: it adds Gaussian noise ``N(0, (z·clip)²)`` to the
  *sum* of clipped updates and divides by the *expected* number of clients per round ``q·N`` (the
  paper's fixed-denominator estimator ``f̃_f``), so the average carries noise of std
  ``z·clip / (q·N)``.  Adding or removing one user changes the sum by at most ``clip``: each round
  is a sampled Gaussian mechanism with noise multiplier ``z``.

Accounting (user-level, add/remove-one-user, every user the same ε; ε grows with every round
whether or not a given user was sampled, which is what subsampling amplification needs):

- ``client_sampling="poisson"`` (each client independently with probability ``q = clients_per_round
  / clients``, the sampling of McMahan et al. 2018): exactly the Poisson-subsampled Gaussian
  mechanism Opacus' accountants analyse, ``(z, q)`` per round (``(z/m0, q)`` when secure
  aggregation cannot release a sum of fewer than ``m0`` clients: below).  Reported as
  ``user_epsilon``.
- ``client_sampling="fixed"`` (exactly ``m`` of ``N`` without replacement): Opacus' accountants do
  not analyse this sampling, so we do not pretend they do.  We report a bound that holds for it:
  a user's presence changes the sampled sum by at most ``2·clip`` under the coupling that swaps it
  for another user (Balle, Barthe, Gaboardi, "Privacy Amplification by Subsampling", NeurIPS 2018),
  and the mixture over samples is no less private than its worst component (joint quasi-convexity
  of Rényi divergence), so each round is at least as private as an *unsampled* Gaussian mechanism
  with noise multiplier ``z/2`` (``q = 1`` in the accountant).  This forgoes amplification and is
  loose; the Poisson figure at ``q = m/N`` is written to the ledger as ``epsilon_if_poisson`` for
  comparison only.  Prefer Poisson sampling with central DP.

Every round must go through the server update, including a round where no client was sampled,
every sampled client dropped out, or secure aggregation aborted: its output is the noise alone,
and it is counted.  Skipping it would reveal that the round was empty and leave it unaccounted.

**Rounds that release noise only, and sensitivity** (``min_released_clients``).  Secure
aggregation never releases the sum of fewer than ``m0`` clients (``m0 >= 2``: one client's "sum"
is its update; a threshold count, or SecAgg+ neighbours, can raise it): a round that samples fewer
aborts, and the server update sees an empty aggregate.  Under Poisson sampling without dropouts
the output of one round, given the set ``S`` of *other* users sampled, is

    M(S) = noise                      if |S| <  m0
    M(S) = Σ_{i∈S} x_i + noise        if |S| >= m0,   noise ~ N(0, (z·clip)²·I).

Adding user ``u`` (sampled with probability ``q``, independently of ``S``) turns ``M(S)`` into
``(1-q)·M(S) + q·M(S ∪ {u})``.  The two Gaussians ``M(S)`` and ``M(S ∪ {u})`` differ in mean by
``x_u`` (norm <= clip) when ``|S| >= m0``, by the sum of ``m0`` clipped updates (norm <=
``m0·clip``) when ``|S| = m0 - 1``, and not at all below.  So for every ``S`` the pair is a
Poisson-subsampled Gaussian mechanism with sensitivity at most ``m0·clip``, i.e. noise multiplier
at least ``z/m0``, whose privacy profile is the worst at exactly ``z/m0`` (Mironov, Talwar, Zhang
2019).  The released distribution is the mixture of these pairs over ``S`` with the same weights
on both sides (``S`` does not depend on ``u``), and Rényi divergence is jointly quasi-convex and
the hockey-stick divergence jointly convex, so the mixture is no less private than its worst
component: each round is accounted as the Poisson-subsampled Gaussian ``(z/m0, q)``, with the
same composition over rounds.  Without secure aggregation ``m0 = 1`` (an empty round releases
noise alone, one client's update is released as a sum) and this is the ordinary ``(z, q)``.

With dropouts, whether a round aborts depends on how many clients were sampled *and* survived the
threshold, with a sensitivity that grows with the threshold; that combination is refused by
:class:`~securefl.config.RunConfig` (use fixed-size sampling, whose count depends on no user).
Under fixed-size sampling the count is ``m`` whoever is sampled, an abort is caused only by
dropouts that do not depend on any user's data, and an aborted round is an ordinary noise-only
round of the ``z/2`` bound above; ``min_released_clients`` does not change it.

Noise is drawn from a ``torch.Generator`` that :class:`DPFedAvgServerUpdate` seeds from the
operating system (:mod:`secrets`) and never stores (:func:`dp_generator`): a seed in
``config.json`` would let the server subtract the noise, so runs under central DP are not
bit-reproducible.  (Its ``seed`` argument is for tests only.)  The Gaussian sampler is torch's,
not Opacus' ``secure_mode``: it is not hardened against floating-point attacks on the noise.  The
train loss the clients report alongside is *not* covered by this guarantee.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from typing import Any

import torch

from securefl.config import CLIENT_SAMPLING
from securefl.errors import ConfigError, LedgerError
from securefl.fl.record import json_float
from securefl.fl.types import Aggregate, Contribution, Update
from securefl.privacy.ledger import epsilon_spent, validate_accountant

log = logging.getLogger(__name__)

LEDGER_FORMAT = "securefl/dp-fedavg-ledger/1"
"""The ``format`` of :meth:`DPFedAvgServerUpdate.export_ledger`'s JSON; another value is refused."""

CLIP_MARGIN = 1e-6
"""Relative margin of the clip factor, so float32 rounding never lifts a clipped norm above clip."""


def check_clip_norm(clip_norm: float) -> float:
    """``clip_norm`` as a float, or :class:`ConfigError` unless it is positive and finite: the one
    check of DP-FedAvg's clip norm, shared by both sides (:class:`ClipUpdate`,
    :class:`DPFedAvgServerUpdate`)."""
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ConfigError(
            f"clip norm {clip_norm} is not a positive finite number: use a positive `central_dp.clip_norm`"
        )
    return float(clip_norm)


def clip_to_norm(vector: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """``vector`` scaled to L2 norm at most ``clip_norm`` (a copy, unchanged when already inside)."""
    norm = float(vector.detach().double().norm())
    if norm <= clip_norm:
        return vector.clone()
    return vector * (clip_norm / norm * (1 - CLIP_MARGIN))


def sensitivity_multiplier(
    *, client_sampling: str, min_released_clients: int, sample_known: bool = False
) -> int:
    """How far one user can move a round's released sum, in units of the clip norm.

    - the adversary knows who took part (``sample_known``: distributed DP, where the adversary is
      the server that runs the sampling and sees every participant), or fixed-size sampling: 2,
      the substitution of one user's clipped update for another's (module docstring);
    - Poisson sampling with a sample the adversary does not see: ``min_released_clients``, the
      fewest clients whose sum the channel releases (1 for a plain sum; module docstring).
    """
    if sample_known or client_sampling == "fixed":
        return 2
    return min_released_clients


class ClipUpdate:
    """DP-FedAvg's client side: send the update clipped to ``clip_norm``, with weight 1.

    A non-finite update (a diverged client: NaN stays NaN under scaling, inf becomes NaN) has no
    norm to clip, and one such update would make the released sum, hence the model, NaN.  It is
    replaced by zero: a valid contribution of norm 0 <= ``clip_norm`` with weight 1, so the
    sensitivity argument and the fixed denominator are untouched.  The replacement is counted
    here, on the client side (``non_finite_replaced``), and logged; the count is not sent to the
    server or written to the round records, because whether an update diverged depends on the
    client's data and would be released without noise.
    """

    def __init__(self, clip_norm: float) -> None:
        self.clip_norm = check_clip_norm(clip_norm)
        self.non_finite_replaced = 0

    def __call__(self, update: Update) -> Contribution:
        delta = update.delta
        if not bool(torch.isfinite(delta).all()):
            self.non_finite_replaced += 1
            log.warning(
                "client %d's update is not finite (training diverged): it sends a zero update "
                "instead; lower `lr` if this repeats",
                update.client_id,
            )
            delta = torch.zeros_like(delta)
        return Contribution(
            client_id=update.client_id,
            weighted_delta=clip_to_norm(delta, self.clip_norm),
            weight=1.0,
            train_loss=update.train_loss,
        )


class DPFedAvgServerUpdate:
    """DP-FedAvg's server side: noise the sum of clipped updates, divide by the expected count.

    Implements :class:`~securefl.fl.types.ServerUpdate` and
    :class:`~securefl.fl.types.PrivacyAccounting`.  Each call is one round.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clip_norm: float,
        delta: float,
        clients: int,
        clients_per_round: float,
        client_sampling: str = "poisson",
        accountant: str = "rdp",
        min_released_clients: int = 1,
        seed: int | None = None,
    ) -> None:
        """The noise comes from a generator seeded by the operating system and never stored;
        ``seed`` fixes it instead: for tests only, a seed known to the server voids the guarantee.

        ``min_released_clients`` is the fewest sampled clients whose sum the aggregation
        channel releases (a smaller round releases noise only): 1 for a plain sum, the channel's
        ``smallest_round`` under secure aggregation. Under Poisson sampling it multiplies the
        sensitivity (module docstring); the composition root chooses it."""
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise ConfigError(
                f"central noise multiplier {noise_multiplier} is not a finite number >= 0: use "
                "`central_dp.noise_multiplier` 0 or more"
            )
        clip_norm = check_clip_norm(clip_norm)
        if not 0 < clients_per_round <= clients:  # the sample rate q in (0, 1]
            raise ConfigError(
                f"clients per round {clients_per_round} must be in (0, {clients}] (`clients`): "
                "change `clients_per_round`"
            )
        if not 0 < delta < 1 / clients:
            raise ConfigError(
                f"central delta {delta:g} is outside (0, 1/clients = {1 / clients:.3g}): with "
                f"user-level DP δ must be < 1/N (or one user's data may leak outright): set "
                f"`central_dp.delta` in (0, {1 / clients:.3g})"
            )
        if client_sampling not in CLIENT_SAMPLING:
            raise ConfigError(
                f"unknown client sampling {client_sampling!r}: set `central_dp.client_sampling` to "
                f"one of {', '.join(CLIENT_SAMPLING)}"
            )
        if not (isinstance(min_released_clients, int) and min_released_clients >= 1):
            raise ConfigError(
                f"min_released_clients {min_released_clients!r} must be a whole number >= 1: the "
                "fewest clients whose sum a round releases"
            )
        self.noise_multiplier = float(noise_multiplier)
        self.min_released_clients = min_released_clients
        self.clip_norm = clip_norm
        self.delta = float(delta)
        self.clients = int(clients)
        self.expected_clients = float(clients_per_round)
        self.client_sampling = client_sampling
        self.accountant = validate_accountant(accountant)
        if self.accountant == "gdp":
            log.warning(
                "the gdp accountant is an approximation that can underestimate user-level ε for "
                "DP-FedAvg as for DP-SGD (Opacus); use rdp or prv for a guarantee"
            )
        self.generator = dp_generator(seed=seed)
        self.rounds = 0
        self._epsilons: list[float] = []

    @property
    def sample_rate(self) -> float:
        """``q``: the probability that a given client is sampled in a round."""
        return self.expected_clients / self.clients

    @property
    def sensitivity_multiplier(self) -> int:
        """L2 sensitivity of one round's sum in units of ``clip`` under the accounted sampling:
        ``min_released_clients`` under Poisson sampling, 2 (substitution) under fixed-size."""
        return sensitivity_multiplier(
            client_sampling=self.client_sampling, min_released_clients=self.min_released_clients
        )

    @property
    def noise_std(self) -> float:
        """Std of the noise on the averaged update: ``z · clip / (q·N)``."""
        return self.noise_multiplier * self.clip_norm / self.expected_clients

    def __call__(self, global_params: torch.Tensor, aggregate: Aggregate) -> torch.Tensor:
        survivors = len(aggregate.survivors)
        if abs(aggregate.weight_sum - survivors) > 1e-3 * max(1, survivors):
            raise ValueError(
                f"DP-FedAvg needs each client to send its clipped update with weight 1 (ClipUpdate); "
                f"the aggregate has weight {aggregate.weight_sum} for {survivors} clients"
            )
        total = aggregate.weighted_delta_sum
        noise = (
            torch.normal(
                mean=0.0,
                std=self.noise_multiplier * self.clip_norm,
                size=total.shape,
                generator=self.generator,
                dtype=total.dtype,
            )
            if self.noise_multiplier > 0
            else torch.zeros_like(total)
        )
        self.rounds += 1
        self._epsilons.append(self.epsilon_after(self.rounds))
        return global_params + (total + noise) / self.expected_clients

    def epsilon_after(self, rounds: int) -> float:
        """User-level ε after ``rounds`` rounds (see the module docstring for the sampling cases)."""
        if self.client_sampling == "poisson":
            return self._poisson_epsilon(rounds)
        if rounds == 0:
            return 0.0
        return epsilon_spent(
            ((self.noise_multiplier / 2, 1.0, rounds),), accountant=self.accountant, delta=self.delta
        )

    def _poisson_epsilon(self, rounds: int) -> float:
        if rounds == 0:
            return 0.0
        noise = self.noise_multiplier / self.min_released_clients
        return epsilon_spent(
            ((noise, self.sample_rate, rounds),), accountant=self.accountant, delta=self.delta
        )

    # ---- the ledger as bytes (a server that stops and resumes) ----------------------------------

    def export_ledger(self) -> bytes:
        """What this accountant has counted, as canonical JSON bytes (:data:`LEDGER_FORMAT`): the
        rounds, with the settings they are accounted under.  ε is not written: it is a function of
        the rounds, recomputed by :meth:`import_ledger`.  A deployed server keeps it in its
        checkpoint (:mod:`securefl.deploy.checkpoint`); nothing in it depends on any client."""
        document = {"format": LEDGER_FORMAT, **self._settings(), "rounds": self.rounds}
        return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    def import_ledger(self, data: bytes) -> None:
        """Take over the rounds :meth:`export_ledger` wrote, so that every later round adds to
        them: a server restarted from a checkpoint neither counts a round twice nor forgets one.

        Raises :class:`~securefl.errors.LedgerError`, keeping the count it had, for bytes that are
        not such a ledger, one kept under other settings (noise, clip, δ, clients, sampling,
        accountant, smallest released round), or one with fewer rounds than already counted (a
        privacy ledger never goes backwards)."""
        try:
            document = json.loads(data.decode("utf-8"))
        except (AttributeError, UnicodeDecodeError, ValueError) as error:
            raise LedgerError(
                f"the DP-FedAvg ledger is not JSON bytes ({error}): import what export_ledger wrote"
            ) from None
        expected = {"format": LEDGER_FORMAT, **self._settings()}
        if not isinstance(document, dict) or set(document) != {*expected, "rounds"}:
            raise LedgerError(
                f"the DP-FedAvg ledger does not hold the fields {sorted({*expected, 'rounds'})}"
            )
        kept_under = {key: document[key] for key in expected}
        if kept_under != expected:
            differ = ", ".join(
                f"{k} {kept_under[k]!r} (here {expected[k]!r})"
                for k in expected
                if kept_under[k] != expected[k]
            )
            raise LedgerError(
                f"the DP-FedAvg ledger was kept under other settings: {differ}; import a ledger of "
                "the same user-level DP settings"
            )
        rounds = document["rounds"]
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < self.rounds:
            raise LedgerError(
                f"the DP-FedAvg ledger counts {rounds!r} rounds, this accountant {self.rounds}: a "
                "privacy ledger never goes backwards"
            )
        self._epsilons = [self.epsilon_after(r) for r in range(1, rounds + 1)]
        self.rounds = rounds

    def _settings(self) -> dict[str, Any]:
        """The settings that decide what a round costs."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "delta": self.delta,
            "clients": self.clients,
            "expected_clients": self.expected_clients,
            "client_sampling": self.client_sampling,
            "accountant": self.accountant,
            "min_released_clients": self.min_released_clients,
        }

    def round_metrics(self) -> dict[str, float]:
        return {
            "user_epsilon": self._epsilons[-1] if self._epsilons else 0.0,
            "user_delta": self.delta,
            "central_noise_std": self.noise_std,
        }

    def ledger(self) -> dict[str, Any]:
        epsilon = self._epsilons[-1] if self._epsilons else 0.0
        fixed = self.client_sampling == "fixed"
        return {
            "user_level": {
                "mechanism": "DP-FedAvg (McMahan et al. 2018): clipped updates, Gaussian noise on "
                "the sum, fixed denominator",
                "client_sampling": self.client_sampling,
                "neighbouring": "add/remove one user (all of one client's data)",
                "public": [
                    "the number of clients and the expected clients per round (the denominator)",
                    "how many clients took part in each round and whether it aborted (clients, "
                    "survivors, status in metrics.jsonl): released without noise, not covered",
                    "the training settings in config.json; not which clients were sampled (drawn "
                    "from OS randomness, never stored)",
                ],
                "accounting": (
                    "fixed-size sampling: bound without subsampling amplification, Gaussian "
                    "mechanism with noise multiplier z/2 per round (substitution sensitivity 2*clip)"
                    if fixed
                    else f"Poisson-subsampled Gaussian mechanism, (z/{self.min_released_clients}, q) "
                    "per round"
                ),
                "sensitivity_multiplier": self.sensitivity_multiplier,
                "sensitivity": self.sensitivity_multiplier * self.clip_norm,
                "sensitivity_reasoning": self._sensitivity_reasoning(),
                "accountant": self.accountant,
                "delta": self.delta,
                "noise_multiplier": self.noise_multiplier,
                "clip_norm": self.clip_norm,
                "sample_rate": self.sample_rate,
                "expected_clients_per_round": self.expected_clients,
                "noise_std_on_average": self.noise_std,
                "rounds": self.rounds,
                "epsilon": json_float(epsilon),
                "epsilon_after_each_round": [json_float(e) for e in self._epsilons],
                **({"epsilon_if_poisson": json_float(self._poisson_epsilon(self.rounds))} if fixed else {}),
            }
        }

    def _sensitivity_reasoning(self) -> str:
        m0 = self.min_released_clients
        if self.client_sampling == "fixed":
            return (
                "every round samples the same number of clients whoever they are; swapping one "
                "user for another moves the sum by at most 2*clip, and rounds aborted by "
                "dropouts (independent of any user) release noise only and are counted"
            )
        if m0 == 1:
            return (
                "adding or removing one user moves the released sum by at most clip; a round "
                "without clients releases noise only and is counted"
            )
        return (
            f"secure aggregation releases no sum of fewer than {m0} clients (smaller rounds abort "
            f"and release noise only, and are counted), so one user can turn a noise-only round "
            f"into noise + the sum of {m0} clipped updates: sensitivity {m0}*clip in that case, "
            f"clip otherwise; given the other users' sample each round is a Poisson-subsampled "
            f"Gaussian with sensitivity <= {m0}*clip, and by joint quasi-convexity the mixture "
            f"over their sample is accounted as (z/{m0}, q)"
        )


def dp_generator(*, seed: int | None = None, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator a DP class owns for its secret randomness (noise, batch sampling), on
    ``device`` (torch draws a tensor's noise with a generator of the tensor's device).

    DP noise must stay unknown to the server: seeded from the operating system, the seed never
    kept.  ``seed`` is for tests only: a seed known to the server voids the guarantee.
    """
    return torch.Generator(device=device).manual_seed(secrets.randbits(63) if seed is None else seed)


__all__ = ["ClipUpdate", "DPFedAvgServerUpdate", "clip_to_norm", "dp_generator", "sensitivity_multiplier"]
