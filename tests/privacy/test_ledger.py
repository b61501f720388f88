"""The privacy ledger: frozen events, Opacus-identical histories and ε, validation before change."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant, create_accountant

from securefl.errors import ConfigError, PrivacyBudgetExceeded
from securefl.privacy.ledger import PrivacyLedger, SampledGaussianEvent, compose_history, epsilon_spent

mechanisms = st.tuples(st.sampled_from([0.7, 1.0, 1.3]), st.sampled_from([0.01, 0.1, 0.5]))
event_lists = st.lists(st.tuples(mechanisms, st.integers(1, 20)), min_size=1, max_size=6)


def events_of(items) -> list[SampledGaussianEvent]:
    return [
        SampledGaussianEvent(round_index=i, steps=steps, sample_rate=rate, noise_multiplier=noise)
        for i, ((noise, rate), steps) in enumerate(items)
    ]


@given(event_lists)
@settings(max_examples=40, deadline=None)
def test_history_is_what_opacus_accountant_keeps_when_stepped(items):
    reference = RDPAccountant()
    for (noise, rate), steps in items:
        for _ in range(steps):
            reference.step(noise_multiplier=noise, sample_rate=rate)
    assert list(compose_history(events_of(items))) == reference.history


@given(event_lists)
@settings(max_examples=8, deadline=None)
def test_epsilon_equals_opacus_rdp_accountant(items):
    reference = RDPAccountant()
    for (noise, rate), steps in items:
        for _ in range(steps):
            reference.step(noise_multiplier=noise, sample_rate=rate)
    history = compose_history(events_of(items))
    assert epsilon_spent(history, accountant="rdp", delta=1e-5) == reference.get_epsilon(delta=1e-5)


@pytest.mark.parametrize("accountant", ["prv", "gdp"])
def test_epsilon_equals_other_opacus_accountants(accountant):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = create_accountant(mechanism=accountant)
    for _ in range(40):
        reference.step(noise_multiplier=1.2, sample_rate=0.05)
    assert epsilon_spent(((1.2, 0.05, 40),), accountant=accountant, delta=1e-5) == reference.get_epsilon(
        delta=1e-5
    )


def test_gdp_refuses_a_changing_mechanism():
    with pytest.raises(ValueError, match="gdp"):
        epsilon_spent(((1.0, 0.1, 3), (2.0, 0.1, 3)), accountant="gdp", delta=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"noise_multiplier": -0.1},
        {"noise_multiplier": math.nan},
        {"round_index": -1},
    ],
)
def test_invalid_events_are_refused(kwargs):
    valid = {"round_index": 1, "steps": 3, "sample_rate": 0.1, "noise_multiplier": 1.0}
    with pytest.raises(ValueError):
        SampledGaussianEvent(**{**valid, **kwargs})


def test_events_and_ledgers_are_frozen():
    event = SampledGaussianEvent(round_index=1, steps=3, sample_rate=0.1, noise_multiplier=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.steps = 4  # type: ignore[misc]
    ledger = PrivacyLedger.open(accountant="rdp", delta=1e-5, client_sizes={0: 10})
    with pytest.raises(TypeError):
        ledger.clients[1] = ledger.clients[0]  # type: ignore[index]


def test_record_returns_a_new_ledger_and_validates_first():
    empty = PrivacyLedger.open(accountant="rdp", delta=1e-5, client_sizes={0: 100, 1: 100})
    event = SampledGaussianEvent(round_index=2, steps=10, sample_rate=0.1, noise_multiplier=1.0)
    after = empty.record(0, event)
    assert empty.epsilon(0) == 0.0 and empty[0].events == ()  # the old ledger is untouched
    assert after[0].events == (event,) and after.epsilon(0) > 0
    assert after.epsilon(1) == 0.0
    earlier = dataclasses.replace(event, round_index=1)
    with pytest.raises(ValueError, match="round 2"):
        after.record(0, earlier)
    assert after[0].events == (event,)
    with pytest.raises(KeyError, match="client 7"):
        after.record(7, event)


def test_budget_is_checked_before_the_event_is_recorded():
    event = SampledGaussianEvent(round_index=1, steps=50, sample_rate=0.1, noise_multiplier=1.0)
    spent = epsilon_spent(((1.0, 0.1, 50),), accountant="rdp", delta=1e-5)
    ledger = PrivacyLedger.open(accountant="rdp", delta=1e-5, client_sizes={0: 100}, budget=spent * 1.2)
    ledger = ledger.record(0, event)
    second = dataclasses.replace(event, round_index=2)
    would_be = ledger.epsilon_with(0, second)
    assert would_be == epsilon_spent(((1.0, 0.1, 100),), accountant="rdp", delta=1e-5) > spent * 1.2
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.record(0, second)
    excluded = ledger.exclude(0, would_be_epsilon=would_be)
    assert excluded.excluded == (0,) and excluded[0].exclusion.after_rounds == 1
    assert excluded.exclude(0, would_be_epsilon=would_be) is excluded
    with pytest.raises(PrivacyBudgetExceeded, match="excluded"):
        excluded.record(0, second)
    with pytest.raises(ValueError, match="within the budget"):
        ledger.exclude(0, would_be_epsilon=spent)


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"delta": 0.0}, ValueError, "outside"),
        ({"delta": 1.0}, ValueError, "outside"),
        ({"accountant": "moments"}, ConfigError, "unknown accountant"),
    ],
)
def test_a_ledger_refuses_bad_accounting_settings_where_it_computes_epsilon(kwargs, error, needle):
    """The user-facing checks are DPConfig's (tests/test_config.py); the ledger checks its
    accountant and δ once, where ε is computed."""
    options = {"accountant": "rdp", "delta": 1e-5, "client_sizes": {0: 10}, **kwargs}
    ledger = PrivacyLedger.open(**options)
    event = SampledGaussianEvent(round_index=0, steps=1, sample_rate=0.5, noise_multiplier=1.0)
    with pytest.raises(error, match=needle):
        ledger.epsilon_with(0, event)


def test_summary_covers_every_client_including_untrained():
    ledger = PrivacyLedger.open(accountant="rdp", delta=1e-5, client_sizes={0: 10, 1: 10, 2: 10})
    ledger = ledger.record(
        0, SampledGaussianEvent(round_index=1, steps=5, sample_rate=0.5, noise_multiplier=1.0)
    )
    summary = ledger.summary()
    assert summary["epsilon_max"] == ledger.epsilon(0) > 0
    assert summary["epsilon_median"] == 0.0
    written = ledger.to_json()
    assert written["clients"]["0"]["steps"] == 5 and written["clients"]["1"]["rounds"] == []
