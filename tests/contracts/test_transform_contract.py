"""The :class:`~securefl.fl.types.UpdateTransform` contract, run on every transform in the package.

In the style of dp_accounting's accountant test suite: one list of cases (:data:`CASES`) builds
each implementation, and every test runs on all of them, on updates hypothesis varies (sizes,
layer splits, magnitudes across six orders, sample counts).  A transform must:

- return a :class:`~securefl.fl.types.Contribution` for the update's client, whose
  ``weighted_delta`` has the update's shape and dtype and is finite, with a finite positive
  weight, and leave the update as it was;
- send what it documents, checked against an independent reference of ``weighted_delta /
  weight`` and ``weight``:

  - ``weight_by_samples`` (FedAvg): the update itself, weight ``num_samples``;
  - ``ClipUpdate`` (DP-FedAvg): the update scaled to L2 norm at most ``clip``: unchanged inside
    the ball, else the same direction at norm ``clip``; weight 1;
  - ``PruneUpdate`` (attacks): per layer, the ``floor(ratio·size)`` smallest magnitudes zeroed
    and the others kept (a sort in numpy); weight ``num_samples``;
  - ``NoiseUpdate`` (attacks): the update plus ``N(0, std²)`` noise per entry (no entry beyond six
    standard deviations; on a large update the sample mean and std); weight ``num_samples``;
  - ``unclipped_update`` (the audit's clipping break): the update itself, weight 1;
  - the composition root's wrapper under DP (``_without_loss``): what it wraps, without the loss;

- keep the training loss, except where it documents that the loss does not leave the client.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from contract_helpers import implementations, is_transform_class, is_transform_function, qualified_name
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.attacks.defences import NoiseUpdate, PruneUpdate
from securefl.audit.breaks import unclipped_update
from securefl.federation import _without_loss
from securefl.fl.fedavg import weight_by_samples
from securefl.fl.types import Contribution, Update, UpdateTransform
from securefl.privacy.central import ClipUpdate

CLIP = 1.0
PRUNE_RATIO = 0.5
NOISE_STD = 0.1
FLOAT32 = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class Sample:
    """An update and the layer sizes of the model it came from."""

    update: Update
    layer_sizes: tuple[int, ...]


Check = Callable[[Sample, torch.Tensor, float], None]
"""``check(sample, sent, weight)``: ``sent = weighted_delta / weight`` against the reference."""


@dataclass(frozen=True)
class TransformCase:
    id: str
    implementation: object
    """The class or function that implements the plug point (the scan names it)."""
    build: Callable[[Sample], UpdateTransform]
    check: Check
    keeps_loss: bool = True
    deterministic: bool = True


def close(sent: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to the rounding of ``x·w/w`` in float32."""
    slack = 2 * FLOAT32 * expected.double().abs() + 1e-30
    return bool(((sent.double() - expected.double()).abs() <= slack).all())


def same_update_weight_by_samples(sample: Sample, sent: torch.Tensor, weight: float) -> None:
    assert weight == sample.update.num_samples
    assert close(sent, sample.update.delta)


def same_update_weight_one(sample: Sample, sent: torch.Tensor, weight: float) -> None:
    assert weight == 1.0
    assert torch.equal(sent, sample.update.delta)


def clipped(sample: Sample, sent: torch.Tensor, weight: float) -> None:
    assert weight == 1.0
    delta = sample.update.delta.double()
    norm = float(delta.norm())
    assert float(sent.double().norm()) <= CLIP
    if norm <= CLIP:
        assert torch.equal(sent, sample.update.delta)
    else:
        assert float(sent.double().norm()) == pytest.approx(CLIP, rel=1e-5)
        torch.testing.assert_close(sent.double(), delta * (CLIP / norm), rtol=1e-5, atol=1e-7 * CLIP)


def pruned(sample: Sample, sent: torch.Tensor, weight: float) -> None:
    assert weight == sample.update.num_samples
    delta = sample.update.delta.numpy().astype(np.float64)
    got = sent.double().numpy()
    start = 0
    for size in sample.layer_sizes:
        layer, sent_layer = delta[start : start + size], got[start : start + size]
        start += size
        drop = math.floor(PRUNE_RATIO * size)
        reference = layer.copy()
        reference[np.argsort(np.abs(layer), kind="stable")[:drop]] = 0.0
        kept = sent_layer != 0
        # every entry is the update's own or zero ...
        assert close(torch.from_numpy(sent_layer[kept]), torch.from_numpy(layer[kept]))
        # ... and the magnitudes left are the reference's (ties may zero other, equal entries)
        assert close(
            torch.from_numpy(np.sort(np.abs(sent_layer))), torch.from_numpy(np.sort(np.abs(reference)))
        )


def noised(sample: Sample, sent: torch.Tensor, weight: float) -> None:
    assert weight == sample.update.num_samples
    residual = sent.double() - sample.update.delta.double()
    slack = 4 * FLOAT32 * sample.update.delta.double().abs()
    assert bool((residual.abs() <= 6 * NOISE_STD + slack).all())
    if residual.numel() >= 1000:
        assert float(residual.std()) == pytest.approx(NOISE_STD, rel=0.1)
        assert abs(float(residual.mean())) <= 6 * NOISE_STD / math.sqrt(residual.numel())


CASES = [
    TransformCase(
        "fedavg-weight-by-samples",
        weight_by_samples,
        lambda s: weight_by_samples,
        same_update_weight_by_samples,
    ),
    TransformCase("dp-fedavg-clip-update", ClipUpdate, lambda s: ClipUpdate(CLIP), clipped),
    TransformCase(
        "attacks-prune-update",
        PruneUpdate,
        lambda s: PruneUpdate(PRUNE_RATIO, layer_sizes=s.layer_sizes),
        pruned,
    ),
    TransformCase(
        "attacks-noise-update",
        NoiseUpdate,
        lambda s: NoiseUpdate(NOISE_STD, generator=torch.Generator().manual_seed(0)),
        noised,
        deterministic=False,
    ),
    TransformCase(
        "audit-unclipped-update",
        unclipped_update,
        lambda s: unclipped_update,
        same_update_weight_one,
        keeps_loss=False,
    ),
    TransformCase(
        "federation-without-loss-of-weight-by-samples",
        _without_loss(weight_by_samples),
        lambda s: _without_loss(weight_by_samples),
        same_update_weight_by_samples,
        keeps_loss=False,
    ),
    TransformCase(
        "federation-without-loss-of-clip-update",
        _without_loss(ClipUpdate(CLIP)),
        lambda s: _without_loss(ClipUpdate(CLIP)),
        clipped,
        keeps_loss=False,
    ),
]

case = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


@st.composite
def samples(draw) -> Sample:
    layer_sizes = tuple(draw(st.lists(st.integers(1, 24), min_size=1, max_size=4)))
    size = sum(layer_sizes)
    values = draw(st.lists(st.floats(-1, 1, width=32), min_size=size, max_size=size))
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3]))
    update = Update(
        client_id=draw(st.integers(0, 10_000)),
        delta=torch.tensor(values, dtype=torch.float32) * scale,
        num_samples=draw(st.integers(1, 5_000)),
        train_loss=draw(st.floats(0, 10)),
    )
    return Sample(update, layer_sizes)


def check_contract(case: TransformCase, sample: Sample) -> Contribution:
    update = sample.update
    before = update.delta.clone()
    transform = case.build(sample)
    contribution = transform(update)
    assert isinstance(contribution, Contribution)
    assert contribution.client_id == update.client_id
    sent = contribution.weighted_delta
    assert sent.shape == update.delta.shape and sent.dtype == update.delta.dtype
    assert bool(torch.isfinite(sent).all())
    assert (
        isinstance(contribution.weight, float)
        and math.isfinite(contribution.weight)
        and contribution.weight > 0
    )
    assert torch.equal(update.delta, before), "the transform changed the update"
    assert contribution.train_loss == (update.train_loss if case.keeps_loss else 0.0)
    case.check(sample, sent / contribution.weight, contribution.weight)
    if case.deterministic:
        again = case.build(sample)(update)
        assert torch.equal(again.weighted_delta, sent) and again.weight == contribution.weight
    return contribution


# ---- the contract ------------------------------------------------------------------------------


def test_every_transform_in_the_package_is_in_the_contract():
    found = implementations(class_test=is_transform_class, function_test=is_transform_function)
    listed = {qualified_name(c.implementation) for c in CASES}
    assert found == listed, (
        f"transforms without a contract case: {sorted(found - listed)}; "
        f"cases naming no transform in the package: {sorted(listed - found)}"
    )


@case
@given(sample=samples())
@settings(max_examples=60, deadline=None)
def test_the_contribution_is_what_the_transform_documents(case, sample):
    check_contract(case, sample)


@case
def test_a_large_update_keeps_the_contract(case):
    """Sizes where the statistical checks have power (noise) and every layer prunes many."""
    generator = torch.Generator().manual_seed(1)
    layer_sizes = (2000, 500, 10)
    update = Update(7, torch.randn(sum(layer_sizes), generator=generator) * 0.05, 120, 1.5)
    check_contract(case, Sample(update, layer_sizes))


@case
def test_an_update_inside_and_outside_the_clip_ball(case):
    """One update of norm below ``CLIP`` and one far above, whatever the transform."""
    for norm in (0.5 * CLIP, 40 * CLIP):
        delta = torch.linspace(-1, 1, 33)
        update = Update(2, delta / delta.norm() * norm, 9, 0.25)
        check_contract(case, Sample(update, (20, 13)))
