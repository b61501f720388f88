"""The imprint attack: a binned linear layer whose gradients store single inputs.

Fowl, Geiping, Czaja, Goldblum & Goldstein, "Robbing the Fed: Directly Obtaining Private Data in
Federated Learning with Modified Models", ICLR 2022.  A malicious server gives a linear layer with
``K`` ReLU units one shared measurement direction ``w`` and increasing thresholds
``c_0 < ... < c_{K-1}`` (unit ``i`` computes ``relu(w·x - c_i)``), and makes the layer after it
see every unit alike (all its columns equal), so a sample's gradient ``g_s`` reaching each unit
is the same.  Unit ``i`` is active for the samples with ``w·x > c_i``, so the gradients of two
adjacent units differ only by the samples of bin ``[c_i, c_{i+1})``:

    dL/dW_i - dL/dW_{i+1} = sum_{s in bin i} g_s x_s,   dL/db_i - dL/db_{i+1} = sum_{s in bin i} g_s

and a bin that holds one sample gives it back exactly: ``x = ΔW_i / Δb_i``.  Everything is linear
in the samples, so it works just as well on a sum of many clients' updates -- which is all secure
aggregation reveals: the bins are shared by all ``M`` images of the round, and with thresholds at
the quantiles of the measurement's distribution an image is alone in its bin with probability
``(1 - 1/K)^(M - 1) ≈ exp(-M/K)``.

Two placements:

- ``front``: an extra block in front of the model (``x + V relu(W x + b)`` reshaped to the
  image, ``V``'s columns equal and small), the paper's construction, with as many bins as the
  attacker likes; architecture pinning refuses it (:mod:`securefl.defences.pinning`);
- ``mlp``: the first linear layer of the pinned ``mlp`` model repurposed (its 64 units are the
  bins, the second layer's columns made equal): the architecture is exactly the honest one, only
  the weights are malicious.  :mod:`securefl.defences.checks` looks for exactly this structure.

The attacker knows two numbers about the data: the mean and standard deviation of the
measurement ``w·x`` (the paper's assumption: a Gaussian fit to public data); thresholds sit at the
Gaussian quantiles ``i / K``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from securefl.attacks.observation import Observation
from securefl.errors import ConfigError
from securefl.models import MLP, build_model

PLACEMENTS = ("front", "mlp")
DEAD_BIAS = -1.0e6
"""The bias of a unit no input in ``[0, 1]`` can activate (model inconsistency's other clients)."""
DOWNSTREAM_SCALE = 0.1
"""Scale of the equal columns after the bins, relative to ``1 / (K σ)``: the block moves an
image by about this much, so the model behind it still sees an image."""
MEASUREMENT_SCALE = 1e-2
"""The bins' weights are ``MEASUREMENT_SCALE · w`` (thresholds scaled alike) and the columns after
them ``1 / MEASUREMENT_SCALE`` larger: the same function, but the bins' parameters are small and
their gradients large, so a float32 client's update (weights after − before) keeps the bins'
differences instead of rounding them away (with unscaled weights, 4,096 bins over 512 images
recovered 47% instead of 91%)."""


class ImprintBlock(nn.Module):
    """``x + V relu(W flatten(x) + b)``, reshaped back to ``x``'s shape (Fowl et al., figure 1)."""

    def __init__(self, input_shape: tuple[int, ...], bins: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        features = math.prod(self.input_shape)
        self.bins = nn.Linear(features, bins)
        self.spread = nn.Linear(bins, features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        imprint = self.spread(torch.relu(self.bins(x.flatten(1))))
        return x + imprint.view(x.shape)


@dataclass(frozen=True)
class ImprintLayout:
    """Where the attacker put its bins: what it needs to read them back from an update.

    ``weight_offset`` / ``bias_offset`` index the flat parameter vector
    (``parameters_to_vector`` order); the ``bins`` rows of the weight have ``input_shape``'s
    size; thresholds increase with the row index.
    """

    input_shape: tuple[int, ...]
    bins: int
    weight_offset: int
    bias_offset: int


@dataclass(frozen=True)
class MeasurementPrior:
    """What the attacker knows about the data: the measurement's mean and standard deviation."""

    mean: float
    std: float

    @classmethod
    def fit(cls, public_images: torch.Tensor, direction: torch.Tensor) -> MeasurementPrior:
        values = public_images.flatten(1).to(torch.float64) @ direction.to(torch.float64)
        return cls(float(values.mean()), float(values.std()))


def measurement_direction(input_shape: tuple[int, ...], *, seed: int) -> torch.Tensor:
    """A seeded Gaussian direction of unit length (Fowl et al. use random or average measurements)."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(math.prod(input_shape), generator=generator, dtype=torch.float64)
    return direction / direction.norm()


def thresholds(prior: MeasurementPrior, bins: int) -> torch.Tensor:
    """``c_0 < ... < c_{K-1}``: ``c_0`` far below the data, then the Gaussian quantiles ``i/K``."""
    levels = torch.arange(1, bins, dtype=torch.float64) / bins
    quantiles = prior.mean + prior.std * math.sqrt(2) * torch.erfinv(2 * levels - 1)
    return torch.cat([torch.tensor([prior.mean - 50 * prior.std], dtype=torch.float64), quantiles])


def imprint_model(
    *,
    placement: str,
    base_model: str,
    input_shape: tuple[int, ...],
    num_outputs: int,
    bins: int,
    direction: torch.Tensor,
    prior: MeasurementPrior,
    seed: int,
    dead: bool = False,
) -> tuple[nn.Module, ImprintLayout]:
    """The malicious model and where its bins are.

    ``placement="front"``: :class:`ImprintBlock` with ``bins`` units in front of ``base_model``;
    ``placement="mlp"``: ``base_model`` must be ``mlp`` and its first layer's units are the bins
    (``bins`` must equal its width).  ``dead=True`` gives every bin the bias :data:`DEAD_BIAS`, so
    the bins' gradients vanish for every image in ``[0, 1]`` (what model inconsistency sends to
    everyone but the target: Pasquini et al., CCS 2022).
    """
    if placement not in PLACEMENTS:
        raise ConfigError(f"unknown imprint placement {placement!r}: choose one of {', '.join(PLACEMENTS)}")
    if bins < 2:
        raise ConfigError(f"`bins` {bins} < 2: the imprint layer needs at least two bins")
    if not prior.std > 0:
        raise ConfigError("the measurement's standard deviation must be positive")
    base = build_model(base_model, input_shape=input_shape, num_outputs=num_outputs, seed=seed)
    cuts = thresholds(prior, bins)
    spread_scale = DOWNSTREAM_SCALE / (bins * prior.std)
    if placement == "front":
        block = ImprintBlock(input_shape, bins)
        first, following = block.bins, block.spread.weight
        model: nn.Module = nn.Sequential(block, base)
    else:
        if not isinstance(base, MLP):
            raise ConfigError(f"imprint placement 'mlp' repurposes the mlp model, not {base_model!r}")
        first, second = _mlp_hidden_layers(base)
        if first.out_features != bins:
            raise ConfigError(
                f"the pinned mlp's first layer has {first.out_features} units: "
                f"use `bins` {first.out_features}"
            )
        following = second.weight
        spread_scale = 1.0 / math.sqrt(bins)
        model = base
    with torch.no_grad():
        first.weight.copy_((MEASUREMENT_SCALE * direction).to(first.weight.dtype).expand_as(first.weight))
        cut_biases = -MEASUREMENT_SCALE * cuts
        first.bias.copy_(torch.full_like(first.bias, DEAD_BIAS) if dead else cut_biases.to(first.bias.dtype))
        column = torch.linspace(-1.0, 1.0, following.shape[0], dtype=following.dtype)
        column = column * spread_scale / MEASUREMENT_SCALE
        following.copy_(column[:, None].expand_as(following))
    offsets, position = {}, 0
    for parameter in model.parameters():
        offsets[id(parameter)] = position
        position += parameter.numel()
    layout = ImprintLayout(
        input_shape=tuple(input_shape),
        bins=bins,
        weight_offset=offsets[id(first.weight)],
        bias_offset=offsets[id(first.bias)],
    )
    return model, layout


def recover(observation: Observation, layout: ImprintLayout, *, tolerance: float = 1e-6) -> torch.Tensor:
    """The images the bins stored: ``(ΔW_i) / (Δb_i)`` for every bin with a visible difference.

    Works on whatever the server observed (one client's update or the secure-aggregation mean:
    both are linear in the samples' gradients). A bin with one image gives it back; a bin with
    several gives their gradient-weighted mean; bins whose bias difference is below ``tolerance``
    times the largest are empty. Returns ``(bins found, *input_shape)`` clamped to ``[0, 1]``.
    """
    features = math.prod(layout.input_shape)
    update = observation.observed_update
    weight = update[layout.weight_offset : layout.weight_offset + layout.bins * features]
    weight = weight.view(layout.bins, features)
    bias = update[layout.bias_offset : layout.bias_offset + layout.bins]
    zero_row = torch.zeros(1, features, dtype=weight.dtype)
    weight_diff = weight - torch.cat([weight[1:], zero_row])
    bias_diff = bias - torch.cat([bias[1:], torch.zeros(1, dtype=bias.dtype)])
    scale = float(bias_diff.abs().max()) if bias_diff.numel() else 0.0
    filled = (
        bias_diff.abs() > tolerance * scale if scale > 0 else torch.zeros_like(bias_diff, dtype=torch.bool)
    )
    images = weight_diff[filled] / bias_diff[filled, None]
    return images.clamp(0, 1).view(-1, *layout.input_shape).to(torch.float32)


def hide_where_the_data_never_looks(
    model: nn.Module, *, unused_inputs: torch.Tensor, generator: torch.Generator
) -> None:
    """Disguise a pinned-``mlp`` imprint in place against checks that read only the weights.

    The construction our review used against weight-only checks (rank-one layers, layers no input
    in the cube can switch on): layer 1 gets small random weights on ``unused_inputs`` (1 where
    every image is 0, so neither the forward pass nor the bins' gradients change), and every other
    layer-2 unit is switched off (bias ``-1e6``) with large random rows (a dead unit passes no
    gradient). Checks on the client's own batch (:mod:`securefl.defences.checks`) refuse it.
    """
    first, second = _mlp_hidden_layers(model)
    with torch.no_grad():
        first.weight.add_(0.003 * torch.randn(first.weight.shape, generator=generator) * unused_inputs)
        second.weight[1::2] = 25 * torch.randn(
            second.out_features // 2, second.in_features, generator=generator
        )
        second.bias[1::2] = -1e6


def best_psnr(candidates: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """For every original, the PSNR (dB, images in ``[0, 1]``) of the closest candidate.

    A candidate that is one image matches it; a mixed bin matches nothing well. ``-inf`` rows
    are impossible: with no candidates every original scores ``0`` dB against a blank image.
    """
    flat = originals.flatten(1).to(torch.float64)
    if candidates.numel() == 0:
        candidates = torch.zeros(1, *originals.shape[1:])
    guesses = candidates.flatten(1).to(torch.float64)
    squared = (flat**2).sum(1)[:, None] - 2 * flat @ guesses.T + (guesses**2).sum(1)[None, :]
    mse = (squared.clamp_min(0) / flat.shape[1]).min(dim=1).values
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-30))


def _mlp_hidden_layers(model: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The pinned ``mlp``'s first two linear layers (``net[1]`` and ``net[3]``)."""
    first, second = (model.net[1], model.net[3]) if isinstance(model, MLP) else (None, None)
    if not (isinstance(first, nn.Linear) and isinstance(second, nn.Linear)):
        raise ConfigError(f"an imprint in the mlp needs securefl's mlp model, not {type(model).__name__}")
    return first, second


__all__ = [
    "DEAD_BIAS",
    "PLACEMENTS",
    "ImprintBlock",
    "ImprintLayout",
    "MeasurementPrior",
    "best_psnr",
    "hide_where_the_data_never_looks",
    "imprint_model",
    "measurement_direction",
    "recover",
    "thresholds",
]
