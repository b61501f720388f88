"""DP-SGD on clients: ε against Opacus' own accountants, budgets, clipping by brute force, noise."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from opacus.accountants.utils import get_noise_multiplier
from privacy_helpers import make_model, make_shards, make_trainer, opacus_epsilon, train
from torch import nn

from securefl.config import DPConfig
from securefl.errors import ConfigError, PrivacyBudgetExceeded
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard
from securefl.fl.vectors import load_vector, to_vector
from securefl.privacy import DPSGDEngine, DPSGDTrainer, dp_ledger, dp_round_metrics


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


def test_the_test_seed_fixes_the_update_and_the_simulation_generator_does_not():
    """DP-SGD draws from the trainer's own generator: the seed hook decides the update, the
    simulation's generator passed to ``train`` changes nothing."""
    shards = make_shards([30])
    config = DPConfig(noise_multiplier=1.0, delta=1e-3)
    params = to_vector(make_model().parameters())

    def update(seed: int, simulation_seed: int) -> torch.Tensor:
        trainer = make_trainer(shards, config=config, seed=seed)
        simulation = torch.Generator().manual_seed(simulation_seed)
        return trainer.train(global_params=params, shard=shards[0], round_index=1, generator=simulation).delta

    assert torch.equal(update(3, 0), update(3, 1))
    assert not torch.equal(update(3, 0), update(4, 0))


def test_batchnorm_model_is_refused_with_the_fix():
    model = nn.Sequential(nn.Linear(13, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ConfigError) as error:
        make_trainer(make_shards([20]), config=DPConfig(delta=1e-3), model=model)
    message = str(error.value)
    assert "BatchNorm" in message and "ModuleValidator.fix" in message and '`model` "resnet18"' in message


def test_group_norm_resnet_is_accepted():
    from securefl.models import build_model

    model = build_model("resnet18", input_shape=(3, 8, 8), num_outputs=10)
    make_trainer(make_shards([20]), config=DPConfig(delta=1e-3), model=model)


@pytest.mark.parametrize(
    ("kwargs", "sizes", "needle"),
    [
        ({"batch_size": 16}, [40, 12], "lower `batch_size` to at most 12"),
        ({"config": DPConfig(delta=0.05)}, [40, 20], "lower `dp.delta` below 0.025"),
        ({"config": DPConfig(target_epsilon=1e-7, delta=1e-3)}, [40], "unreachable.*`dp.target_epsilon`"),
        ({"grad_sample_mode": "magic"}, [40], "grad sample mode"),
        ({"lr": 0.0}, [40], "positive `lr`"),
        ({"rounds": 0}, [40], "`rounds` 1 or more"),
        ({"local_epochs": 0}, [40], "`local_epochs` 1 or more"),
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
    _train_until_the_budget_stops_it(trainer, shards[0])


class _WeightSpy:
    """An aggregation whose server half records the weight in every contribution it receives
    (the bytes a plain sum's client half sends), then sums as usual."""

    def __init__(self, inner):
        self.inner = inner
        self.weights: dict[int, list[float]] = {}

    @property
    def fewest_clients(self):
        return self.inner.fewest_clients

    def open_round(self, *, round_index, participants, context):
        return _WeightSpyRound(
            self, self.inner.open_round(round_index=round_index, participants=participants, context=context)
        )

    def client(self, client_id):
        return self.inner.client(client_id)

    def aggregate(self, contributions, *, round_index, contexts=None):
        raise AssertionError("a federation's server must aggregate through its half, not in process")


class _WeightSpyRound:
    def __init__(self, spy, inner):
        self.spy, self.inner = spy, inner

    def setup_for(self, client_id):
        return self.inner.setup_for(client_id)

    def receive(self, client_id, payload):
        from securefl.fl.codec import decode
        from securefl.fl.messages import PlainContribution

        message = decode(payload)
        assert isinstance(message, PlainContribution)
        self.spy.weights.setdefault(client_id, []).append(message.weight)
        self.inner.receive(client_id, payload)

    def close_step(self):
        return self.inner.close_step()

    @property
    def result(self):
        return self.inner.result


def test_sample_counts_are_public_and_the_server_receives_the_declared_count():
    """Under --dp each client's n_k is public metadata (it sets q_k, the steps and the FedAvg
    weight): privacy.json says so, and the weight that reaches the server is the declared count
    the ledger's q_k was computed from (issue 9, point 10)."""
    import dataclasses

    from securefl.config import RunConfig
    from securefl.federation import build_federation, run_simulation

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


def per_client_trainers(shards, *, config: DPConfig, rounds: int, batch_size: int, lr: float = 0.1):
    """One trainer per client, as a client program holds it, all sharing one engine."""
    engine = DPSGDEngine(
        model=make_model(),
        task="classification",
        lr=lr,
        max_grad_norm=config.max_grad_norm,
        batch_size=batch_size,
    )
    return {
        shard.client_id: DPSGDTrainer(
            config=config,
            client_sizes={shard.client_id: len(shard)},
            rounds=rounds,
            local_epochs=1,
            batch_size=batch_size,
            engine=engine,
            seed=shard.client_id,
        )
        for shard in shards
    }


def test_per_client_trainers_report_what_one_trainer_for_all_clients_reports():
    """Driven through the same rounds (clients skipping some, a budget that stops them), N
    per-client trainers sharing one engine give the single multi-client trainer's ledger and
    per-round ε, and both equal Opacus' accountant."""
    shards = make_shards([24, 40, 64])
    config = DPConfig(target_epsilon=3.0, delta=1e-3)
    object.__setattr__(config, "noise_multiplier", 1.2)  # given noise: the target is only a budget
    rounds, batch_size = 12, 8
    single = make_trainer(shards, config=config, rounds=rounds, batch_size=batch_size)
    separate = per_client_trainers(shards, config=config, rounds=rounds, batch_size=batch_size)
    schedule = {r: [s for s in shards if (r + s.client_id) % 3 != 0] for r in range(1, rounds + 1)}
    taken: dict[int, int] = {shard.client_id: 0 for shard in shards}
    for round_index, sampled in schedule.items():
        for shard in sampled:
            allowed = single.can_train(shard.client_id)
            assert separate[shard.client_id].can_train(shard.client_id) == allowed
            if allowed:
                train(single, shard, round_index)
                train(separate[shard.client_id], shard, round_index)
                taken[shard.client_id] += 1
        assert dp_round_metrics(list(separate.values())) == single.round_metrics()
    assert dp_ledger(list(separate.values())) == single.ledger()

    reported = single.ledger()["sample_level"]
    assert reported["excluded_clients"], "the budget should stop at least one client"
    assert {int(cid) for cid in reported["clients"]} == {0, 1, 2}
    for shard in shards:
        plan = single.plans[shard.client_id]
        expected = opacus_epsilon(
            accountant="rdp",
            noise=1.2,
            sample_rate=batch_size / len(shard),
            steps=taken[shard.client_id] * plan.steps_per_round,
            delta=1e-3,
        )
        assert separate[shard.client_id].epsilon(shard.client_id) == pytest.approx(expected, rel=1e-9)
    epsilons = sorted(single.epsilon(shard.client_id) for shard in shards)
    assert single.round_metrics()["epsilon_median"] == pytest.approx(epsilons[1], rel=1e-12)


def test_each_per_client_trainer_enforces_its_own_budget():
    """A client's own trainer stops it once its next round would pass the target, exactly where
    Opacus' accountant says; the other clients' trainers are not affected."""
    shards = make_shards([32, 64])
    config = DPConfig(target_epsilon=6.0, delta=1e-3)
    object.__setattr__(config, "noise_multiplier", 1.0)
    separate = per_client_trainers(shards, config=config, rounds=50, batch_size=8)
    small, large = separate[0], separate[1]
    trained = _train_until_the_budget_stops_it(small, shards[0])
    with pytest.raises(PrivacyBudgetExceeded):
        train(small, shards[0], trained + 1)
    assert small.privacy_ledger.excluded == (0,)
    # the other client never trained: its own trainer still lets it, and knows nothing of client 0
    assert large.can_train(1) and large.epsilon(1) == 0.0
    train(large, shards[1], trained + 1)
    with pytest.raises(KeyError):
        large.epsilon(0)


def test_a_shared_engine_carries_nothing_from_one_client_to_the_next():
    """With momentum, a client trained on a shared engine after another client gets the update a
    trainer with an engine of its own gives for the same seed."""
    shards = make_shards([24, 40])
    config = DPConfig(noise_multiplier=0.5, delta=1e-3)
    engine = DPSGDEngine(
        model=make_model(), task="classification", lr=0.1, momentum=0.9, max_grad_norm=1.0, batch_size=8
    )

    def on_shared_engine(shard: ClientShard) -> DPSGDTrainer:
        return DPSGDTrainer(
            config=config,
            client_sizes={shard.client_id: len(shard)},
            rounds=3,
            local_epochs=1,
            batch_size=8,
            engine=engine,
            seed=7,
        )

    train(on_shared_engine(shards[0]), shards[0], 1)
    shared = train(on_shared_engine(shards[1]), shards[1], 1)
    alone = make_trainer(shards[1:], config=config, rounds=3, batch_size=8, momentum=0.9, seed=7)
    assert torch.equal(shared.delta, train(alone, shards[1], 1).delta)


def test_an_engine_comes_alone_and_with_the_trainers_settings():
    config = DPConfig(delta=1e-3)
    engine = DPSGDEngine(model=make_model(), task="classification", lr=0.1, max_grad_norm=1.0, batch_size=8)
    options = {"config": config, "client_sizes": {0: 40}, "rounds": 2, "local_epochs": 1}
    with pytest.raises(TypeError, match="not both"):
        DPSGDTrainer(**options, batch_size=8, engine=engine, lr=0.1)
    with pytest.raises(TypeError, match="`model`"):
        DPSGDTrainer(**options, batch_size=8)
    with pytest.raises(ValueError, match="`batch_size` 10"):
        DPSGDTrainer(**options, batch_size=10, engine=engine)
    with pytest.raises(ValueError, match="`dp.max_grad_norm` 2"):
        DPSGDTrainer(
            **{**options, "config": DPConfig(delta=1e-3, max_grad_norm=2.0)}, batch_size=8, engine=engine
        )
    trainer = DPSGDTrainer(**options, batch_size=8, engine=engine)  # matching settings are accepted
    assert trainer.can_train(0)


def test_a_report_needs_disjoint_clients_under_one_setting():
    shards = make_shards([40, 40])
    config = DPConfig(noise_multiplier=1.0, delta=1e-3)
    with pytest.raises(ValueError, match="more than one trainer"):
        dp_ledger([make_trainer(shards, config=config), make_trainer(shards[:1], config=config)])
    other = DPConfig(noise_multiplier=2.0, delta=1e-3)
    with pytest.raises(ValueError, match="different DP settings"):
        dp_round_metrics([make_trainer(shards[:1], config=config), make_trainer(shards[1:], config=other)])
    with pytest.raises(ValueError, match="no DP-SGD trainer"):
        dp_ledger([])


def _train_until_the_budget_stops_it(trainer, shard) -> int:
    """Train client 0 (32 examples, batches of 8: 4 steps a round, z = 1, δ = 1e-3) while it may; it
    must stop exactly where Opacus' RDP accountant crosses ε = 6. Returns the rounds trained."""
    trained = 0
    while trainer.can_train(0):
        trained += 1
        train(trainer, shard, trained)
    within = opacus_epsilon(accountant="rdp", noise=1.0, sample_rate=8 / 32, steps=trained * 4, delta=1e-3)
    beyond = opacus_epsilon(
        accountant="rdp", noise=1.0, sample_rate=8 / 32, steps=(trained + 1) * 4, delta=1e-3
    )
    assert trained >= 2 and within <= 6.0 < beyond
    assert trainer.epsilon(0) == pytest.approx(within, rel=1e-9)
    return trained
