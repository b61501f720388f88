"""The :class:`~securefl.fl.types.ServerUpdate` contract, run on every server update in the package.

In the style of dp_accounting's accountant test suite: one list of cases (:data:`CASES`) builds
each implementation, and every test runs on all of them.  A server update must:

- return a new tensor of the parameters' shape and dtype, leaving its inputs as they were, equal
  to the independent reference ``w + Σ/denominator`` (FedAvg: the weight sum; DP-FedAvg and
  distributed DP: the expected clients per round), up to the noise it documents (central DP-FedAvg:
  std ``z·clip/(q·N)`` on the average; the others add none);
- take an empty aggregate (:meth:`~securefl.fl.types.Aggregate.empty`, a round nobody's update
  reached): FedAvg and distributed DP leave the model unchanged, central DP releases its noise
  alone, and every such call is counted as a round (``ledger()`` after ``k`` calls says ``k``);
- when it is :class:`~securefl.fl.types.PrivacyAccounting`, report after every call a finite ε that
  never decreases and equals its accountant's reference: Opacus' RDP accountant for DP-FedAvg
  (Poisson ``(z/m0, q)``, or ``(z/2, 1)`` for fixed-size sampling: tests/privacy/test_central.py
  says why), the Skellam RDP bound of the released variances for distributed DP.  An update with
  nothing to account reports nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from contract_helpers import implementations, is_server_update, qualified_name
from opacus.accountants import create_accountant

from securefl.audit.observe import ObservedServerUpdate
from securefl.config import SecAggConfig
from securefl.fl.fedavg import WeightedMean
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.fl.types import Aggregate, Contribution, PrivacyAccounting, ServerUpdate
from securefl.privacy import DPFedAvgServerUpdate
from securefl.privacy.distributed import (
    DistributedDPChannel,
    DistributedDPServerUpdate,
    padded_length,
    rounded_l2_bound,
)
from securefl.privacy.skellam import skellam_epsilon

NUM_PARAMS = 400
CLIP = 1.0
DELTA = 1e-5
Z = 1.1
CLIENTS = 50
PER_ROUND = 5
ROUNDS = [4, 0, 3, 5]
"""The clients whose updates reach each round's aggregate in the ε tests (0: an empty round)."""


@dataclass(frozen=True)
class ServerUpdateCase:
    id: str
    implementation: type
    build: Callable[[], ServerUpdate]
    denominator: float | None
    """What the sum is divided by: the expected clients per round, or None for the weight sum."""
    noise_std: float = 0.0
    """Std of the noise the update adds to the average (per coordinate)."""
    weighted: bool = False
    """Contributions carry their sample counts as weights (FedAvg), not weight 1 (clipped, DP)."""
    accountant: Callable[[ServerUpdate, list[Aggregate]], float] | None = None
    """The reference ε after the calls made with these aggregates (None: nothing to account)."""


def dp_fedavg(**overrides) -> Callable[[], DPFedAvgServerUpdate]:
    options = {
        "noise_multiplier": Z,
        "clip_norm": CLIP,
        "delta": DELTA,
        "clients": CLIENTS,
        "clients_per_round": PER_ROUND,
        "seed": 0,
        **overrides,
    }
    return lambda: DPFedAvgServerUpdate(**options)


def opacus_rdp(noise_multiplier: float, sample_rate: float):
    """Opacus' RDP accountant, one step of ``(noise_multiplier, sample_rate)`` per round."""

    def epsilon(update: ServerUpdate, aggregates: list[Aggregate]) -> float:
        accountant = create_accountant(mechanism="rdp")
        for _ in aggregates:
            accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        return accountant.get_epsilon(delta=DELTA)

    return epsilon


def distributed() -> DistributedDPServerUpdate:
    secure = SecureAggregationChannel(
        config=SecAggConfig(bits=32, max_colluders=0),
        num_params=NUM_PARAMS,
        weight_bound=1,
        clients_per_round=2,
        max_clients=6,  # rounds of 2 to 6 clients
        seed=5,
    )
    channel = DistributedDPChannel(
        secure=secure,
        num_params=NUM_PARAMS,
        clip_norm=CLIP,
        noise_multiplier=Z,
        delta=DELTA,
        max_clients=6,
        seed=5,
    )
    return DistributedDPServerUpdate(channel=channel, expected_clients=PER_ROUND)


def skellam_reference(update: ServerUpdate, aggregates: list[Aggregate]) -> float:
    """The Skellam mechanism's RDP bound composed over the rounds that released a sum, at the noise
    variance each aggregate says it carried (no colluders: all of it honest), with the sensitivity
    of the scaled, rotated, conditionally rounded updates under substitution (twice the bound)."""
    assert isinstance(update, DistributedDPServerUpdate)
    channel = update.channel
    dim = padded_length(NUM_PARAMS)
    bound = rounded_l2_bound(channel.scale * CLIP, dim)
    l2, l1 = 2 * bound, 2 * min(math.sqrt(dim) * bound, bound**2)
    variances = [a.details["released_noise_variance"] * channel.scale**2 for a in aggregates if a.survivors]
    return skellam_epsilon(variances, l1=l1, l2=l2, delta=DELTA)


CASES = [
    ServerUpdateCase("fedavg-weighted-mean", WeightedMean, WeightedMean, None, weighted=True),
    ServerUpdateCase(
        "dp-fedavg-poisson",
        DPFedAvgServerUpdate,
        dp_fedavg(),
        PER_ROUND,
        Z * CLIP / PER_ROUND,
        accountant=opacus_rdp(Z, PER_ROUND / CLIENTS),
    ),
    ServerUpdateCase(
        "dp-fedavg-poisson-secagg-min-3",
        DPFedAvgServerUpdate,
        dp_fedavg(min_released_clients=3),
        PER_ROUND,
        Z * CLIP / PER_ROUND,
        accountant=opacus_rdp(Z / 3, PER_ROUND / CLIENTS),
    ),
    ServerUpdateCase(
        "dp-fedavg-fixed-size",
        DPFedAvgServerUpdate,
        dp_fedavg(client_sampling="fixed"),
        PER_ROUND,
        Z * CLIP / PER_ROUND,
        accountant=opacus_rdp(Z / 2, 1.0),
    ),
    ServerUpdateCase(
        "distributed-dp", DistributedDPServerUpdate, distributed, PER_ROUND, accountant=skellam_reference
    ),
    ServerUpdateCase(
        "audit-observed-weighted-mean",
        ObservedServerUpdate,
        lambda: ObservedServerUpdate(WeightedMean(), canaries=3),
        None,
        weighted=True,
    ),
    ServerUpdateCase(
        "audit-observed-dp-fedavg",
        ObservedServerUpdate,
        lambda: ObservedServerUpdate(dp_fedavg()(), canaries=3),
        PER_ROUND,
        Z * CLIP / PER_ROUND,
        accountant=opacus_rdp(Z, PER_ROUND / CLIENTS),
    ),
]

case = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
accounting = [c for c in CASES if c.accountant is not None]


def contributions(case: ServerUpdateCase, clients: int, *, seed: int) -> list[Contribution]:
    """Clipped updates (norm below ``CLIP``) with weight 1, or FedAvg's ``n_k·Δ_k`` and ``n_k``."""
    generator = torch.Generator().manual_seed(seed)
    made = []
    for client_id in range(clients):
        delta = torch.randn(NUM_PARAMS, generator=generator)
        delta = delta / delta.norm() * float(torch.rand((), generator=generator)) * CLIP
        weight = float(torch.randint(1, 30, (), generator=generator)) if case.weighted else 1.0
        made.append(Contribution(client_id, delta * weight, weight, 0.0))
    return made


def aggregate_for(case: ServerUpdateCase, update: ServerUpdate, clients: int, *, seed: int) -> Aggregate:
    """A round's aggregate of ``clients`` updates (none: empty); distributed DP's from its channel."""
    params = torch.zeros(NUM_PARAMS)
    if clients == 0:
        return Aggregate.empty(params)
    made = contributions(case, clients, seed=seed)
    if isinstance(update, DistributedDPServerUpdate):
        return update.channel.aggregate(made, round_index=seed)
    return Aggregate(
        weighted_delta_sum=torch.stack([c.weighted_delta for c in made]).sum(0),
        weight_sum=sum(c.weight for c in made),
        survivors=tuple(c.client_id for c in made),
        train_loss_sum=0.0,
    )


def start() -> torch.Tensor:
    return torch.randn(NUM_PARAMS, generator=torch.Generator().manual_seed(99))


def assert_new_tensor_like(result: torch.Tensor, params: torch.Tensor) -> None:
    assert isinstance(result, torch.Tensor)
    assert result.shape == params.shape and result.dtype == params.dtype
    shared = result.untyped_storage().data_ptr() == params.untyped_storage().data_ptr()
    assert not shared, "the new global model shares memory with the old one"


def assert_reference_update(
    case: ServerUpdateCase, result: torch.Tensor, params: torch.Tensor, aggregate: Aggregate
) -> None:
    """``result`` is ``params + Σ/denominator`` (float64), plus noise of ``case.noise_std``."""
    if case.denominator is None:
        step = aggregate.weighted_delta_sum.double() / aggregate.weight_sum if aggregate.weight_sum else 0.0
    else:
        step = aggregate.weighted_delta_sum.double() / case.denominator
    residual = result.double() - (params.double() + step)
    rounding = 8 * torch.finfo(torch.float32).eps * (params.double().abs() + 1)
    if case.noise_std == 0:
        assert bool((residual.abs() <= rounding).all()), f"off by {float(residual.abs().max()):.3g}"
    else:  # N(0, std²) per coordinate: no coordinate beyond 6 std, the sample std within 20%
        assert bool((residual.abs() <= 6 * case.noise_std + rounding).all())
        assert 0.8 * case.noise_std <= float(residual.std()) <= 1.2 * case.noise_std


def rounds_counted(update: ServerUpdate) -> int:
    assert isinstance(update, PrivacyAccounting)
    return update.ledger()["user_level"]["rounds"]


# ---- the contract ------------------------------------------------------------------------------


def test_every_server_update_in_the_package_is_in_the_contract():
    found = implementations(class_test=is_server_update)
    listed = {qualified_name(c.implementation) for c in CASES}
    assert found == listed, (
        f"server updates without a contract case: {sorted(found - listed)}; "
        f"cases naming no server update in the package: {sorted(listed - found)}"
    )


@case
@pytest.mark.parametrize("clients", [2, 5])
def test_the_new_model_is_a_new_tensor_equal_to_the_reference_and_the_inputs_stay(case, clients):
    update = case.build()
    params = start()
    aggregate = aggregate_for(case, update, clients, seed=clients)
    params_before, sum_before = params.clone(), aggregate.weighted_delta_sum.clone()
    result = update(params, aggregate)
    assert_new_tensor_like(result, params)
    assert torch.equal(params, params_before) and torch.equal(aggregate.weighted_delta_sum, sum_before)
    assert_reference_update(case, result, params, aggregate)


@case
def test_an_empty_aggregate_goes_through_and_every_call_is_a_round(case):
    update = case.build()
    params = start()
    for k in range(1, 4):
        result = update(params, Aggregate.empty(params))
        assert_new_tensor_like(result, params)
        if case.noise_std == 0:  # nothing arrived, nothing added: the model stays
            assert torch.equal(result, params)
        else:  # the noise alone is released
            assert not torch.equal(result, params)
            assert_reference_update(case, result, params, Aggregate.empty(params))
        if case.accountant is not None:
            assert rounds_counted(update) == k


@pytest.mark.parametrize("case", accounting, ids=[c.id for c in accounting])
def test_epsilon_is_finite_never_decreases_and_equals_the_accountant(case):
    update = case.build()
    assert isinstance(update, PrivacyAccounting)
    params = start()
    seen: list[Aggregate] = []
    previous = 0.0
    for round_index, clients in enumerate(ROUNDS, start=1):
        aggregate = aggregate_for(case, update, clients, seed=round_index)
        params = update(params, aggregate)
        seen.append(aggregate)
        epsilon = update.round_metrics()["user_epsilon"]
        assert math.isfinite(epsilon) and epsilon >= previous
        assert epsilon == pytest.approx(case.accountant(update, seen), rel=1e-9)
        ledger = update.ledger()["user_level"]
        assert ledger["rounds"] == round_index and ledger["epsilon"] == pytest.approx(epsilon, rel=1e-12)
        assert ledger["delta"] == DELTA and update.round_metrics()["user_delta"] == DELTA
        previous = epsilon
    assert previous > 0


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.accountant is None], ids=[c.id for c in CASES if c.accountant is None]
)
def test_an_update_with_nothing_to_account_reports_nothing(case):
    update = case.build()
    update(start(), aggregate_for(case, update, 3, seed=1))
    if isinstance(update, PrivacyAccounting):
        assert update.round_metrics() == {} and update.ledger() == {}
