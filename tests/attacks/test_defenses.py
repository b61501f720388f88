"""Each defence runs through securefl's real code path and does what it says, checked against
independent references (numpy pruning, plain clipping, Opacus' accountant, the plain mean)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attack_helpers import observe, server_model
from opacus.accountants import RDPAccountant

from securefl.attacks.defenses import (
    DEFAULT_DP_DELTA,
    Defence,
    NoiseUpdate,
    PruneUpdate,
    RoundSetup,
    observe_round,
)
from securefl.attacks.observation import ObservedKind
from securefl.errors import ConfigError
from securefl.fl.client import LocalSGDTrainer
from securefl.fl.types import ClientShard, Update
from securefl.fl.vectors import to_vector


def _plain_gradient(model_name, x, y, *, seed, uniform=True):
    model = server_model(model_name, tuple(x.shape[1:]), 10, seed=seed, uniform=uniform)
    loss = torch.nn.functional.cross_entropy(model(x.double()), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def test_prune_matches_a_numpy_per_layer_reference():
    generator = torch.Generator().manual_seed(0)
    sizes = [7, 30, 1, 12]
    delta = torch.randn(sum(sizes), generator=generator, dtype=torch.float64)
    contribution = PruneUpdate(0.5, layer_sizes=sizes)(Update(0, delta, 3, 0.0))
    expected = []
    for layer in np.split(delta.numpy(), np.cumsum(sizes)[:-1]):
        drop = int(np.floor(0.5 * layer.size))
        kept = layer.copy()
        kept[np.argsort(np.abs(layer))[:drop]] = 0
        expected.append(kept)
    assert contribution.weight == 3
    np.testing.assert_allclose(contribution.weighted_delta.numpy() / 3, np.concatenate(expected), rtol=1e-15)
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
    clipped = observe("lenet", x, y, seed=0, defence=Defence("clip", max_grad_norm=0.01))
    plain = 0.1 * _plain_gradient("lenet", x, y, seed=0)
    assert float(plain.norm()) > 0.01
    assert float(clipped.observed_update.norm()) == pytest.approx(0.01, rel=1e-5)
    cosine = torch.nn.functional.cosine_similarity(clipped.observed_update, plain, dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-12)
    assert clipped.public.clip_norm == 0.01


def test_dp_sgd_without_noise_is_per_example_clipping_and_epsilon_is_opacus(mnist):
    x, y = mnist.test_x[:1], mnist.test_y[:1]
    gradient = _plain_gradient("lenet", x, y, seed=0)
    noiseless = observe("lenet", x, y, seed=0, defence=Defence("dp", noise_multiplier=0.0, max_grad_norm=1.0))
    expected = 0.1 * gradient * min(1.0, 1.0 / float(gradient.norm()))
    torch.testing.assert_close(noiseless.observed_update, expected, rtol=1e-6, atol=1e-9)

    setup = RoundSetup("lenet", (1, 28, 28), 10, batch_size=1, local_steps=2, learning_rate=0.1)
    _, facts = observe_round(
        setup=setup,
        defence=Defence("dp", noise_multiplier=1.0, max_grad_norm=1.0),
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
    setup = RoundSetup("lenet", (1, 28, 28), 10, batch_size=1, local_steps=1, learning_rate=0.1)
    model = server_model("lenet", (1, 28, 28), 10, seed=0, uniform=True)
    observation, facts = observe_round(
        setup=setup,
        defence=Defence("secagg", clients=3),
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


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"name": "none", "prune_ratio": 0.5}, "--prune-ratio belongs to --defense prune"),
        ({"name": "dp", "clients": 4}, "--clients belongs to --defense secagg"),
        ({"name": "clip", "noise_multiplier": 1.0}, "--noise-multiplier belongs to --defense dp"),
        ({"name": "secagg", "noise_std": 0.1}, "--noise-std belongs to --defense noise"),
        ({"name": "noise", "max_grad_norm": 1.0}, "--max-grad-norm belongs to --defense clip or dp"),
        ({"name": "shield"}, "unknown defence"),
        ({"name": "secagg", "clients": 1}, "--clients 2 or more"),
        ({"name": "prune", "prune_ratio": 1.0}, "outside"),
        ({"name": "dp", "max_grad_norm": 0.0}, "positive"),
    ],
)
def test_defence_knobs_are_validated(knobs, message):
    with pytest.raises(ConfigError, match=message):
        Defence(**knobs)
