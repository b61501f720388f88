"""Parameter checks on the client's own data: the imprint and switched-off layers are flagged --
also when the attacker hides weights where the data never looks -- honest models are not."""

from __future__ import annotations

import pytest
import torch

from securefl.attacks.imprint import (
    MeasurementPrior,
    hide_where_the_data_never_looks,
    imprint_model,
    measurement_direction,
)
from securefl.defences import checks
from securefl.errors import ConfigError, ModelRefusedError
from securefl.models import build_model

SHAPE = (1, 28, 28)


def _imprint(placement: str, bins: int, *, dead: bool = False, prior=None):
    model, _ = imprint_model(
        placement=placement,
        base_model="mlp",
        input_shape=SHAPE,
        num_outputs=10,
        bins=bins,
        direction=measurement_direction(SHAPE, seed=0),
        prior=prior or MeasurementPrior(0.0, 1.0),
        seed=0,
        dead=dead,
    )
    return model


def test_rank_one_share_matches_the_singular_values():
    generator = torch.Generator().manual_seed(0)
    for matrix in (torch.randn(40, 30, generator=generator), torch.randn(64, 1) @ torch.randn(1, 50)):
        values = torch.linalg.svdvals(matrix.double())
        expected = float(values[0] ** 2 / (values**2).sum())
        assert checks.rank_one_share(matrix) == pytest.approx(expected, rel=1e-6)


def test_restricted_weight_has_the_singular_values_of_the_weight_times_the_data_projector():
    """Reference: ``W[active] P`` with ``P = pinv(Xc) Xc`` the projector onto the centred rows."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(20, 30, generator=generator, dtype=torch.float64)
    inputs = torch.randn(9, 30, generator=generator, dtype=torch.float64)
    outputs = torch.randn(9, 20, generator=generator, dtype=torch.float64) - 1.5
    active = [i for i in range(20) if any(outputs[b, i] > 0 for b in range(9))]
    centred = inputs - inputs.mean(0)
    projector = torch.linalg.pinv(centred) @ centred
    rank = min(len(active), 8)  # nine centred rows span eight dimensions
    expected = torch.linalg.svdvals(weight[active] @ projector)[:rank]
    got = torch.linalg.svdvals(checks.restricted_weight(weight, inputs, outputs))
    assert checks.restricted_weight(weight, inputs, outputs).shape == (len(active), 8)
    assert torch.allclose(got[:rank], expected, atol=1e-9)


def test_dead_unit_share_on_against_a_loop():
    outputs = torch.tensor([[-1.0, 0.0, 2.0, -3.0], [-2.0, 0.0, -1.0, 0.5]])
    never = sum(all(outputs[b, u] <= 0 for b in range(2)) for u in range(4)) / 4
    assert checks.dead_unit_share_on(outputs) == pytest.approx(never)


@pytest.mark.parametrize("placement,bins", [("front", 128), ("mlp", 64)])
@pytest.mark.parametrize("dead", [False, True])
def test_imprint_and_switched_off_models_are_refused_on_real_digits(mnist, placement, bins, dead):
    prior = MeasurementPrior.fit(mnist.test_x, measurement_direction(SHAPE, seed=0))
    model = _imprint(placement, bins, dead=dead, prior=prior)
    findings = checks.inspect(model, data=mnist.train_x[:8])
    names = {(f.layer, f.check) for f in findings}
    first = "0.bins" if placement == "front" else "net.1"
    if dead:
        assert (first, "dead-unit share on the data") in names
    else:
        assert (first, "rank-one share on the data") in names
    with pytest.raises(ModelRefusedError, match="on this client's data"):
        checks.check(model, data=mnist.train_x[:8])


def test_weights_hidden_where_the_data_never_looks_are_still_refused(mnist):
    """The reviewer's construction: random layer-1 weights on the pixels that are 0 in every
    image (the bins read the same) and large random rows on switched-off layer-2 units; the
    checks over the input cube passed it, the checks on the data do not."""
    prior = MeasurementPrior.fit(mnist.test_x, measurement_direction(SHAPE, seed=0))
    model = _imprint("mlp", 64, prior=prior)
    batch = mnist.train_x[:8]
    zero = (torch.cat([mnist.train_x, mnist.test_x]).flatten(1).abs().max(0).values == 0).float()
    before = model.net[1](batch.flatten(1))
    generator = torch.Generator().manual_seed(1)
    hide_where_the_data_never_looks(model, unused_inputs=zero, generator=generator)
    assert torch.allclose(model.net[1](batch.flatten(1)), before, atol=1e-5)  # the bins read the same
    names = {(f.layer, f.check) for f in checks.inspect(model, data=batch)}
    assert ("net.1", "rank-one share on the data") in names
    assert ("net.3", "rank-one share on the data") in names
    # Switched off for everyone else (as model inconsistency sends it): dead on the data.
    switched_off = _imprint("mlp", 64, dead=True, prior=prior)
    with torch.no_grad():
        switched_off.net[1].weight += (
            1e7 * torch.randn(switched_off.net[1].weight.shape, generator=generator) * zero
        )
    names = {(f.layer, f.check) for f in checks.inspect(switched_off, data=batch)}
    assert ("net.1", "dead-unit share on the data") in names


def test_the_checks_need_a_batch():
    with pytest.raises(ConfigError, match="batch"):
        checks.inspect(build_model("mlp", input_shape=SHAPE, num_outputs=10), data=torch.zeros(0, *SHAPE))


@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet"])
def test_freshly_initialised_models_pass_on_real_digits(mnist, name):
    for seed in range(20):
        model = build_model(name, input_shape=SHAPE, num_outputs=10, seed=seed)
        checks.check(model, data=mnist.train_x[8 * seed : 8 * seed + 8])


def test_honest_training_rounds_pass(mnist):
    """200 SGD steps of the mlp at lr 0.1 on real digits: no step trips a check on a batch of 8
    (the benchmark's honest section runs FedAvg rounds over a grid of learning rates)."""
    model = build_model("mlp", input_shape=SHAPE, num_outputs=10, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        rows = torch.randint(len(mnist.train_x), (64,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(mnist.train_x[rows]), mnist.train_y[rows]).backward()
        optimizer.step()
        assert checks.inspect(model, data=mnist.train_x[rows[:8]]) == []
