"""DP-SGD on clients: ε against Opacus' own accountants, budgets, clipping by brute force, noise."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from privacy_helpers import make_model, make_shards, make_trainer, train
from torch import nn

from securefl.config import DPConfig
from securefl.errors import ConfigError, PrivacyBudgetExceeded
from securefl.fl.client import LocalSGDTrainer
from securefl.fl.types import ClientShard
from securefl.fl.vectors import load_vector, to_vector


def opacus_epsilon(*, accountant: str, noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε from an Opacus accountant stepped the way PrivacyEngine's optimizer hook steps it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = create_accountant(mechanism=accountant)
    for _ in range(steps):
        reference.step(noise_multiplier=noise, sample_rate=sample_rate)
    return reference.get_epsilon(delta=delta)


@pytest.mark.parametrize("accountant", ["rdp", "prv", "gdp"])
def test_reported_epsilon_equals_opacus_accountant(accountant):
    shards = make_shards([40, 50])
    trainer = make_trainer(
        shards,
        config=DPConfig(noise_multiplier=1.1, delta=1e-3, accountant=accountant),
        batch_size=8,
        local_epochs=2,
    )
    for round_index in (1, 2, 3):
        assert trainer.can_train(0)
        train(trainer, shards[0], round_index)
    train(trainer, shards[1], 2)

    # client 0: 3 rounds x 2 epochs x ceil(40/8) steps at q = 8/40; client 1: 1 round, q = 8/50
    expected_0 = opacus_epsilon(
        accountant=accountant, noise=1.1, sample_rate=8 / 40, steps=3 * 2 * 5, delta=1e-3
    )
    expected_1 = opacus_epsilon(
        accountant=accountant, noise=1.1, sample_rate=8 / 50, steps=1 * 2 * 7, delta=1e-3
    )
    assert trainer.epsilon(0) == pytest.approx(expected_0, rel=1e-9)
    assert trainer.epsilon(1) == pytest.approx(expected_1, rel=1e-9)
    metrics = trainer.round_metrics()
    assert metrics["epsilon_max"] == pytest.approx(max(expected_0, expected_1), rel=1e-9)
    assert metrics["epsilon_median"] == pytest.approx((expected_0 + expected_1) / 2, rel=1e-9)
    assert metrics["delta"] == 1e-3


def test_epsilon_grows_with_rounds_taken_not_rounds_skipped():
    shards = make_shards([32, 32])
    trainer = make_trainer(shards, config=DPConfig(noise_multiplier=1.0, delta=1e-3), batch_size=8)
    epsilons: dict[int, list[float]] = {0: [], 1: []}
    schedule = {1: [0, 1], 2: [1], 3: [1], 4: [0, 1]}  # client 0 skips rounds 2 and 3
    for round_index, sampled in schedule.items():
        for client_id in sampled:
            train(trainer, shards[client_id], round_index)
        for client_id in (0, 1):
            epsilons[client_id].append(trainer.epsilon(client_id))

    assert epsilons[0][0] == epsilons[0][1] == epsilons[0][2] < epsilons[0][3]
    assert epsilons[1] == sorted(set(epsilons[1]))  # strictly increasing: it trained every round
    per_round_steps = 4
    for client_id, rounds_taken in ((0, 2), (1, 4)):
        expected = opacus_epsilon(
            accountant="rdp", noise=1.0, sample_rate=8 / 32, steps=rounds_taken * per_round_steps, delta=1e-3
        )
        assert trainer.epsilon(client_id) == pytest.approx(expected, rel=1e-9)
    ledger = trainer.ledger()["sample_level"]["clients"]
    assert ledger["0"]["rounds"] == [1, 4] and ledger["1"]["rounds"] == [1, 2, 3, 4]
    assert ledger["0"]["steps"] == 2 * per_round_steps
    assert ledger["0"]["sample_rate"] == 8 / 32 and ledger["0"]["noise_multiplier"] == 1.0


def test_target_epsilon_ends_at_target_and_budget_stops_the_client():
    shards = make_shards([40, 64])
    rounds, target, delta = 3, 2.0, 1e-3
    trainer = make_trainer(
        shards,
        config=DPConfig(target_epsilon=target, delta=delta),
        rounds=rounds,
        batch_size=8,
        local_epochs=1,
    )
    for client_id, size in ((0, 40), (1, 64)):
        steps_per_round = math.ceil(size / 8)
        expected_noise = get_noise_multiplier(
            target_epsilon=target,
            target_delta=delta,
            sample_rate=8 / size,
            steps=rounds * steps_per_round,
            accountant="rdp",
            epsilon_tolerance=1e-3 * target,
        )
        assert trainer.plans[client_id].noise_multiplier == pytest.approx(expected_noise, rel=1e-12)
    assert trainer.plans[0].noise_multiplier != trainer.plans[1].noise_multiplier

    for round_index in range(1, rounds + 1):
        for shard in shards:
            assert trainer.can_train(shard.client_id)
            train(trainer, shard, round_index)
    for shard in shards:
        plan = trainer.plans[shard.client_id]
        spent = trainer.epsilon(shard.client_id)
        assert target - 1e-3 * target - 1e-9 <= spent <= target
        # one more round would exceed the target: the budget stops the client, exactly then
        would_be = opacus_epsilon(
            accountant="rdp",
            noise=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=(rounds + 1) * plan.steps_per_round,
            delta=delta,
        )
        assert would_be > target
        assert not trainer.can_train(shard.client_id)
        with pytest.raises(PrivacyBudgetExceeded):
            train(trainer, shard, rounds + 1)
        assert trainer.epsilon(shard.client_id) == spent  # the refused round cost nothing
    ledger = trainer.ledger()["sample_level"]
    assert ledger["excluded_clients"] == [0, 1]
    assert ledger["clients"]["0"]["excluded"]["after_rounds"] == rounds
    assert ledger["clients"]["0"]["excluded"]["would_be_epsilon"] > target
    assert trainer.privacy_ledger.excluded == (0, 1)


def test_budget_check_happens_before_the_round_that_would_exceed_it():
    """A client that skipped rounds keeps its budget; only its own next round is looked at."""
    shards = make_shards([40])
    trainer = make_trainer(shards, config=DPConfig(target_epsilon=1.5, delta=1e-3), rounds=2, batch_size=8)
    train(trainer, shards[0], 1)
    assert trainer.can_train(0)
    train(trainer, shards[0], 7)  # rounds 2..6 skipped: no cost
    assert not trainer.can_train(0)
    assert trainer.privacy_ledger[0].rounds == (1, 7)


@pytest.mark.parametrize("grad_sample_mode", ["ew", "hooks"])
def test_clipping_bounds_each_per_sample_gradient(grad_sample_mode):
    """One step on the full batch (q = 1), no noise: the update is -lr * mean of clipped per-sample
    gradients, each computed by its own backward pass, even with one huge-gradient sample."""
    shard = make_shards([6], seed=3)[0]
    x = shard.x.clone()
    x[2] *= 1e4  # a huge-gradient sample
    shard = ClientShard(client_id=0, x=x, y=shard.y)
    clip, lr = 0.5, 0.1
    model = make_model(seed=4)
    trainer = make_trainer(
        [shard],
        config=DPConfig(noise_multiplier=0.0, max_grad_norm=clip, delta=1e-3),
        batch_size=6,
        local_epochs=1,
        lr=lr,
        model=model,
        grad_sample_mode=grad_sample_mode,
    )
    params = to_vector(model.parameters())
    update = train(trainer, shard, 1, params)

    reference = copy.deepcopy(model)
    clipped, raw_norms = [], []
    for i in range(len(shard)):
        reference.zero_grad()
        nn.functional.cross_entropy(reference(shard.x[i : i + 1]), shard.y[i : i + 1]).backward()
        grad = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
        raw_norms.append(float(grad.norm()))
        clipped.append(grad * min(1.0, clip / float(grad.norm())))
    assert max(raw_norms) > 100 * clip  # the huge sample really needs clipping
    for g in clipped:
        assert float(g.norm()) <= clip * (1 + 1e-6)
    expected = -lr * torch.stack(clipped).mean(0)
    torch.testing.assert_close(update.delta, expected, rtol=1e-4, atol=1e-6)
    unclipped = -lr * torch.stack(
        [g * n / max(float(g.norm()), 1e-30) for g, n in zip(clipped, raw_norms, strict=True)]
    ).mean(0)
    assert float((update.delta - unclipped).norm()) > 10 * float(update.delta.norm())


def test_without_noise_or_clipping_dp_sgd_is_the_plain_full_batch_step():
    """Same layout and semantics as the plain trainer: q = 1, z = 0, an inactive clip, a CNN."""
    generator = torch.Generator().manual_seed(5)
    shard = ClientShard(
        client_id=0,
        x=torch.rand(12, 1, 8, 8, generator=generator),
        y=torch.randint(0, 10, (12,), generator=generator),
    )
    from securefl.models import build_model

    model = build_model("cnn", input_shape=(1, 8, 8), num_outputs=10, seed=1)
    pristine = copy.deepcopy(model)
    params = to_vector(model.parameters())
    dp = make_trainer(
        [shard],
        config=DPConfig(noise_multiplier=0.0, max_grad_norm=1e6, delta=1e-3),
        model=model,
        batch_size=12,
        local_epochs=1,
        lr=0.3,
    )
    plain = LocalSGDTrainer(
        model=copy.deepcopy(model), task="classification", local_epochs=1, batch_size=12, lr=0.3
    )
    dp_update = train(dp, shard, 1, params)
    plain_update = plain.train(
        global_params=params, shard=shard, round_index=1, generator=torch.Generator().manual_seed(0)
    )

    assert dp_update.delta.shape == params.shape
    torch.testing.assert_close(dp_update.delta, plain_update.delta, rtol=1e-4, atol=1e-7)
    assert dp_update.train_loss == pytest.approx(plain_update.train_loss, rel=1e-5)
    # the caller's model is left plain: same weights, no per-sample state, no hooks
    for p, q in zip(model.parameters(), pristine.parameters(), strict=True):
        assert torch.equal(p, q) and not hasattr(p, "grad_sample")
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert list(model.state_dict()) == list(pristine.state_dict())  # no `_module.` prefixes
    load_vector(pristine.parameters(), params + dp_update.delta)  # the plain layout takes the update


def test_every_step_is_noised_including_empty_poisson_batches():
    """With q = 1/50 about a third of the 200 Poisson batches are empty; Opacus still noises them.
    Noise dominates (z = 10), so each coordinate of the update has std lr * z * C * sqrt(steps) / B."""
    shard = make_shards([50], seed=7)[0]
    z, clip, lr, batch, epochs = 10.0, 0.1, 0.05, 1, 4
    trainer = make_trainer(
        [shard],
        config=DPConfig(noise_multiplier=z, max_grad_norm=clip, delta=1e-3),
        batch_size=batch,
        local_epochs=epochs,
        lr=lr,
    )
    update = train(trainer, shard, 1)
    steps = epochs * 50
    assert trainer.privacy_ledger[0].steps == steps
    expected_std = lr * z * clip * math.sqrt(steps) / batch
    empirical = float(update.delta.std())
    # skipping the ~36 % empty batches would give ~0.80 of the expected std
    assert empirical == pytest.approx(expected_std, rel=0.06)
    assert abs(float(update.delta.mean())) < 0.1 * expected_std


def test_same_generator_same_update():
    shards = make_shards([30])
    first = make_trainer(shards, config=DPConfig(noise_multiplier=1.0, delta=1e-3))
    second = make_trainer(shards, config=DPConfig(noise_multiplier=1.0, delta=1e-3))
    assert torch.equal(train(first, shards[0], 1).delta, train(second, shards[0], 1).delta)


def test_batchnorm_model_is_refused_with_the_fix():
    model = nn.Sequential(nn.Linear(13, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ConfigError) as error:
        make_trainer(make_shards([20]), config=DPConfig(delta=1e-3), model=model)
    message = str(error.value)
    assert "BatchNorm" in message and "ModuleValidator.fix" in message and "--model resnet18" in message


def test_group_norm_resnet_is_accepted():
    from securefl.models import build_model

    model = build_model("resnet18", input_shape=(3, 8, 8), num_outputs=10)
    make_trainer(make_shards([20]), config=DPConfig(delta=1e-3), model=model)


@pytest.mark.parametrize(
    ("kwargs", "sizes", "needle"),
    [
        ({"batch_size": 16}, [40, 12], "--batch-size"),
        ({"config": DPConfig(delta=0.05)}, [40, 20], "--delta"),
        ({"config": DPConfig(target_epsilon=1e-7, delta=1e-3)}, [40], "unreachable"),
        ({"grad_sample_mode": "magic"}, [40], "grad sample mode"),
        ({"lr": 0.0}, [40], "--lr"),
        ({"rounds": 0}, [40], "--rounds"),
    ],
)
def test_bad_input_is_a_config_error(kwargs, sizes, needle):
    options = {"config": DPConfig(delta=1e-3), **kwargs}
    with pytest.raises(ConfigError, match=needle):
        make_trainer(make_shards(sizes), **options)


def test_training_a_client_outside_the_plan_is_refused():
    shards = make_shards([20, 20])
    trainer = make_trainer(shards[:1], config=DPConfig(delta=1e-3))
    with pytest.raises(ValueError, match="client 1"):
        train(trainer, shards[1], 1)
    resized = ClientShard(client_id=0, x=shards[0].x[:10], y=shards[0].y[:10])
    with pytest.raises(ValueError, match="planned for 20"):
        train(trainer, resized, 1)
    train(trainer, shards[0], 2)
    with pytest.raises(ValueError, match="round 2"):
        train(trainer, shards[0], 2)


def test_no_noise_means_no_finite_guarantee_and_the_ledger_says_so():
    shards = make_shards([20])
    trainer = make_trainer(shards, config=DPConfig(noise_multiplier=0.0, delta=1e-3))
    train(trainer, shards[0], 1)
    assert trainer.epsilon(0) == math.inf
    assert opacus_epsilon(accountant="rdp", noise=0.0, sample_rate=8 / 20, steps=3, delta=1e-3) == math.inf
    written = json.loads(json.dumps(trainer.ledger()))
    assert written["sample_level"]["clients"]["0"]["epsilon"] is None


def test_ledger_is_json_and_complete():
    shards = make_shards([24, 40])
    trainer = make_trainer(
        shards, config=DPConfig(noise_multiplier=0.8, delta=1e-3), batch_size=8, local_epochs=2
    )
    train(trainer, shards[1], 1)
    written = json.loads(json.dumps(trainer.ledger()))["sample_level"]
    assert written["accountant"] == "rdp" and written["delta"] == 1e-3 and written["max_grad_norm"] == 1.0
    client = written["clients"]["1"]
    assert client["num_samples"] == 40 and client["rounds"] == [1] and client["steps"] == 2 * 5
    assert client["sample_rate"] == 8 / 40 and client["noise_multiplier"] == 0.8
    assert client["epsilon"] == pytest.approx(trainer.epsilon(1))
    assert written["clients"]["0"]["rounds"] == [] and written["clients"]["0"]["epsilon"] == 0.0


def test_a_budget_with_given_noise_stops_the_client_mid_run():
    """With the noise fixed and the target only a budget, the client stops after as many rounds as
    fit: the last round it trains stays within the budget, the next would not."""
    config = DPConfig(target_epsilon=6.0, delta=1e-3)
    object.__setattr__(config, "noise_multiplier", 1.0)  # DPConfig does not (yet) take both flags
    shards = make_shards([32])
    trainer = make_trainer(shards, config=config, batch_size=8, rounds=50)
    assert trainer.plans[0].noise_multiplier == 1.0
    trained = 0
    while trainer.can_train(0):
        trained += 1
        train(trainer, shards[0], trained)
    within = opacus_epsilon(accountant="rdp", noise=1.0, sample_rate=8 / 32, steps=trained * 4, delta=1e-3)
    beyond = opacus_epsilon(
        accountant="rdp", noise=1.0, sample_rate=8 / 32, steps=(trained + 1) * 4, delta=1e-3
    )
    assert trained >= 2 and within <= 6.0 < beyond
    assert trainer.epsilon(0) == pytest.approx(within, rel=1e-9)


class _WeightSpy:
    """An aggregation channel that records what the server side receives, then sums as usual."""

    def __init__(self, inner):
        self.inner = inner
        self.weights: dict[int, list[float]] = {}

    def aggregate(self, contributions, *, round_index, contexts=None):
        for contribution in contributions:
            self.weights.setdefault(contribution.client_id, []).append(contribution.weight)
        return self.inner.aggregate(contributions, round_index=round_index, contexts=contexts)


def test_sample_counts_are_public_and_the_server_receives_the_declared_count():
    """Under --dp each client's n_k is public metadata (it sets q_k, the steps and the FedAvg
    weight): privacy.json says so, and the weight that reaches the server is the declared count
    the ledger's q_k was computed from (issue 9, point 10)."""
    import dataclasses

    from securefl.config import RunConfig
    from securefl.fl.simulation import build_federation, run_simulation

    config = RunConfig(
        dataset="digits",
        model="mlp",
        clients=3,
        rounds=2,
        local_epochs=1,
        batch_size=32,
        partition="dirichlet",
        alpha=0.5,
        dp=DPConfig(noise_multiplier=1.0, delta=1e-4),
    )
    federation = build_federation(config)
    spy = _WeightSpy(federation.channel)
    history = run_simulation(config, federation=dataclasses.replace(federation, channel=spy))
    ledger = json.loads(json.dumps(history.privacy))["sample_level"]
    assert "held fixed at the client's declared example count n_k" in ledger["neighbouring"]
    assert any("example count n_k" in item and "FedAvg weight" in item for item in ledger["public"])
    declared = {int(cid): record["num_samples"] for cid, record in ledger["clients"].items()}
    assert len(set(declared.values())) == 3  # unequal shards: the weight identifies the count
    assert spy.weights == {cid: [float(n)] * 2 for cid, n in declared.items()}
    for cid, record in ledger["clients"].items():
        assert record["sample_rate"] == pytest.approx(32 / declared[int(cid)])
        assert declared[int(cid)] == len(federation.shards[int(cid)])
