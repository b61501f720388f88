"""An immutable record of the privacy each client has spent, interpreted by Opacus' accountants.

The shape follows Google's ``dp_accounting`` library (differential-privacy, "DpEvent"s): what
happened is described by frozen *events*; a *ledger* composes them per client; an *accountant*
turns a composed history into ε.  Nothing here mutates: every change returns a new ledger, and is
validated (round order, budget) *before* the new ledger exists, so a refused event leaves no trace.

The accounting unit is the one Opacus analyses: ``steps`` compositions of the Poisson-subsampled
Gaussian mechanism with sample rate ``q`` and noise multiplier ``z`` (Abadi et al., "Deep Learning
with Differential Privacy", CCS 2016).  A history is the list of ``(z, q, steps)`` triples that
Opacus' own accountants keep (``IAccountant.history``), merged the way their ``step`` merges
consecutive equal mechanisms, so the ε we report is exactly what
``opacus.accountants.create_accountant(name)`` gives for the same history:

- ``rdp``: Rényi DP of the sampled Gaussian mechanism (Mironov, "Rényi Differential Privacy",
  CSF 2017; Mironov, Talwar, Zhang 2019), converted to (ε, δ);
- ``prv``: numerical composition of privacy-loss random variables (Gopi, Lee, Wutschitz,
  "Numerical Composition of Differential Privacy", NeurIPS 2021), upper bound;
- ``gdp``: the central-limit Gaussian-DP approximation (Bu, Dong, Long, Su 2020); Opacus warns it
  can *underestimate* ε, and it only takes one constant mechanism.  Opacus converts μ-GDP to ε by
  a root search bracketed in ``[0, 500]``; past it (e.g. DP-FedAvg with fixed-size sampling and
  ``z = 1`` from its 15th round) the search raises.  We report ``ε = inf`` with a warning instead:
  a run must not crash mid-way because its ε became meaningless.

A mechanism run with noise multiplier 0 has no finite guarantee: its ε is ``inf`` (what Opacus'
RDP accountant returns; its PRV and GDP accountants cannot evaluate it and raise).
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from opacus.accountants import create_accountant

from securefl.config import ACCOUNTANTS
from securefl.errors import ConfigError, PrivacyBudgetExceeded
from securefl.fl.record import json_float

log = logging.getLogger(__name__)

History = tuple[tuple[float, float, int], ...]
"""Opacus' accountant history: ``(noise_multiplier, sample_rate, steps)`` per mechanism run."""


@dataclass(frozen=True)
class SampledGaussianEvent:
    """``steps`` runs of the Poisson-subsampled Gaussian mechanism in round ``round_index``."""

    round_index: int
    steps: int
    sample_rate: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if self.round_index < 0:
            raise ValueError(f"round index {self.round_index} < 0")
        if self.steps < 1:
            raise ValueError(f"an event needs at least one step, got {self.steps}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample rate {self.sample_rate} outside (0, 1]")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise multiplier {self.noise_multiplier} is not a finite number >= 0")

    @property
    def mechanism(self) -> tuple[float, float]:
        return (float(self.noise_multiplier), float(self.sample_rate))


def compose_history(events: Iterable[SampledGaussianEvent]) -> History:
    """The Opacus accountant history of ``events``: consecutive equal mechanisms merged."""
    merged: list[tuple[float, float, int]] = []
    for event in events:
        noise, rate = event.mechanism
        if merged and merged[-1][:2] == (noise, rate):
            merged[-1] = (noise, rate, merged[-1][2] + event.steps)
        else:
            merged.append((noise, rate, event.steps))
    return tuple(merged)


def validate_accountant(name: str) -> str:
    """``name`` if it is an accountant the ledger can compute ε with: the library's one check of
    it, where ε is computed (:func:`epsilon_spent`) and where a class must refuse it before a run
    (:class:`~securefl.privacy.central.DPFedAvgServerUpdate`).  A :class:`~securefl.config.DPConfig`
    or :class:`~securefl.config.CentralDPConfig` has refused it already, naming its field."""
    if name not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {name!r}: choose one of {', '.join(ACCOUNTANTS)}")
    return name


def epsilon_spent(history: History, *, accountant: str, delta: float) -> float:
    """ε after ``history`` at ``delta``, from Opacus' accountant ``accountant``.

    Memoised on the (hashable) history: clients with the same data size, noise and rounds share
    one computation, and a look-ahead (``can_train``) is never recomputed when the round happens.
    Past the ``gdp`` accountant's search bracket the result is ``inf``, logged on every call.
    """
    try:
        return _epsilon_spent(history, accountant=accountant, delta=delta)
    except _PastSearchBracket:
        # Opacus' GDP accountant finds ε by a root search in [0, 500]
        # (opacus.accountants.analysis.gdp.eps_from_mu), which has no root once ε passes 500.
        log.warning(
            "the gdp accountant cannot express ε for %s at δ=%g (past Opacus' search bracket, "
            "ε > 500): reporting ε = inf; use the rdp or prv accountant for a finite bound",
            history,
            delta,
        )
        return math.inf


class _PastSearchBracket(Exception):
    """Opacus' GDP accountant found no ε in its search bracket (not cached, so it is logged)."""


@functools.lru_cache(maxsize=8192)
def _epsilon_spent(history: History, *, accountant: str, delta: float) -> float:
    validate_accountant(accountant)
    if not 0 < delta < 1:
        raise ValueError(f"delta {delta} outside (0, 1)")
    if not history:
        return 0.0
    if any(noise == 0 for noise, _, _ in history):
        return math.inf
    if accountant == "gdp" and len(history) > 1:
        raise ValueError("the gdp accountant composes only one constant (noise, sample rate): use rdp or prv")
    with warnings.catch_warnings():
        # GaussianAccountant warns on every construction; the module docstring and the
        # trainer's log say it once.
        warnings.filterwarnings("ignore", message="GDP accounting is experimental")
        opacus_accountant = create_accountant(mechanism=accountant)
    opacus_accountant.history = [tuple(entry) for entry in history]
    try:
        return float(opacus_accountant.get_epsilon(delta=delta))
    except ValueError:
        if accountant != "gdp":
            raise
        raise _PastSearchBracket from None


@dataclass(frozen=True)
class Exclusion:
    """A client taken out of sampling because its next round would exceed the budget."""

    after_rounds: int
    would_be_epsilon: float
    budget: float


@dataclass(frozen=True)
class ClientRecord:
    """Every privacy event of one client, and its ε after each of them."""

    client_id: int
    num_samples: int
    events: tuple[SampledGaussianEvent, ...] = ()
    epsilons: tuple[float, ...] = ()
    exclusion: Exclusion | None = None

    @property
    def rounds(self) -> tuple[int, ...]:
        return tuple(event.round_index for event in self.events)

    @property
    def steps(self) -> int:
        return sum(event.steps for event in self.events)

    @property
    def epsilon(self) -> float:
        return self.epsilons[-1] if self.epsilons else 0.0

    def history(self, *extra: SampledGaussianEvent) -> History:
        return compose_history((*self.events, *extra))

    def to_json(self) -> dict[str, Any]:
        mechanisms = sorted({event.mechanism for event in self.events})
        return {
            "num_samples": self.num_samples,
            "rounds": list(self.rounds),
            "steps": self.steps,
            "sample_rate": _single_or_list([rate for _, rate in mechanisms]),
            "noise_multiplier": _single_or_list([noise for noise, _ in mechanisms]),
            "epsilon": json_float(self.epsilon),
            "epsilon_after_each_round": [json_float(e) for e in self.epsilons],
            "excluded": None
            if self.exclusion is None
            else {
                "after_rounds": self.exclusion.after_rounds,
                "would_be_epsilon": json_float(self.exclusion.would_be_epsilon),
                "budget": self.exclusion.budget,
            },
        }


@dataclass(frozen=True)
class PrivacyLedger:
    """Per-client records under one accountant and δ, with an optional ε budget.

    Build it with :meth:`open`; :meth:`record` and :meth:`exclude` return new ledgers.
    """

    accountant: str
    delta: float
    budget: float | None
    clients: Mapping[int, ClientRecord]

    @classmethod
    def open(
        cls,
        *,
        accountant: str,
        delta: float,
        client_sizes: Mapping[int, int],
        budget: float | None = None,
    ) -> PrivacyLedger:
        """A ledger with no events yet.  ``accountant`` and ``delta`` are checked where ε is
        computed (:func:`epsilon_spent`); the user-facing checks of ``dp.accountant``,
        ``dp.delta`` and ``dp.target_epsilon`` live in :class:`~securefl.config.DPConfig`, and any
        budget makes a consistent ledger."""
        records = {
            int(client_id): ClientRecord(client_id=int(client_id), num_samples=int(size))
            for client_id, size in client_sizes.items()
        }
        return cls(accountant=accountant, delta=delta, budget=budget, clients=MappingProxyType(records))

    def __getitem__(self, client_id: int) -> ClientRecord:
        try:
            return self.clients[client_id]
        except KeyError:
            raise KeyError(f"client {client_id} is not in the privacy ledger") from None

    def epsilon(self, client_id: int) -> float:
        return self[client_id].epsilon

    def epsilon_with(self, client_id: int, event: SampledGaussianEvent) -> float:
        """ε client ``client_id`` would have after ``event`` (nothing is recorded)."""
        return epsilon_spent(self[client_id].history(event), accountant=self.accountant, delta=self.delta)

    def record(self, client_id: int, event: SampledGaussianEvent) -> PrivacyLedger:
        """A new ledger with ``event`` appended to the client's record.

        Raises ``ValueError`` for an event out of round order and :class:`PrivacyBudgetExceeded`
        for a client that is excluded or whose ε would pass the budget.
        """
        current = self[client_id]
        if current.exclusion is not None:
            raise PrivacyBudgetExceeded(
                f"client {client_id} was excluded after {current.exclusion.after_rounds} rounds "
                f"(next round would reach ε={current.exclusion.would_be_epsilon:.4g} > budget "
                f"{current.exclusion.budget:g}): it cannot train again"
            )
        if current.events and event.round_index <= current.events[-1].round_index:
            raise ValueError(
                f"client {client_id} already trained in round "
                f"{current.events[-1].round_index}; got an event for round {event.round_index}"
            )
        epsilon = self.epsilon_with(client_id, event)
        if self.budget is not None and epsilon > self.budget:
            raise PrivacyBudgetExceeded(
                f"client {client_id} would reach ε={epsilon:.4g} > budget {self.budget:g} in round "
                f"{event.round_index}: it must not train again"
            )
        updated = replace(current, events=(*current.events, event), epsilons=(*current.epsilons, epsilon))
        return self._with_record(updated)

    def exclude(self, client_id: int, *, would_be_epsilon: float) -> PrivacyLedger:
        """A new ledger marking the client as out of budget (idempotent)."""
        current = self[client_id]
        if current.exclusion is not None:
            return self
        if self.budget is None:
            raise ValueError("a ledger without a budget excludes no client")
        if not would_be_epsilon > self.budget:
            raise ValueError(
                f"client {client_id}'s next ε {would_be_epsilon} is within the budget "
                f"{self.budget}: nothing to exclude"
            )
        exclusion = Exclusion(
            after_rounds=len(current.events), would_be_epsilon=would_be_epsilon, budget=self.budget
        )
        return self._with_record(replace(current, exclusion=exclusion))

    def _with_record(self, record: ClientRecord) -> PrivacyLedger:
        records = dict(self.clients)
        records[record.client_id] = record
        return replace(self, clients=MappingProxyType(records))

    @property
    def excluded(self) -> tuple[int, ...]:
        return tuple(cid for cid, record in self.clients.items() if record.exclusion is not None)

    def summary(self) -> dict[str, float]:
        """Max and median ε over every client of the federation (0 for clients never trained)."""
        epsilons = [record.epsilon for record in self.clients.values()]
        return {
            "epsilon_max": max(epsilons) if epsilons else 0.0,
            "epsilon_median": float(statistics.median(epsilons)) if epsilons else 0.0,
        }

    def to_json(self) -> dict[str, Any]:
        summary = self.summary()
        return {
            "accountant": self.accountant,
            "delta": self.delta,
            "budget_epsilon": self.budget,
            "epsilon_max": json_float(summary["epsilon_max"]),
            "epsilon_median": json_float(summary["epsilon_median"]),
            "excluded_clients": list(self.excluded),
            "clients": {str(cid): record.to_json() for cid, record in sorted(self.clients.items())},
        }


def _single_or_list(values: list[float]) -> float | list[float] | None:
    if not values:
        return None
    return values[0] if len(values) == 1 else values


__all__ = [
    "ACCOUNTANTS",
    "ClientRecord",
    "Exclusion",
    "History",
    "PrivacyLedger",
    "SampledGaussianEvent",
    "compose_history",
    "epsilon_spent",
]
