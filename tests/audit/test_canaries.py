"""Dirac canaries, checked with plain autograd (no Opacus): one coordinate, a fixed norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from securefl.audit.canaries import CanaryLayout, draw_inclusion
from securefl.data import load_dataset
from securefl.models import build_model


def _gradient(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", ["digits", "toy"])
def test_each_canary_pushes_only_its_own_coordinate_with_the_crafted_norm(name):
    dataset = load_dataset(name, seed=0)
    m, norm = 7, 3.5
    layout = CanaryLayout(dataset.info, canaries=m, norm=norm)
    base = build_model("mlp", input_shape=dataset.input_shape, num_outputs=dataset.num_outputs, seed=0)
    model = layout.wrap(base)
    with torch.no_grad():  # trained weights: the canary gradient must not depend on them
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    loss_fn = torch.nn.functional.cross_entropy if dataset.task == "classification" else None
    included = np.ones(m, dtype=bool)
    included[3] = False
    rows, targets = layout.canary_rows(included)
    count = sum(p.numel() for p in model.parameters())
    for j in range(m):
        output = model(rows[j : j + 1])
        if loss_fn is not None:
            loss = loss_fn(output, targets[j : j + 1])
        else:
            loss = torch.nn.functional.mse_loss(output.squeeze(-1), targets[j : j + 1])
        gradient = _gradient(model, loss)
        if included[j]:
            assert torch.nonzero(gradient).flatten().tolist() == [count - m + j]
            assert float(gradient[count - m + j]) == pytest.approx(-norm, rel=1e-5)
        else:  # a blank row: nothing at all
            assert torch.count_nonzero(gradient) == 0
    # a real row is the base model's output and never touches a canary coordinate
    real = layout.real_rows(dataset.train_x[:5])
    assert torch.allclose(model(real), base(dataset.train_x[:5]))
    target = dataset.train_y[:5]
    loss = (
        torch.nn.functional.cross_entropy(model(real), target)
        if loss_fn is not None
        else torch.nn.functional.mse_loss(model(real).squeeze(-1), target)
    )
    assert torch.count_nonzero(_gradient(model, loss)[-m:]) == 0


def test_inclusion_bits_are_fair_coins_from_the_operating_system():
    first, second = draw_inclusion(4000), draw_inclusion(4000)
    assert abs(first.mean() - 0.5) < 0.05  # 6 standard deviations
    assert not np.array_equal(first, second)  # not seeded
