"""DP-FedAvg: client-side clipping, server noise of std z·clip/(qN), user-level ε from Opacus."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import create_accountant

from securefl.errors import ConfigError, ThresholdNotMetError
from securefl.fl.types import Aggregate, Update
from securefl.privacy import ClipUpdate, DPFedAvgServerUpdate


def server(**overrides) -> DPFedAvgServerUpdate:
    options = {
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "delta": 1e-5,
        "clients": 100,
        "clients_per_round": 10,
        "seed": 0,
        **overrides,
    }
    return DPFedAvgServerUpdate(**options)


def aggregate_of(vectors: list[torch.Tensor]) -> Aggregate:
    return Aggregate(
        weighted_delta_sum=torch.stack(vectors).sum(0),
        weight_sum=float(len(vectors)),
        survivors=tuple(range(len(vectors))),
        train_loss_sum=0.0,
    )


@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=50),
    clip=st.floats(1e-3, 1e3),
)
@settings(max_examples=200, deadline=None)
def test_clip_update_bounds_the_norm_and_keeps_direction(values, clip):
    delta = torch.tensor(values, dtype=torch.float32)
    contribution = ClipUpdate(clip)(Update(client_id=3, delta=delta, num_samples=17, train_loss=0.5))
    clipped = contribution.weighted_delta
    assert float(clipped.double().norm()) <= clip
    assert contribution.weight == 1.0 and contribution.client_id == 3
    norm = float(delta.double().norm())
    if norm <= clip:
        assert torch.equal(clipped, delta)
    else:
        assert float(clipped.double().norm()) == pytest.approx(clip, rel=1e-5)
        cosine = float(torch.nn.functional.cosine_similarity(clipped.double(), delta.double(), dim=0))
        assert cosine == pytest.approx(1.0, abs=1e-6)


def test_noise_on_the_average_has_std_z_clip_over_expected_clients():
    z, clip, clients, per_round = 1.3, 0.7, 100, 10
    update = server(noise_multiplier=z, clip_norm=clip, clients=clients, clients_per_round=per_round)
    size = 200_000
    params = torch.zeros(size)
    result = update(params, aggregate_of([torch.zeros(size)] * 4))
    expected_std = z * clip / per_round
    assert update.noise_std == pytest.approx(expected_std)
    assert float(result.std()) == pytest.approx(expected_std, rel=0.02)
    assert abs(float(result.mean())) < 5 * expected_std / math.sqrt(size)


def test_denominator_is_the_expected_count_not_the_survivors():
    update = server(noise_multiplier=0.0, clients=20, clients_per_round=5)
    vectors = [torch.full((6,), 0.1 * (i + 1)) for i in range(3)]  # 3 arrived, 5 expected
    params = torch.arange(6.0)
    torch.testing.assert_close(update(params, aggregate_of(vectors)), params + sum(vectors) / 5)


def test_noise_is_reproducible_from_the_seeded_generator():
    first = server(seed=11)(torch.zeros(50), aggregate_of([torch.zeros(50)]))
    again = server(seed=11)(torch.zeros(50), aggregate_of([torch.zeros(50)]))
    other = server(seed=12)(torch.zeros(50), aggregate_of([torch.zeros(50)]))
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_poisson_user_epsilon_equals_opacus_accountant_every_round(accountant):
    z, clients, per_round = 1.1, 50, 5
    update = server(noise_multiplier=z, clients=clients, clients_per_round=per_round, accountant=accountant)
    reference = create_accountant(mechanism=accountant)
    params = torch.zeros(8)
    for _ in range(4):
        params = update(params, aggregate_of([torch.zeros(8)]))
        reference.step(noise_multiplier=z, sample_rate=per_round / clients)
        assert update.round_metrics()["user_epsilon"] == pytest.approx(
            reference.get_epsilon(delta=1e-5), rel=1e-9
        )
    assert update.round_metrics()["user_delta"] == 1e-5


def test_fixed_size_sampling_reports_the_unamplified_bound():
    z, rounds = 2.0, 3
    fixed = server(noise_multiplier=z, client_sampling="fixed")
    poisson = server(noise_multiplier=z, client_sampling="poisson")
    for _ in range(rounds):
        fixed(torch.zeros(4), aggregate_of([torch.zeros(4)]))
        poisson(torch.zeros(4), aggregate_of([torch.zeros(4)]))
    reference = create_accountant(mechanism="rdp")
    for _ in range(rounds):  # Gaussian mechanism, sensitivity 2·clip, no subsampling
        reference.step(noise_multiplier=z / 2, sample_rate=1.0)
    reported = fixed.round_metrics()["user_epsilon"]
    assert reported == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)
    assert reported > poisson.round_metrics()["user_epsilon"]
    written = json.loads(json.dumps(fixed.ledger()))["user_level"]
    assert written["client_sampling"] == "fixed" and written["rounds"] == rounds
    assert written["epsilon_if_poisson"] == pytest.approx(poisson.round_metrics()["user_epsilon"])


def test_an_empty_round_still_releases_noise_and_counts():
    update = server()
    params = torch.zeros(30)
    result = update(params, Aggregate.empty(params))
    assert not torch.equal(result, params)
    assert update.rounds == 1 and update.round_metrics()["user_epsilon"] > 0


def test_an_unclipped_weighted_aggregate_is_refused():
    update = server()
    aggregate = Aggregate(
        weighted_delta_sum=torch.zeros(3), weight_sum=57.0, survivors=(0, 1, 2), train_loss_sum=0.0
    )
    with pytest.raises(ValueError, match="ClipUpdate"):
        update(torch.zeros(3), aggregate)


def test_ledger_is_json():
    update = server()
    update(torch.zeros(3), aggregate_of([torch.zeros(3)]))
    written = json.loads(json.dumps(update.ledger()))["user_level"]
    assert written["sample_rate"] == 0.1 and written["noise_std_on_average"] == pytest.approx(0.1)
    assert written["epsilon"] == pytest.approx(update.round_metrics()["user_epsilon"])
    assert len(written["epsilon_after_each_round"]) == 1
    assert written["neighbouring"] == "add/remove one user (all of one client's data)"
    assert any("not covered" in item for item in written["public"])  # per-round client counts


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"noise_multiplier": -1.0}, "`central_dp.noise_multiplier`"),
        ({"clip_norm": 0.0}, "`central_dp.clip_norm`"),
        ({"delta": 0.0}, "`central_dp.delta`"),
        ({"delta": 0.02}, "`central_dp.delta`"),  # >= 1/clients
        ({"clients_per_round": 200}, "`clients_per_round`"),
        ({"clients_per_round": 0}, "`clients_per_round`"),
        ({"client_sampling": "stratified"}, "client sampling"),
        ({"accountant": "moments"}, "accountant"),
    ],
)
def test_bad_central_settings_are_config_errors(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        server(**overrides)


def test_clip_norm_must_be_positive():
    with pytest.raises(ConfigError, match="`central_dp.clip_norm`"):
        ClipUpdate(-1.0)


def test_gdp_past_opacus_search_bracket_reports_infinite_epsilon_instead_of_crashing(caplog):
    """Fixed-size sampling with z = 1 passes ε = 500 in round 15: Opacus' GDP root search has no
    root there; the run goes on with ε = inf and says why (issue 9, point 12)."""
    update = server(noise_multiplier=1.0, client_sampling="fixed", accountant="gdp")
    assert "underestimate" in caplog.text  # gdp is an approximation for central DP too
    params = torch.zeros(4)
    for _ in range(16):
        params = update(params, aggregate_of([torch.zeros(4)]))
    epsilons = update.ledger()["user_level"]["epsilon_after_each_round"]
    reference = create_accountant(mechanism="gdp")
    reference.history = [(0.5, 1.0, 14)]  # substitution bound: z/2, no amplification
    assert epsilons[13] == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)
    reference.history = [(0.5, 1.0, 15)]
    with pytest.raises(ValueError):  # what main let through to the run
        reference.get_epsilon(delta=1e-5)
    assert epsilons[14:] == [None, None]  # JSON has no infinity
    assert update.round_metrics()["user_epsilon"] == math.inf
    assert "search bracket" in caplog.text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_update_is_sent_as_zero_and_the_model_stays_finite(bad, caplog):
    """One diverged client must not turn the released model into NaN (issue 9, point 11)."""
    clip = ClipUpdate(0.5)
    generator = torch.Generator().manual_seed(3)
    deltas = [torch.randn(20, generator=generator) for _ in range(3)]
    deltas[1][7] = bad
    contributions = [clip(Update(i, d, 10, 0.0)) for i, d in enumerate(deltas)]
    assert torch.equal(contributions[1].weighted_delta, torch.zeros(20))
    assert contributions[1].weight == 1.0
    assert all(float(c.weighted_delta.double().norm()) <= 0.5 for c in contributions)
    assert clip.non_finite_replaced == 1 and "client 1" in caplog.text
    update = server(noise_multiplier=0.0, clip_norm=0.5, clients=20, clients_per_round=3)
    released = update(torch.zeros(20), aggregate_of([c.weighted_delta for c in contributions]))
    assert bool(torch.isfinite(released).all())
    honest = (contributions[0].weighted_delta + contributions[2].weighted_delta) / 3
    torch.testing.assert_close(released, honest)


class _SamplerWithALoneClientInRound2:
    """Poisson sampling can draw one client; force it in round 2 so the test is deterministic."""

    def sample(self, round_index, eligible):
        return [0] if round_index == 2 else [0, 1, 2]


def test_central_dp_secagg_accounts_every_round_including_aborted_ones():
    """The review's case: 4 rounds ran, one aborted (a lone client cannot be securely summed), and
    main reported ε for 3 rounds at z. Every round is now noised and counted, at z/2: one user
    can turn a noise-only round into noise + the sum of 2 clipped updates (issue 9, point 8)."""
    from securefl.config import CentralDPConfig, RunConfig, SecAggConfig
    from securefl.federation import build_federation, run_simulation

    z, clients, per_round, rounds = 1.0, 6, 3, 4
    config = RunConfig(
        dataset="digits",
        model="mlp",
        clients=clients,
        clients_per_round=per_round,
        rounds=rounds,
        local_epochs=1,
        central_dp=CentralDPConfig(noise_multiplier=z, client_sampling="poisson"),
        secagg=SecAggConfig(),
    )
    federation = dataclasses.replace(build_federation(config), sampler=_SamplerWithALoneClientInRound2())
    history = run_simulation(config, federation=federation)
    assert [r.status for r in history.records] == ["ok", "aborted", "ok", "ok"]
    reference = create_accountant(mechanism="rdp")
    for _ in range(rounds):
        reference.step(noise_multiplier=z / 2, sample_rate=per_round / clients)
    user = history.privacy["user_level"]
    assert user["rounds"] == rounds
    assert user["epsilon"] == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)
    assert history.final.privacy["user_epsilon"] == pytest.approx(user["epsilon"])
    assert history.metric("user_epsilon")[-1] == pytest.approx(user["epsilon"])
    assert user["sensitivity_multiplier"] == 2 and user["sensitivity"] == 2 * config.central_dp.clip_norm
    assert "noise only" in user["sensitivity_reasoning"]


@pytest.mark.parametrize(("secagg", "smallest"), [({}, 2), ({"threshold": 3}, 3), ({"neighbors": 4}, 5)])
def test_poisson_central_dp_sensitivity_follows_the_smallest_round_secagg_completes(secagg, smallest):
    """A threshold count or SecAgg+ neighbours make smaller rounds abort too; the multiplier is
    the size of the smallest round that completes, found by running rounds of every size."""
    from securefl.config import CentralDPConfig, RunConfig, SecAggConfig
    from securefl.federation import build_federation
    from securefl.fl.types import Contribution

    config = RunConfig(
        dataset="digits",
        model="mlp",
        clients=8,
        clients_per_round=6,
        rounds=1,
        central_dp=CentralDPConfig(client_sampling="poisson"),
        secagg=SecAggConfig(**secagg),
    )
    federation = build_federation(config)
    size = sum(p.numel() for p in federation.eval_model.parameters())
    completes = []
    for count in range(1, 9):
        contributions = [Contribution(i, torch.zeros(size), 1.0, 0.0) for i in range(count)]
        try:
            federation.channel.aggregate(contributions, round_index=count)
            completes.append(count)
        except ThresholdNotMetError:
            pass
    assert completes == list(range(smallest, 9))
    assert federation.server_update.sensitivity_multiplier == smallest
    fixed = dataclasses.replace(config, central_dp=CentralDPConfig(client_sampling="fixed"))
    assert build_federation(fixed).server_update.sensitivity_multiplier == 2  # substitution bound
