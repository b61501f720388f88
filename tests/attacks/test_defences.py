"""Each defence runs through securefl's real code path and does what it says, checked against
independent references (numpy pruning, plain clipping, Opacus' accountant, the plain mean)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from attack_helpers import observe, server_model
from opacus.accountants import RDPAccountant

from securefl.attacks.defences import (
    DEFAULT_DP_DELTA,
    DEFENCES,
    ClipDefence,
    DistributedDPDefence,
    DPSGDDefence,
    NoDefence,
    NoiseDefence,
    NoiseUpdate,
    PruneDefence,
    PruneUpdate,
    SecAggDefence,
)
from securefl.attacks.observation import ObservedKind, PublicKnowledge
from securefl.errors import ConfigError
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard, Update
from securefl.fl.vectors import to_vector


def _public(*, batch_size=1, local_steps=1, **announced):
    return PublicKnowledge(
        model_name="lenet",
        input_shape=(1, 28, 28),
        num_classes=10,
        batch_size=batch_size,
        local_steps=local_steps,
        learning_rate=0.1,
        **announced,
    )


def _plain_gradient(model_name, x, y, *, seed, uniform=True):
    model = server_model(model_name, tuple(x.shape[1:]), 10, seed=seed, uniform=uniform)
    loss = torch.nn.functional.cross_entropy(model(x.double()), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def _numpy_prune(vector, sizes, ratio):
    expected = []
    for layer in np.split(vector, np.cumsum(sizes)[:-1]):
        drop = int(np.floor(ratio * layer.size))
        kept = layer.copy()
        kept[np.argsort(np.abs(layer), kind="stable")[:drop]] = 0
        expected.append(kept)
    return np.concatenate(expected)


def test_prune_matches_a_numpy_per_layer_reference():
    generator = torch.Generator().manual_seed(0)
    sizes = [7, 30, 1, 12]
    delta = torch.randn(sum(sizes), generator=generator, dtype=torch.float64)
    contribution = PruneUpdate(0.5, layer_sizes=sizes)(Update(0, delta, 3, 0.0))
    assert contribution.weight == 3
    expected = _numpy_prune(delta.numpy(), sizes, 0.5)
    np.testing.assert_allclose(contribution.weighted_delta.numpy() / 3, expected, rtol=1e-15)
    assert int((contribution.weighted_delta == 0).sum()) == sum(size // 2 for size in sizes)


def test_noise_has_the_requested_std_and_is_reproducible():
    delta = torch.zeros(20_000, dtype=torch.float64)
    first = NoiseUpdate(0.3, generator=torch.Generator().manual_seed(1))(Update(0, delta, 1, 0.0))
    again = NoiseUpdate(0.3, generator=torch.Generator().manual_seed(1))(Update(0, delta, 1, 0.0))
    assert torch.equal(first.weighted_delta, again.weighted_delta)
    assert float(first.weighted_delta.std()) == pytest.approx(0.3, rel=0.03)
    assert abs(float(first.weighted_delta.mean())) < 0.01


def test_none_observes_lr_times_the_clients_gradient(mnist):
    x, y = mnist.test_x[:1], mnist.test_y[:1]
    observation = observe("lenet", x, y, seed=0, learning_rate=0.1)
    assert observation.kind == ObservedKind.CLIENT_UPDATE
    torch.testing.assert_close(observation.observed_update, 0.1 * _plain_gradient("lenet", x, y, seed=0))


def test_clip_scales_the_update_to_the_bound_without_turning_it(mnist):
    x, y = mnist.test_x[:1], mnist.test_y[:1]
    clipped = observe("lenet", x, y, seed=0, defence=ClipDefence(max_grad_norm=0.01))
    plain = 0.1 * _plain_gradient("lenet", x, y, seed=0)
    assert float(plain.norm()) > 0.01
    assert float(clipped.observed_update.norm()) == pytest.approx(0.01, rel=1e-5)
    cosine = torch.nn.functional.cosine_similarity(clipped.observed_update, plain, dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-12)
    assert clipped.public.clip_norm == 0.01


def test_dp_sgd_without_noise_is_per_example_clipping_and_epsilon_is_opacus(mnist):
    x, y = mnist.test_x[:1], mnist.test_y[:1]
    gradient = _plain_gradient("lenet", x, y, seed=0)
    noiseless = observe("lenet", x, y, seed=0, defence=DPSGDDefence(noise_multiplier=0.0, max_grad_norm=1.0))
    expected = 0.1 * gradient * min(1.0, 1.0 / float(gradient.norm()))
    torch.testing.assert_close(noiseless.observed_update, expected, rtol=1e-6, atol=1e-9)

    _, facts = DPSGDDefence(noise_multiplier=1.0, max_grad_norm=1.0).observe(
        public=_public(batch_size=1, local_steps=2),
        server_model=server_model("lenet", (1, 28, 28), 10, seed=0, uniform=True),
        victim=ClientShard(0, x, y),
        seed=0,
    )
    accountant = RDPAccountant()
    for _ in range(2):
        accountant.step(noise_multiplier=1.0, sample_rate=1.0)
    assert facts.epsilon == pytest.approx(accountant.get_epsilon(DEFAULT_DP_DELTA), rel=1e-9)
    assert facts.delta == DEFAULT_DP_DELTA


def test_secagg_observation_is_the_protocols_mean_of_all_clients(mnist):
    rows = [0, 1, 2]
    shards = [ClientShard(i, mnist.test_x[r : r + 1], mnist.test_y[r : r + 1]) for i, r in enumerate(rows)]
    model = server_model("lenet", (1, 28, 28), 10, seed=0, uniform=True)
    observation, facts = SecAggDefence(clients=3).observe(
        public=_public(),
        server_model=model,
        victim=shards[0],
        others=shards[1:],
        seed=0,
    )
    assert observation.kind == ObservedKind.AGGREGATE and observation.public.num_clients == 3
    assert facts.secagg_clipped_fraction == 0.0
    global_params = to_vector(model.parameters())
    trainer = LocalSGDTrainer(model=model, task="classification", local_epochs=1, batch_size=None, lr=0.1)
    updates = [
        -trainer.train(
            global_params=global_params,
            shard=ClientShard(s.client_id, s.x.double(), s.y),
            round_index=0,
            generator=torch.Generator(),
        ).delta
        for s in shards
    ]
    plain_mean = torch.stack(updates).mean(dim=0)
    # float32 output of the channel plus fixed-point quantization: far below the update's scale
    torch.testing.assert_close(observation.observed_update, plain_mean, rtol=1e-5, atol=1e-7)
    assert float((observation.observed_update - updates[0]).norm()) > 0.1 * float(updates[0].norm())


def test_prune_observes_the_numpy_pruned_update_and_announces_the_ratio(mnist):
    x, y = mnist.test_x[:1], mnist.test_y[:1]
    pruned = observe("lenet", x, y, seed=0, defence=PruneDefence(prune_ratio=0.5))
    sizes = [p.numel() for p in server_model("lenet", (1, 28, 28), 10, seed=0, uniform=True).parameters()]
    expected = _numpy_prune((0.1 * _plain_gradient("lenet", x, y, seed=0)).numpy(), sizes, 0.5)
    np.testing.assert_allclose(pruned.observed_update.numpy(), expected, rtol=1e-6, atol=1e-12)
    assert pruned.public.prune_ratio == 0.5


def test_noise_observes_the_update_plus_seeded_gaussian_noise(mnist):
    x, y = mnist.test_x[:1], mnist.test_y[:1]
    defence = NoiseDefence(noise_std=0.05)
    noisy = observe("lenet", x, y, seed=0, defence=defence)
    residual = noisy.observed_update - 0.1 * _plain_gradient("lenet", x, y, seed=0)
    # the observed update is -(delta + noise); N(0, σ²) is symmetric, so the residual's std is σ
    assert float(residual.std()) == pytest.approx(0.05, rel=0.05)
    assert abs(float(residual.mean())) < 0.01 * 0.05 * 10
    assert torch.equal(observe("lenet", x, y, seed=0, defence=defence).observed_update, noisy.observed_update)
    assert not torch.equal(
        observe("lenet", x, y, seed=1, defence=defence).observed_update, noisy.observed_update
    )


ANNOUNCED = {
    # defence name -> (clip_norm, prune_ratio) it announces for a round of lr 0.1, batch 1, one step
    "none": (None, None),
    "clip": (1.0, None),
    "prune": (None, 0.9),
    "noise": (None, None),
    "dp": (0.1 * 1.0, None),  # one example, one step: per-example clipping bounds the update by lr * C
    "secagg": (None, None),
    "distributed-dp": (None, None),
}


def _small(kind):
    return kind(clients=3) if "clients" in {f.name for f in dataclasses.fields(kind)} else kind()


@pytest.mark.parametrize("name", list(DEFENCES))
def test_every_defence_announces_its_own_parameters_and_keeps_the_protocol(mnist, name):
    defence = _small(DEFENCES[name])
    shards = [ClientShard(i, mnist.test_x[i : i + 1], mnist.test_y[i : i + 1]) for i in range(3)]
    # whatever the caller wrote in the announced fields, the defence states its own
    public = _public(clip_norm=5.0, prune_ratio=0.25)
    observation, _ = defence.observe(
        public=public,
        server_model=server_model("lenet", (1, 28, 28), 10, seed=0, uniform=True),
        victim=shards[0],
        others=shards[1 : 1 + defence.others_needed],
        seed=0,
    )
    clip_norm, prune_ratio = ANNOUNCED[name]
    clients = 1 + defence.others_needed
    assert observation.public == dataclasses.replace(
        public, num_clients=clients, clip_norm=clip_norm, prune_ratio=prune_ratio
    )
    assert observation.kind == (ObservedKind.CLIENT_UPDATE if clients == 1 else ObservedKind.AGGREGATE)
    with pytest.raises(ValueError, match=f"needs {defence.others_needed} other clients"):
        defence.observe(public=public, server_model=torch.nn.Linear(2, 2), victim=shards[0], others=shards)
    with pytest.raises(ValueError, match="holds 2 examples, the round 1"):
        defence.observe(
            public=public,
            server_model=torch.nn.Linear(2, 2),
            victim=ClientShard(0, mnist.test_x[:2], mnist.test_y[:2]),
            others=shards[1 : 1 + defence.others_needed],
        )


def test_the_registry_is_the_command_lines_vocabulary_and_defences_are_frozen():
    assert list(DEFENCES) == ["none", "clip", "prune", "noise", "dp", "secagg", "distributed-dp"]
    assert all(kind.name == name for name, kind in DEFENCES.items())
    labels = [kind().label for kind in DEFENCES.values()]
    assert labels == [
        "no defence",
        "clip C=1",
        "prune 90%",
        "noise σ=0.01",
        "DP-SGD z=1",
        "SecAgg N=16",
        "distributed DP z=1 N=16",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ClipDefence().max_grad_norm = 2.0  # type: ignore[misc]
    assert SecAggDefence(clients=16) == SecAggDefence() != DistributedDPDefence()


@pytest.mark.parametrize(
    ("kind", "knobs", "message"),
    [
        (ClipDefence, {"max_grad_norm": 0.0}, "`max_grad_norm` 0.0 <= 0: use a positive `max_grad_norm`"),
        (DPSGDDefence, {"max_grad_norm": math.inf}, "`max_grad_norm` inf is not a finite number"),
        (DistributedDPDefence, {"max_grad_norm": -1.0}, "`max_grad_norm` -1.0 <= 0"),
        (
            DPSGDDefence,
            {"noise_multiplier": -0.5},
            "`noise_multiplier` -0.5 < 0: use `noise_multiplier` 0 or more",
        ),
        (DistributedDPDefence, {"noise_multiplier": math.nan}, "`noise_multiplier` nan is not a finite"),
        (DistributedDPDefence, {"noise_multiplier": 0.0}, "`noise_multiplier` 0.0 <= 0: use a positive"),
        (NoiseDefence, {"noise_std": math.inf}, "`noise_std` inf is not a finite number"),
        (PruneDefence, {"prune_ratio": 1.0}, r"`prune_ratio` 1.0 outside \[0, 1\)"),
        (PruneDefence, {"prune_ratio": -0.1}, r"`prune_ratio` -0.1 outside \[0, 1\)"),
        (SecAggDefence, {"clients": 1}, "`clients` 2 or more"),
        (DistributedDPDefence, {"clients": 0}, "`clients` 2 or more"),
    ],
)
def test_each_defence_validates_its_own_parameters(kind, knobs, message):
    with pytest.raises(ConfigError, match=message):
        kind(**knobs)


def test_a_parameter_of_another_defence_is_not_accepted():
    with pytest.raises(TypeError, match="prune_ratio"):
        NoDefence(prune_ratio=0.5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="clients"):
        DPSGDDefence(clients=4)  # type: ignore[call-arg]
