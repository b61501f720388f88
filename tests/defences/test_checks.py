"""Parameter checks: the imprint and switched-off layers are flagged, honest models are not."""

from __future__ import annotations

import pytest
import torch

from securefl.attacks.imprint import MeasurementPrior, imprint_model, measurement_direction
from securefl.defences import checks
from securefl.errors import ModelRefusedError
from securefl.models import build_model

SHAPE = (1, 28, 28)


def test_rank_one_share_matches_the_singular_values():
    generator = torch.Generator().manual_seed(0)
    for matrix in (torch.randn(40, 30, generator=generator), torch.randn(64, 1) @ torch.randn(1, 50)):
        values = torch.linalg.svdvals(matrix.double())
        expected = float(values[0] ** 2 / (values**2).sum())
        assert checks.rank_one_share(matrix) == pytest.approx(expected, rel=1e-6)


def test_dead_unit_share_against_brute_force_over_the_cube_corners():
    layer = torch.nn.Linear(3, 5)
    corners = torch.tensor([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=torch.float32)
    # A linear function's maximum over the cube sits at a corner.
    never = (layer(corners).max(dim=0).values <= 0).double().mean()
    assert checks.dead_unit_share(layer) == pytest.approx(float(never))


@pytest.mark.parametrize("placement,bins", [("front", 128), ("mlp", 64)])
@pytest.mark.parametrize("dead", [False, True])
def test_imprint_and_switched_off_models_are_refused(placement, bins, dead):
    direction = measurement_direction(SHAPE, seed=0)
    model, _ = imprint_model(
        placement=placement,
        base_model="mlp",
        input_shape=SHAPE,
        num_outputs=10,
        bins=bins,
        direction=direction,
        prior=MeasurementPrior(0.0, 1.0),
        seed=0,
        dead=dead,
    )
    names = {f.check for f in checks.inspect(model, input_shape=SHAPE)}
    assert "rank-one share" in names
    assert ("dead-unit share" in names) == dead
    with pytest.raises(ModelRefusedError):
        checks.check(model, input_shape=SHAPE)


@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet"])
def test_freshly_initialised_models_pass(name):
    for seed in range(20):
        checks.check(build_model(name, input_shape=SHAPE, num_outputs=10, seed=seed), input_shape=SHAPE)


def test_honest_training_rounds_pass(mnist):
    """200 FedSGD steps of the mlp on real digits: no step trips a check (the benchmark runs 1,000)."""
    model = build_model("mlp", input_shape=SHAPE, num_outputs=10, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        rows = torch.randint(len(mnist.train_x), (64,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(mnist.train_x[rows]), mnist.train_y[rows]).backward()
        optimizer.step()
        assert checks.inspect(model, input_shape=SHAPE) == []
