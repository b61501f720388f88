"""FedAvg arithmetic against independent references (hand sums, centralized gradient descent)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parameters_to_vector

from securefl.federation import client_generator
from securefl.fl.fedavg import ClientSampler, PlainSum, WeightedMean, weight_by_samples
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard, Update


def test_weighted_mean_matches_hand_computed_reference():
    deltas = {0: [1.0, -2.0, 0.5], 1: [3.0, 0.0, -1.0], 2: [-1.0, 4.0, 2.0]}
    counts = {0: 10, 1: 30, 2: 60}
    updates = [Update(c, torch.tensor(d), counts[c], 0.0) for c, d in deltas.items()]
    aggregate = PlainSum().aggregate([weight_by_samples(u) for u in updates], round_index=1)
    new = WeightedMean()(torch.tensor([1.0, 1.0, 1.0]), aggregate)
    expected = [1.0 + sum(counts[c] * deltas[c][i] for c in deltas) / sum(counts.values()) for i in range(3)]
    assert new.tolist() == pytest.approx(expected, abs=1e-6)
    assert aggregate.survivors == (0, 1, 2)
    assert aggregate.weight_sum == 100


def test_empty_aggregate_leaves_model_unchanged():
    params = torch.tensor([0.5, -0.5])
    from securefl.fl.types import Aggregate

    empty = Aggregate(torch.zeros(2), 0.0, (), 0.0)
    assert torch.equal(WeightedMean()(params, empty), params)


def _linear_problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(37, 5, generator=generator)
    y = torch.randint(0, 3, (37,), generator=generator)
    return x, y


def test_fedsgd_with_all_clients_equals_one_centralized_full_batch_step():
    x, y = _linear_problem()
    bounds = [0, 7, 20, 37]  # unequal shards: weighting by sample count matters
    shards = [ClientShard(i, x[a:b], y[a:b]) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, shards = x.double(), [ClientShard(s.client_id, s.x.double(), s.y) for s in shards]
    params = parameters_to_vector(model.parameters()).detach().clone()
    lr = 0.3

    trainer = LocalSGDTrainer(model=model, task="classification", local_epochs=1, batch_size=None, lr=lr)
    contributions = [
        weight_by_samples(
            trainer.train(
                global_params=params, shard=s, round_index=1, generator=client_generator(0, 1, s.client_id)
            )
        )
        for s in shards
    ]
    federated = WeightedMean()(params, PlainSum().aggregate(contributions, round_index=1))

    central = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    torch.nn.utils.vector_to_parameters(params, central.parameters())
    loss = nn.functional.cross_entropy(central(x), y)
    gradients = torch.autograd.grad(loss, list(central.parameters()))
    expected = params - lr * torch.cat([g.flatten() for g in gradients])
    assert torch.allclose(federated, expected, atol=1e-12)


def test_local_trainer_does_not_leak_state_between_clients():
    """Momentum buffers are reset: training a client gives the same update whatever ran before."""
    x, y = _linear_problem(3)
    model = nn.Linear(5, 3)
    params = parameters_to_vector(model.parameters()).detach().clone()
    trainer = LocalSGDTrainer(
        model=model, task="classification", local_epochs=2, batch_size=8, lr=0.1, momentum=0.9
    )
    shard_a, shard_b = ClientShard(0, x[:20], y[:20]), ClientShard(1, x[20:], y[20:])
    first = trainer.train(
        global_params=params, shard=shard_a, round_index=1, generator=client_generator(0, 1, 0)
    )
    trainer.train(global_params=params, shard=shard_b, round_index=1, generator=client_generator(0, 1, 1))
    again = trainer.train(
        global_params=params, shard=shard_a, round_index=1, generator=client_generator(0, 1, 0)
    )
    assert torch.equal(first.delta, again.delta)
    assert first.num_samples == 20


@settings(max_examples=60, deadline=None)
@given(
    num_clients=st.integers(1, 40),
    data=st.data(),
    seed=st.integers(0, 2**31),
    round_index=st.integers(1, 1000),
)
def test_fixed_sampler_picks_distinct_eligible_clients_deterministically(
    num_clients, data, seed, round_index
):
    per_round = data.draw(st.integers(1, num_clients))
    eligible = data.draw(st.lists(st.integers(0, num_clients - 1), unique=True))
    sampler = ClientSampler(num_clients=num_clients, per_round=per_round, seed=seed)
    chosen = sampler.sample(round_index, eligible)
    assert chosen == sorted(set(chosen))
    assert set(chosen) <= set(eligible)
    assert len(chosen) == min(per_round, len(eligible))
    assert chosen == sampler.sample(round_index, list(reversed(eligible)))


def test_poisson_sampler_rate_matches_its_probability():
    sampler = ClientSampler(num_clients=50, per_round=10, scheme="poisson", seed=7)
    sizes = np.array([len(sampler.sample(r, range(50))) for r in range(1, 2001)])
    # Binomial(50, 0.2): mean 10, std of the mean over 2000 rounds ~0.063.
    assert abs(sizes.mean() - 10) < 0.3
    assert sizes.min() < 10 < sizes.max()


def test_central_dp_samples_clients_from_os_randomness_that_the_seed_cannot_recompute():
    """Amplification by sampling assumes the server does not know who was sampled: under central
    DP two runs with one seed sample differently, and the seed in config.json does not give the
    sets; plain runs keep their seeded sampling bit for bit (issue 9, point 9)."""
    from securefl.config import CentralDPConfig, RunConfig
    from securefl.data import load_dataset
    from securefl.federation import build_federation

    dataset = load_dataset("digits")
    base = {"dataset": "digits", "model": "mlp", "clients": 10, "clients_per_round": 5, "seed": 4}
    rounds, everyone = range(1, 41), list(range(10))
    for sampling in ("poisson", "fixed"):
        config = RunConfig(**base, central_dp=CentralDPConfig(client_sampling=sampling))
        first = build_federation(config, dataset=dataset).sampler
        second = build_federation(config, dataset=dataset).sampler
        drawn = [first.sample(r, everyone) for r in rounds]
        assert drawn != [second.sample(r, everyone) for r in rounds]
        assert drawn != [first.sample(r, everyone) for r in rounds]  # not a function of the round
        from_seed = ClientSampler(num_clients=10, per_round=5, scheme=sampling, seed=config.seed)
        assert drawn != [from_seed.sample(r, everyone) for r in rounds]
        assert first.seed is None  # nothing to recompute them from
    plain = build_federation(RunConfig(**base), dataset=dataset).sampler
    for r in rounds:  # the seeded draw, recomputed independently
        expected = np.random.default_rng([4, r, 0x5A]).choice(np.arange(10), size=5, replace=False)
        assert plain.sample(r, everyone) == sorted(int(c) for c in expected)
