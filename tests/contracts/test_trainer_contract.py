"""The :class:`~securefl.fl.types.ClientTrainer` contract, run on every trainer in the package.

In the style of dp_accounting's accountant test suite: one list of cases (:data:`CASES`) names a
way to build each implementation, and every test below runs on all of them.  A trainer must:

- return an :class:`~securefl.fl.types.Update` for the shard's client, whose ``delta`` has the
  parameter vector's shape and dtype, with ``num_samples == len(shard)`` and a finite training loss
  (under DP-SGD also NaN, which the trainer documents for a round whose Poisson batches were all
  empty); never change ``global_params``;
- answer ``can_train`` with a bool (True for every client of a fresh trainer without a budget);
- be reproducible: plain trainers from the generator passed to ``train`` (same seed, same delta
  bit for bit); DP trainers from their own test ``seed`` alone, never touching the passed
  generator (the simulation's, which the server knows);
- keep clients apart: what one client's training left behind (weights, momentum) never reaches
  the next client's result, which equals a fresh trainer's.

Independent references for the values themselves follow the contract: FedSGD's update is one
full-batch gradient step computed by autograd, local SGD the minibatch SGD recurrence (momentum,
weight decay) written out by hand, a canary client's update the crafted Dirac vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from contract_helpers import implementations, is_trainer, qualified_name
from torch import nn

from securefl.audit.canaries import CanaryClientTrainer
from securefl.config import DPConfig
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard, ClientTrainer, Update
from securefl.fl.vectors import to_vector
from securefl.models import build_model
from securefl.privacy import DPSGDEngine, DPSGDTrainer

FEATURES = 64  # digits-sized inputs (8x8 images, flattened)
CLASSES = 10
SIZES = (24, 17, 32, 9)
BATCH = 8
LR = 0.1
DP = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)

TrainerFor = Callable[[int], ClientTrainer]
"""One simulated federation's trainers: client id -> the trainer that client holds."""


def mlp(seed: int = 0) -> nn.Module:
    return build_model("mlp", input_shape=(FEATURES,), num_outputs=CLASSES, seed=seed)


def linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(FEATURES, 1)


def shards_for(task: str) -> list[ClientShard]:
    generator = torch.Generator().manual_seed(0)
    shards = []
    for client_id, size in enumerate(SIZES):
        x = torch.randn(size, FEATURES, generator=generator)
        if task == "classification":
            y = torch.randint(0, CLASSES, (size,), generator=generator)
        else:
            y = torch.randn(size, generator=generator)
        shards.append(ClientShard(client_id=client_id, x=x, y=y))
    return shards


@dataclass(frozen=True)
class TrainerCase:
    """How to build one implementation's trainers for a fresh federation of :data:`SIZES`."""

    id: str
    implementation: type
    build: Callable[[int], TrainerFor]
    """``build(seed)``: the trainers; ``seed`` is the DP trainers' test seed (others ignore it)."""
    task: str = "classification"
    model: Callable[[int], nn.Module] = mlp
    dp: bool = False
    """The trainer owns its randomness (seeded for tests) and ignores the passed generator."""
    independent_clients: bool = True
    """Each client's result depends on nothing but its own inputs (no randomness shared across
    clients), so it can be compared with a fresh trainer's."""


def local_sgd_fedavg(seed: int) -> TrainerFor:
    trainer = LocalSGDTrainer(
        model=mlp(),
        task="classification",
        local_epochs=2,
        batch_size=BATCH,
        lr=LR,
        momentum=0.9,
        weight_decay=1e-3,
    )
    return lambda client_id: trainer


def local_sgd_fedsgd(seed: int) -> TrainerFor:
    """FedSGD: one full-batch step without momentum (what the composition root builds)."""
    trainer = LocalSGDTrainer(model=mlp(), task="classification", local_epochs=1, batch_size=None, lr=LR)
    return lambda client_id: trainer


def local_sgd_regression(seed: int) -> TrainerFor:
    trainer = LocalSGDTrainer(
        model=linear(), task="regression", local_epochs=1, batch_size=BATCH, lr=0.01, momentum=0.5
    )
    return lambda client_id: trainer


def dp_sgd_per_client(seed: int) -> TrainerFor:
    """What the composition root builds under ``dp``: one trainer (and ledger, and generator) per
    client, all sharing one engine."""
    engine = DPSGDEngine(
        model=mlp(),
        task="classification",
        lr=LR,
        max_grad_norm=DP.max_grad_norm,
        batch_size=BATCH,
        momentum=0.9,
    )
    trainers = {
        client_id: DPSGDTrainer(
            config=DP,
            client_sizes={client_id: size},
            rounds=3,
            local_epochs=1,
            batch_size=BATCH,
            engine=engine,
            seed=1000 * seed + client_id,
        )
        for client_id, size in enumerate(SIZES)
    }
    return trainers.__getitem__


def dp_sgd_multi_client(seed: int) -> TrainerFor:
    """One trainer, one ledger and one generator for every client (single-process uses)."""
    trainer = DPSGDTrainer(
        config=DP,
        client_sizes=dict(enumerate(SIZES)),
        rounds=3,
        local_epochs=1,
        batch_size=BATCH,
        model=mlp(),
        task="classification",
        lr=LR,
        momentum=0.9,
        seed=seed,
    )
    return lambda client_id: trainer


CANARY_FIRST = 2
"""Clients 0 and 1 train; clients 2 and 3 are canary clients (canary 0 included, canary 1 not)."""
CANARY_INCLUDED = np.array([True, False])
CANARY_NORM = 3.0


def canary(seed: int) -> TrainerFor:
    num_params = sum(p.numel() for p in mlp().parameters())
    trainer = CanaryClientTrainer(
        local_sgd_fedavg(seed)(0),
        first=CANARY_FIRST,
        included=CANARY_INCLUDED,
        num_params=num_params,
        norm=CANARY_NORM,
    )
    return lambda client_id: trainer


CASES = [
    TrainerCase("local-sgd-fedavg", LocalSGDTrainer, local_sgd_fedavg),
    TrainerCase("local-sgd-fedsgd", LocalSGDTrainer, local_sgd_fedsgd),
    TrainerCase("local-sgd-regression-linear", LocalSGDTrainer, local_sgd_regression, "regression", linear),
    TrainerCase("dp-sgd-per-client-shared-engine", DPSGDTrainer, dp_sgd_per_client, dp=True),
    TrainerCase("dp-sgd-multi-client", DPSGDTrainer, dp_sgd_multi_client, dp=True, independent_clients=False),
    TrainerCase("canary-over-local-sgd", CanaryClientTrainer, canary),
]

case = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


def global_params(case: TrainerCase) -> torch.Tensor:
    """A global model other than the trainer's own initial weights."""
    return to_vector(case.model(1).parameters())


def train(
    trainer_for: TrainerFor, shard: ClientShard, params: torch.Tensor, *, seed: int, round_index: int = 0
) -> Update:
    return trainer_for(shard.client_id).train(
        global_params=params,
        shard=shard,
        round_index=round_index,
        generator=torch.Generator().manual_seed(seed),
    )


# ---- the contract ------------------------------------------------------------------------------


def test_every_trainer_in_the_package_is_in_the_contract():
    found = implementations(class_test=is_trainer)
    listed = {qualified_name(c.implementation) for c in CASES}
    assert found == listed, (
        f"trainers without a contract case: {sorted(found - listed)}; "
        f"cases naming no trainer in the package: {sorted(listed - found)}"
    )


@case
def test_train_returns_an_update_describing_the_shard_and_leaves_the_global_model(case):
    trainer_for = case.build(0)
    params = global_params(case)
    before = params.clone()
    for shard in shards_for(case.task):
        update = train(trainer_for, shard, params, seed=shard.client_id)
        assert isinstance(update, Update)
        assert update.client_id == shard.client_id
        assert update.delta.shape == params.shape and update.delta.dtype == params.dtype
        assert bool(torch.isfinite(update.delta).all())
        assert type(update.num_samples) is int and update.num_samples == len(shard)
        assert isinstance(update.train_loss, float)
        assert np.isfinite(update.train_loss) or (case.dp and np.isnan(update.train_loss))
        assert update.delta.untyped_storage().data_ptr() != params.untyped_storage().data_ptr()
        assert torch.equal(params, before), "train changed global_params"


@case
def test_can_train_is_a_bool_and_a_fresh_trainer_lets_every_client_train(case):
    trainer_for = case.build(0)
    for client_id in range(len(SIZES)):
        answer = trainer_for(client_id).can_train(client_id)
        assert type(answer) is bool and answer


@case
def test_same_randomness_gives_the_same_update_bit_for_bit(case):
    params = global_params(case)
    first, again = case.build(0), case.build(0)
    for shard in shards_for(case.task):
        if case.dp:  # the trainer's own seed decides; the passed generator is neither used nor advanced
            passed = torch.Generator().manual_seed(5)
            state = passed.get_state()
            one = first(shard.client_id).train(
                global_params=params, shard=shard, round_index=0, generator=passed
            )
            assert torch.equal(passed.get_state(), state), "DP-SGD drew from the simulation's generator"
            other = train(again, shard, params, seed=6)
        else:
            one = train(first, shard, params, seed=5)
            other = train(again, shard, params, seed=5)
        assert torch.equal(one.delta, other.delta)
        assert one.train_loss == other.train_loss or (np.isnan(one.train_loss) and np.isnan(other.train_loss))


@pytest.mark.parametrize("case", [c for c in CASES if c.dp], ids=[c.id for c in CASES if c.dp])
def test_a_dp_trainer_draws_its_noise_from_its_own_seed(case):
    params = global_params(case)
    shard = shards_for(case.task)[0]
    assert not torch.equal(
        train(case.build(0), shard, params, seed=5).delta, train(case.build(1), shard, params, seed=5).delta
    )


@case
@pytest.mark.parametrize(("first", "second"), [(0, 1), (3, 2)])
def test_training_one_client_leaves_nothing_for_the_next(case, first, second):
    """``first`` trains from a very different model (other weights, other momentum) before
    ``second`` trains; ``second``'s update is the one it gets after ``first`` trained from the
    global model, and (without randomness shared across clients) a fresh trainer's."""
    shards = shards_for(case.task)
    params = global_params(case)
    elsewhere = params + torch.randn(params.shape, generator=torch.Generator().manual_seed(9))
    perturbed = case.build(0)
    train(perturbed, shards[first], elsewhere, seed=11)
    got = train(perturbed, shards[second], params, seed=22)
    plain = case.build(0)
    train(plain, shards[first], params, seed=11)
    expected = train(plain, shards[second], params, seed=22)
    assert torch.equal(got.delta, expected.delta)
    if case.independent_clients:
        alone = train(case.build(0), shards[second], params, seed=22)
        assert torch.equal(got.delta, alone.delta)


# ---- independent references for the values -------------------------------------------------------


def gradient(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy's gradient at ``params``, by autograd on a fresh model."""
    model = mlp()
    nn.utils.vector_to_parameters(params.detach().float().clone(), model.parameters())
    nn.functional.cross_entropy(model(x), y).backward()
    return nn.utils.parameters_to_vector(p.grad for p in model.parameters())


def test_fedsgd_is_one_full_batch_gradient_step():
    params = global_params(CASES[1])  # local-sgd-fedsgd
    trainer_for = local_sgd_fedsgd(0)
    for shard in shards_for("classification"):
        update = train(trainer_for, shard, params, seed=3)
        expected = -LR * gradient(params, shard.x, shard.y)
        torch.testing.assert_close(update.delta, expected, rtol=1e-4, atol=1e-6)


def test_local_sgd_follows_the_minibatch_sgd_recurrence():
    """Two epochs of shuffled minibatches with momentum 0.9 and weight decay, written out:
    ``g = ∇L_B(w) + λw``, ``b = g`` on the first step, else ``b = μb + g``; ``w -= lr·b``."""
    params = global_params(CASES[0])  # local-sgd-fedavg
    trainer_for = local_sgd_fedavg(0)
    for shard in shards_for("classification"):
        update = train(trainer_for, shard, params, seed=4)
        generator = torch.Generator().manual_seed(4)
        w, buffer = params.double().clone(), None
        for _ in range(2):
            for batch in torch.randperm(len(shard), generator=generator).split(BATCH):
                grad = gradient(w, shard.x[batch], shard.y[batch]).double() + 1e-3 * w
                buffer = grad if buffer is None else 0.9 * buffer + grad
                w = w - LR * buffer
        torch.testing.assert_close(update.delta.double(), w - params.double(), rtol=1e-4, atol=1e-5)


def test_canary_clients_send_the_crafted_dirac_update_and_the_others_train():
    params = global_params(CASES[-1])  # canary-over-local-sgd
    shards = shards_for("classification")
    trainer_for = canary(0)
    reference = local_sgd_fedavg(0)(0)
    for shard in shards:
        update = train(trainer_for, shard, params, seed=8)
        if shard.client_id < CANARY_FIRST:
            expected = reference.train(
                global_params=params, shard=shard, round_index=0, generator=torch.Generator().manual_seed(8)
            ).delta
        else:
            slot = shard.client_id - CANARY_FIRST
            expected = torch.zeros_like(params)
            if CANARY_INCLUDED[slot]:
                expected[len(params) - len(CANARY_INCLUDED) + slot] = CANARY_NORM
        assert torch.equal(update.delta, expected)
