"""Distributed DP under secure aggregation (issue 13), against independent references: scipy's
Skellam pmf for the Rényi divergence, scipy's Hadamard matrix, Opacus' Gaussian accountant for the
large-noise limit, and repeated draws for the decoded sum's mean and variance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import hadamard as hadamard_matrix
from scipy.special import logsumexp
from scipy.stats import skellam

from securefl.cli.app import main
from securefl.config import CentralDPConfig, RunConfig, SecAggConfig
from securefl.errors import ConfigError, RoundAbortedError
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.fl.types import Aggregate, Contribution
from securefl.privacy.distributed import (
    MAX_SQUARED_NORM,
    MAX_TARGET_VARIANCE,
    NOTHING_RELEASED,
    DistributedDPChannel,
    DistributedDPServerUpdate,
    RandomizedHadamard,
    Release,
    choose_scale,
    conditional_round,
    hadamard,
    rounded_l2_bound,
    squared_norm,
    wrap_bound,
)
from securefl.privacy.ledger import epsilon_spent
from securefl.privacy.skellam import skellam_epsilon, skellam_rdp

ORDERS = range(2, 9)


def renyi_divergence(variance: float, shift: int, order: int) -> float:
    """D_order(Sk + shift || Sk) summed over the pmf of scipy's Skellam(variance/2, variance/2)."""
    reach = int(40 * math.sqrt(variance)) + 60 + abs(shift)
    k = np.arange(-reach, reach + 1)
    shifted = skellam.logpmf(k - shift, variance / 2, variance / 2)
    plain = skellam.logpmf(k, variance / 2, variance / 2)
    return float(logsumexp(order * shifted + (1 - order) * plain) / (order - 1))


@pytest.mark.parametrize("variance", [2.0, 5.0, 20.0, 100.0])
@pytest.mark.parametrize("shift", [(1,), (2,), (1, 1), (-1, 2, 3)])
def test_skellam_rdp_bounds_the_numerical_renyi_divergence(variance, shift):
    """Theorem 3.5 is an upper bound on the exact divergence (a product over coordinates), and a
    tight one once the noise is large: within 2.5% at variance 100 (our runs use >= 10^5)."""
    numerical = np.array([sum(renyi_divergence(variance, s, a) for s in shift) for a in ORDERS])
    l1, l2 = float(sum(abs(s) for s in shift)), math.sqrt(sum(s * s for s in shift))
    bound = skellam_rdp(ORDERS, l1=l1, l2=l2, variance=variance)
    assert np.all(numerical <= bound + 1e-12)
    if variance >= 100:
        assert np.all(bound <= numerical * 1.025)


def test_skellam_epsilon_approaches_the_gaussian_mechanism_as_noise_grows():
    """At variance (z·s)² with s large the Skellam mechanism is the Gaussian one: Opacus' RDP
    accountant at noise multiplier z (q = 1) gives the same ε within 0.5%."""
    z, scale, rounds = 1.5, 1000.0, 10
    skellam_eps = skellam_epsilon([(z * scale) ** 2] * rounds, l1=scale * 30, l2=scale, delta=1e-5)
    gaussian_eps = epsilon_spent(((z, 1.0, rounds),), accountant="rdp", delta=1e-5)
    assert skellam_eps == pytest.approx(gaussian_eps, rel=5e-3)
    assert skellam_eps >= gaussian_eps  # the correction term only adds


def test_hadamard_matches_scipy_and_the_rotation_is_orthogonal():
    x = torch.randn(64, dtype=torch.float64)
    assert torch.allclose(hadamard(x), torch.from_numpy(hadamard_matrix(64).astype(np.float64)) @ x)
    rotation = RandomizedHadamard(50, seed=[3, 1])
    y = rotation.rotate(x[:50])
    assert rotation.padded == 64
    assert float(y.norm()) == pytest.approx(float(x[:50].norm()), rel=1e-12)
    assert torch.allclose(rotation.unrotate(y), x[:50], atol=1e-12)


def test_conditional_rounding_stays_within_its_bound_and_is_nearly_unbiased():
    rng = np.random.default_rng(0)
    dim, scaled_clip = 256, 40.0
    x = rng.normal(size=dim)
    x *= scaled_clip / np.linalg.norm(x)
    bound = rounded_l2_bound(scaled_clip, dim)
    draws = np.stack([conditional_round(x, l2_bound=bound, rng=rng) for _ in range(2000)])
    assert np.all(np.linalg.norm(draws, axis=1) <= bound + 1e-9)
    assert np.all(np.abs(draws - x) < 1)
    assert np.abs(draws.mean(axis=0) - x).mean() < 0.05  # conditioning biases slightly


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**31) + 1, 2**31 - 1), max_size=300))
def test_squared_norm_is_exact_where_an_int64_dot_would_wrap(values):
    """Against Python's integers (no overflow possible), for coordinates up to 2^31."""
    assert squared_norm(np.array(values, dtype=np.int64)) == sum(v * v for v in values)


def test_conditional_round_refuses_an_over_bound_vector_whose_int64_dot_wraps():
    """4096 coordinates of 2^26 (integers: rounding keeps them) have squared norm 2^64, which an
    int64 dot wraps to 0; every coordinate is within the bound 2^26, so only the exact norm can
    tell.  Coordinates beyond the bound, non-finite ones and bounds above 2^26 are refused too."""
    rng = np.random.default_rng(0)
    bound = 2.0**26
    x = np.full(4096, bound)
    vector = x.astype(np.int64)
    assert int(np.dot(vector, vector)) == 0 < bound**2  # the wrap the old check fell for
    with pytest.raises(ValueError, match="no draw within norm"):
        conditional_round(x, l2_bound=bound, rng=rng)
    for bad in (bound + 2, math.nan, math.inf):
        with pytest.raises(ValueError, match="exceeds the norm bound"):
            conditional_round(np.array([0.0, bad]), l2_bound=bound, rng=rng)
    with pytest.raises(ValueError, match="at most 2\\^52"):
        conditional_round(np.zeros(4), l2_bound=2.0**27, rng=rng)
    # the reviewer's case: a vector 1.5x over its bound at a scaled clip of 2^33, now at the cap
    scaled_clip = 2.0**25
    y = rng.normal(size=8192)
    y *= 1.5 * scaled_clip / np.linalg.norm(y)
    with pytest.raises(ValueError, match="no draw within norm"):
        conditional_round(y, l2_bound=rounded_l2_bound(scaled_clip, 8192), rng=rng)


def _channel(*, clients=6, bits=20, z=1.0, num_params=40, dropout_rate=0.0, threshold=None, colluders=0):
    config = SecAggConfig(bits=bits, dropout_rate=dropout_rate, threshold=threshold, max_colluders=colluders)
    secure = SecureAggregationChannel(
        config=config,
        num_params=num_params,
        weight_bound=1,
        clients_per_round=clients,
        seed=7,
    )
    return DistributedDPChannel(
        secure=secure,
        num_params=num_params,
        clip_norm=1.0,
        noise_multiplier=z,
        delta=1e-5,
        max_clients=clients,
        seed=7,
    )


def _updates(clients: int, num_params: int) -> list[Contribution]:
    generator = torch.Generator().manual_seed(1)
    updates = []
    for i in range(clients):
        delta = torch.randn(num_params, generator=generator)
        updates.append(Contribution(i, delta / delta.norm() * 0.9, 1.0, 0.0))
    return updates


def _decoded_sums(channel: DistributedDPChannel, updates, *, share_variance: float, trials: int):
    """The server's decoded sum for ``trials`` independent rounds (ring sum taken directly)."""
    rotation = channel.rotation(1)
    modulus = 2**channel.secure.config.bits
    sums = []
    for _ in range(trials):
        total = np.zeros(rotation.padded, dtype=np.uint64)
        for update in updates:
            total = (
                total + channel.encode(update, rotation=rotation, share_variance=share_variance)
            ) % modulus
        sums.append(channel.decode(total, rotation=rotation).numpy())
    return np.stack(sums)


def _variance_ratio_within(residuals: np.ndarray, expected: float, *, sigmas: float = 5.0) -> bool:
    """Whether the residuals' variance matches ``expected`` within ``sigmas`` standard errors
    (the variance of a sample variance is 2σ⁴/N; Skellam's excess kurtosis 1/μ is negligible)."""
    n = residuals.size
    return abs(float(residuals.var()) / expected - 1) <= sigmas * math.sqrt(2 / n)


@pytest.mark.parametrize(("bits", "z"), [(40, 1.0), (62, 1.0), (32, 0.001), (62, 0.001)])
def test_wide_rings_and_small_noise_cap_the_scale_and_still_enforce_the_norm(bits, z):
    """Where the ring would allow a scale whose Δ2² passes 2^63 or whose Poisson means pass
    numpy's limit, the scale stops at the caps: clipped updates encode and decode, an update
    1.5x over the clip is refused, and ε is the 20-bit ring's within 10^-4 (the cap costs nothing)."""
    channel = _channel(clients=6, bits=bits, z=z, num_params=1000)
    assert channel.l2_bound**2 <= MAX_SQUARED_NORM and channel.target_variance <= MAX_TARGET_VARIANCE
    capped = math.isclose(channel.l2_bound**2, MAX_SQUARED_NORM, rel_tol=1e-6) or math.isclose(
        channel.target_variance, MAX_TARGET_VARIANCE, rel_tol=1e-6
    )
    assert capped  # a cap, not the ring, chose the scale
    updates = _updates(6, channel.num_params)
    share = channel.share_variance(channel.secure.params_for(6, None))
    sums = _decoded_sums(channel, updates, share_variance=share, trials=3)
    truth = torch.stack([u.weighted_delta for u in updates]).sum(0).double().numpy()
    assert np.abs(sums - truth).max() < 10 * math.sqrt(6 * share) / channel.scale + 1e-6
    over = Contribution(0, updates[0].weighted_delta / 0.9 * 1.5, 1.0, 0.0)
    with pytest.raises(ValueError, match="norm"):
        channel.encode(over, rotation=channel.rotation(1), share_variance=share)
    reference = _channel(clients=6, bits=20, z=z, num_params=1000)
    mu = (z * 1.0) ** 2
    assert channel.epsilon_of([mu] * 5) == pytest.approx(reference.epsilon_of([mu] * 5), rel=1e-4)


def test_the_scale_is_refused_only_when_no_scale_can_work():
    with pytest.raises(ConfigError, match="too large to encode"):
        _channel(z=1e300)
    with pytest.raises(ConfigError, match="cannot be encoded"):
        choose_scale(bits=62, clip_norm=1.0, dim=2**56, clients=2, noise_multiplier=1.0, noise_ratio=1.0)
    with pytest.raises(ConfigError, match="raise `secagg.bits`"):
        choose_scale(bits=8, clip_norm=1.0, dim=2**20, clients=120, noise_multiplier=1.0, noise_ratio=1.0)


def test_decoded_noisy_sum_is_unbiased_with_the_accounted_variance_and_the_test_has_power():
    channel = _channel(clients=6)
    updates = _updates(6, channel.num_params)
    share = channel.share_variance(channel.secure.params_for(6, None))
    sums = _decoded_sums(channel, updates, share_variance=share, trials=400)
    truth = torch.stack([u.weighted_delta for u in updates]).sum(0).double().numpy()
    residuals = sums - truth
    accounted = 6 * share / channel.scale**2  # what the ledger records for 6 survivors
    rounding = 6 / (4 * channel.scale**2)  # at most 1/4 per client and coordinate: negligible
    assert rounding < 1e-3 * accounted
    standard_error = math.sqrt(accounted / residuals.size)
    assert abs(float(residuals.mean())) < 5 * standard_error  # unbiased
    assert np.abs(residuals.mean(axis=0)).max() < 5 * math.sqrt(accounted / len(sums))
    assert _variance_ratio_within(residuals, accounted + rounding)
    # power: the same test rejects noise sized naively for all 6 (one dropout would leave 5/6 of
    # it) and a 10% error in the accounted variance
    assert 5 * math.sqrt(2 / residuals.size) < 0.1
    assert not _variance_ratio_within(residuals, accounted * 5 / 6)
    assert not _variance_ratio_within(residuals, accounted * 1.1)


def test_the_ring_sum_does_not_wrap_at_the_chosen_scale():
    """12 bits, every client sending the same clipped update (aligned: the signal's worst case):
    every coordinate of every sum stays inside the proven bound, below 2^(bits-1)."""
    channel = _channel(clients=6, bits=12, z=0.5)
    update = _updates(1, channel.num_params)[0]
    updates = [Contribution(i, update.weighted_delta, 1.0, 0.0) for i in range(6)]
    share = channel.share_variance(channel.secure.params_for(6, None))
    limit = 2 ** (channel.secure.config.bits - 1) - 1
    bound = wrap_bound(
        channel.scale,
        clip_norm=1.0,
        dim=channel.padded,
        clients=6,
        noise_variance=channel.noise_ratio * channel.target_variance,
        failure=1e-9,
    )
    assert bound <= limit
    sums = _decoded_sums(channel, updates, share_variance=share, trials=200)
    truth = 6 * update.weighted_delta.double().numpy()
    assert np.abs(sums - truth).max() * channel.scale < 8 * math.sqrt(6 * share)  # no wrap (≈ 2^12)


def _run_rounds(channel: DistributedDPChannel, updates, rounds: int):
    """``rounds`` rounds through the channel and the server update, as the server program plays
    them (an aborted round goes through the server update with an empty aggregate)."""
    server = DistributedDPServerUpdate(channel=channel, expected_clients=len(updates))
    params = torch.zeros(channel.num_params)
    aggregates = []
    for round_index in range(1, rounds + 1):
        try:
            aggregate = channel.aggregate(updates, round_index=round_index)
        except RoundAbortedError:
            aggregate = Aggregate.empty(params)
        params = server(params, aggregate)
        aggregates.append(aggregate)
    return server, aggregates


def test_a_round_through_the_protocol_records_survivors_and_released_variance():
    channel = _channel(clients=5, dropout_rate=0.3, threshold=3)
    server, aggregates = _run_rounds(channel, _updates(5, channel.num_params), 8)
    survivors = [len(a.survivors) for a in aggregates]
    released = [a.details.get("released_noise_variance", 0.0) for a in aggregates]
    assert server.round_metrics()["released_noise_variance"] == released[-1]
    ledger = server.ledger()["user_level"]
    assert ledger["rounds"] == 8 and ledger["survivors_each_round"] == survivors
    assert ledger["released_noise_variance_each_round"] == pytest.approx(released)
    assert ledger["honest_noise_variance_each_round"] == pytest.approx(released)  # no colluders
    assert any(3 <= s < 5 for s in survivors)  # dropouts between t and n happened
    target = ledger["target_noise_variance"]
    for s, v in zip(survivors, released, strict=True):
        assert v == pytest.approx(s * target / 3 if s else 0.0)
        assert s == 0 or v >= target  # any t survivors already give the target noise


def test_dropouts_between_t_and_n_give_the_epsilon_the_accountant_reports():
    """ε with survivors between t and n lies between ε at the target noise (t survivors every
    round) and ε with all n surviving, and equals the composition of the realised variances."""
    channel = _channel(clients=5, dropout_rate=0.3, threshold=3)
    server, _ = _run_rounds(channel, _updates(5, channel.num_params), 8)
    ledger = server.ledger()["user_level"]
    completed = [s for s in ledger["survivors_each_round"] if s]
    l1, l2 = ledger["sensitivity_l1"] * channel.scale, ledger["sensitivity_l2"] * channel.scale
    mu = channel.target_variance  # scaled units, as the theorem's integers

    def eps(variances):
        return skellam_epsilon(variances, l1=l1, l2=l2, delta=1e-5)

    assert ledger["epsilon"] == pytest.approx(eps([s * mu / 3 for s in completed]))
    assert eps([5 * mu / 3] * len(completed)) <= ledger["epsilon"] <= eps([mu] * len(completed))
    # naive shares (μ/5 each) would have released s·μ/5 < μ: more ε than the target
    assert eps([s * mu / 5 for s in completed]) > eps([mu] * len(completed))


def test_colluders_shares_are_not_counted_and_each_share_grows_to_cover_them():
    """With c = 1 colluder and t = 3, each share is μ/2: the 2 honest ones among any 3 survivors
    give μ; the accountant uses (survivors − 1)·μ/2, never the colluder's own share."""
    channel = _channel(clients=5, threshold=3, colluders=1)
    server, aggregates = _run_rounds(channel, _updates(5, channel.num_params), 2)
    ledger = server.ledger()["user_level"]
    target = ledger["target_noise_variance"]
    assert ledger["survivors_each_round"] == [5, 5] and ledger["colluders_each_round"] == [1, 1]
    assert ledger["released_noise_variance_each_round"] == pytest.approx([5 * target / 2] * 2)
    assert ledger["honest_noise_variance_each_round"] == pytest.approx([4 * target / 2] * 2)
    assert ledger["epsilon"] == pytest.approx(channel.epsilon_of([2 * target] * 2))
    # at exactly the target noise each round (what central DP would add) ε is larger
    assert ledger["epsilon_at_target_noise"] == pytest.approx(channel.epsilon_of([target] * 2))
    assert ledger["epsilon_at_target_noise"] > ledger["epsilon"]
    with pytest.raises(ConfigError, match="colluders|`secagg.threshold`"):
        _channel(clients=5, threshold=3, colluders=3)


def test_a_released_round_without_honest_noise_costs_infinite_epsilon():
    """Defensive: the accountant keys on the released flag, not on the variance being positive."""
    channel = _channel(clients=4)
    server = DistributedDPServerUpdate(channel=channel, expected_clients=4)
    params = torch.zeros(channel.num_params)
    channel._release = NOTHING_RELEASED
    server(params, Aggregate.empty(params))
    assert server.round_metrics()["user_epsilon"] == 0.0  # nothing released: free
    channel._release = Release(released=True, survivors=4, colluders=4, variance=1.0, honest_variance=0.0)
    server(params, Aggregate.empty(params))
    assert server.round_metrics()["user_epsilon"] == math.inf
    assert server.ledger()["user_level"]["epsilon"] is None  # JSON has no inf
    assert server.ledger()["user_level"]["released_each_round"] == [False, True]
    assert channel.epsilon_of([0.0]) == math.inf and channel.epsilon_of([]) == 0.0


def test_every_round_is_counted_an_empty_one_too_and_the_server_adds_no_noise():
    channel = _channel(clients=4)
    server = DistributedDPServerUpdate(channel=channel, expected_clients=4)
    params = torch.ones(channel.num_params)
    aggregate = channel.aggregate(_updates(4, channel.num_params), round_index=1)
    expected = params + aggregate.weighted_delta_sum / 4
    assert torch.equal(server(params, aggregate), expected)  # sum / expected count, nothing added
    assert torch.equal(server(params, Aggregate.empty(params)), params)  # nobody sampled
    ledger = server.ledger()["user_level"]
    assert ledger["rounds"] == 2 and ledger["survivors_each_round"] == [4, 0]
    assert ledger["epsilon_after_each_round"][0] == ledger["epsilon_after_each_round"][1] > 0


def test_distributed_dp_needs_secure_aggregation():
    with pytest.raises(ConfigError, match="needs `secagg`"):
        RunConfig.from_mapping({"distributed_dp": True})
    config = RunConfig.from_mapping({"distributed_dp": True, "secagg": True, "clip_norm": 0.5})
    assert config.central_dp == CentralDPConfig(clip_norm=0.5, distributed=True)
    with pytest.raises(ConfigError, match="rdp"):
        RunConfig.from_mapping({"distributed_dp": True, "secagg": True, "central_accountant": "prv"})


def test_cli_refuses_distributed_dp_without_secagg(capsys):
    assert main(["train", "--distributed-dp", "--rounds", "1"]) == 2
    assert "--distributed-dp needs --secagg" in capsys.readouterr().err


def test_cli_run_records_survivors_noise_and_both_epsilons(tmp_path):
    out = tmp_path / "run"
    args = ["--dataset", "digits", "--model", "mlp", "--clients", "4", "--rounds", "2"]
    args += ["--local-epochs", "1", "--distributed-dp", "--secagg", "--secagg-bits", "20"]
    args += ["--client-sampling", "fixed", "--central-noise-multiplier", "2", "--secagg-colluders", "0"]
    assert main(["train", *args, "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ledger = json.loads((out / "privacy.json").read_text())["user_level"]
    assert [r["survivors"] for r in records] == ledger["survivors_each_round"] == [4, 4]
    assert [r["user_epsilon"] for r in records] == ledger["epsilon_after_each_round"]
    assert [r["released_noise_variance"] for r in records] == ledger["released_noise_variance_each_round"]
    assert records[-1]["released_noise_variance"] == pytest.approx(4 / 3 * 2.0**2)  # 4 survivors, t=3
    assert 0 < records[0]["user_epsilon"] < records[1]["user_epsilon"]
    # like for like: both at exactly the target variance (z·clip)² every round, two rounds
    assert records[-1]["central_epsilon_at_target_noise"] == ledger["central_dp_epsilon_at_target_noise"]
    assert ledger["central_dp_epsilon_at_target_noise"] == pytest.approx(
        epsilon_spent(((2.0 / 2, 1.0, 2),), accountant="rdp", delta=1e-5)  # substitution: z/2
    )
    assert records[-1]["user_epsilon_at_target_noise"] == ledger["epsilon_at_target_noise"]
    assert ledger["epsilon_at_target_noise"] > ledger["epsilon"]  # 4 survivors carry 4/3 of it
    # the Skellam mechanism at the same noise costs a little more than the Gaussian (rounding,
    # integer orders, correction term), never less
    assert 1 <= ledger["epsilon_at_target_noise"] / ledger["central_dp_epsilon_at_target_noise"] < 1.1


@pytest.mark.parametrize(
    "knobs",
    [["--secagg-bits", "40"], ["--secagg-bits", "62"], ["--central-noise-multiplier", "0.001"]],
)
def test_cli_runs_wide_rings_and_small_noise_at_the_capped_scale(tmp_path, knobs):
    """The reviewer's repro (exit 1 with numpy's 'lam value too large', or a norm check that
    int64 overflow disabled): now it runs, with the rounded norm bound within 2^52."""
    args = ["--dataset", "digits", "--model", "mlp", "--clients", "10", "--clients-per-round", "6"]
    args += ["--rounds", "1", "--local-epochs", "1", "--distributed-dp", "--secagg"]
    args += ["--client-sampling", "fixed"]
    assert main(["train", *args, *knobs, "--out", str(tmp_path / "run")]) == 0
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())["user_level"]
    assert (ledger["sensitivity_l2"] * ledger["scale"] / 2) ** 2 <= MAX_SQUARED_NORM
    assert ledger["target_noise_variance"] * ledger["scale"] ** 2 <= MAX_TARGET_VARIANCE * (1 + 1e-12)
    assert ledger["survivors_each_round"] == [6] and ledger["epsilon"] > 0


def test_cli_exits_2_when_no_scale_can_encode_the_noise(capsys):
    args = ["--dataset", "digits", "--model", "mlp", "--clients", "4", "--rounds", "1", "--distributed-dp"]
    args += ["--secagg", "--client-sampling", "fixed", "--central-noise-multiplier", "1e300"]
    assert main(["train", *args]) == 2
    assert "too large to encode" in capsys.readouterr().err


def test_attack_defence_distributed_dp_observes_the_noised_mean_through_the_same_channel():
    from securefl.attacks.defences import DistributedDPDefence
    from securefl.attacks.observation import PublicKnowledge
    from securefl.fl.training import LocalSGDTrainer
    from securefl.fl.types import ClientShard
    from securefl.fl.vectors import to_vector
    from securefl.models import build_model
    from securefl.privacy.central import ClipUpdate

    generator = torch.Generator().manual_seed(0)
    shards = [
        ClientShard(i, torch.rand(1, 1, 28, 28, generator=generator), torch.tensor([i])) for i in range(3)
    ]
    public = PublicKnowledge(
        model_name="lenet",
        input_shape=(1, 28, 28),
        num_classes=10,
        batch_size=1,
        local_steps=1,
        learning_rate=0.1,
    )
    model = build_model("lenet", input_shape=(1, 28, 28), num_outputs=10, seed=0).double()
    z, clip = 0.5, 0.05
    defence = DistributedDPDefence(clients=3, noise_multiplier=z, max_grad_norm=clip)
    observation, facts = defence.observe(
        public=public, server_model=model, victim=shards[0], others=shards[1:], seed=0
    )
    global_params = to_vector(model.parameters())
    trainer = LocalSGDTrainer(model=model, task="classification", local_epochs=1, batch_size=None, lr=0.1)
    clipped = [
        ClipUpdate(clip)(
            trainer.train(
                global_params=global_params,
                shard=ClientShard(s.client_id, s.x.double(), s.y),
                round_index=0,
                generator=torch.Generator(),
            )
        ).weighted_delta
        for s in shards
    ]
    residual = (observation.observed_update + torch.stack(clipped).mean(0).double()).numpy()
    released = 3 / 2 * (z * clip) ** 2  # 3 survivors of threshold 2 (majority of 3)
    assert _variance_ratio_within(residual, released / 9, sigmas=6)
    assert facts.epsilon > 0 and defence.label == "distributed DP z=0.5 N=3"


def test_toml_section_switches_distributed_dp_on_and_the_cli_states_the_share_sizing(tmp_path, capsys):
    config = RunConfig.from_mapping({"central-dp": {"distributed": True, "clip-norm": 0.5}, "secagg": True})
    assert config.central_dp == CentralDPConfig(clip_norm=0.5, distributed=True)
    args = ["--dataset", "digits", "--model", "mlp", "--clients", "4", "--rounds", "1", "--local-epochs", "1"]
    args += ["--distributed-dp", "--secagg", "--secagg-bits", "20", "--client-sampling", "fixed"]
    assert main(["train", *args, "--secagg-colluders", "1", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "each client adds 1/2 of the target noise" in out and "whatever 1 colluder(s)" in out
