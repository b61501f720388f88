"""Registry of model factories.

``build_model(name, input_shape=..., num_outputs=..., seed=...)`` returns a freshly initialised
``torch.nn.Module``.  Every model is free of BatchNorm and of buffers, so its whole state is its
parameter vector and Opacus can train it:

- ``cnn``: the classic MNIST CNN of the PyTorch examples / McMahan et al. (2017)
  (conv 1→10 k5, pool, conv 10→20 k5, pool, fc 320→50→10), adapted to the input's channels and size.
- ``lenet``: the sigmoid LeNet used by the gradient-leakage papers (Zhu et al., "Deep Leakage from
  Gradients", NeurIPS 2019): smooth and twice differentiable, so DLG can match its gradients.
- ``resnet18``: ResNet-18 (He et al. 2016) in its CIFAR form (3×3 stem, no max-pool) with GroupNorm
  instead of BatchNorm (Kolesnikov et al. 2020), which per-sample-gradient DP-SGD requires.
- ``mlp``: flattens any input; two hidden ReLU layers (64 and 32 wide by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from securefl.errors import ConfigError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    factory: Callable[[Shape, int], nn.Module]
    needs_images: bool
    not_for_training: str | None = None
    """Why federated training refuses the model (:class:`~securefl.config.RunConfig` does), or
    ``None`` for a model it trains; the attacks build every model."""


class ClassicCNN(nn.Module):
    """conv k5 → pool → relu → conv k5 → pool → relu → fc 50 → relu → fc out."""

    def __init__(self, input_shape: Shape, num_outputs: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        # Small inputs (8×8 digits) keep their size through the k5 convolutions with padding 2.
        padding = 2 if min(height, width) < 16 else 0
        self.conv1 = nn.Conv2d(channels, 10, kernel_size=5, padding=padding)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5, padding=padding)
        self.pool = nn.MaxPool2d(2)
        flat = _flat_size(nn.Sequential(self.conv1, self.pool, self.conv2, self.pool), input_shape)
        self.fc1 = nn.Linear(flat, 50)
        self.fc2 = nn.Linear(50, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pool(self.conv1(x)))
        x = torch.relu(self.pool(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class SigmoidLeNet(nn.Module):
    """The LeNet variant of Zhu et al. (2019): three k5 convolutions, sigmoid, one linear layer."""

    def __init__(self, input_shape: Shape, num_outputs: int) -> None:
        super().__init__()
        channels = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(channels, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        self.classifier = nn.Linear(_flat_size(self.features, input_shape), num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with GroupNorm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                _group_norm(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 for 32×32 inputs, GroupNorm throughout."""

    def __init__(self, input_shape: Shape, num_outputs: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], 64, 3, padding=1, bias=False), _group_norm(64), nn.ReLU()
        )
        layers: list[nn.Module] = []
        in_channels = 64
        for out_channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [
                BasicBlock(in_channels, out_channels, stride),
                BasicBlock(out_channels, out_channels, 1),
            ]
            in_channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Module):
    """Flatten, then hidden ReLU layers, then a linear output (classes or one regression value)."""

    def __init__(self, input_shape: Shape, num_outputs: int, hidden: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        widths = (_numel(input_shape), *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


def _numel(shape: Shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _flat_size(features: nn.Module, input_shape: Shape) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("cnn", "classic MNIST CNN (2 conv + 2 fc), adapts to channels and size", ClassicCNN, True),
        ModelSpec(
            "lenet",
            "sigmoid LeNet of the gradient-leakage papers",
            SigmoidLeNet,
            True,
            not_for_training=(
                "it is the sigmoid LeNet of the gradient-inversion attacks (securefl attack "
                "--model lenet) and stays at chance under local SGD at every learning rate, "
                "momentum, batch size and epoch count measured (docs/benchmarks.md, "
                '"Data-set defaults")'
            ),
        ),
        ModelSpec("resnet18", "ResNet-18 for 32x32 images with GroupNorm (Opacus-ready)", ResNet18GN, True),
        ModelSpec("mlp", "flatten + ReLU MLP (64, 32): tables or images", MLP, False),
    )
}

TRAINABLE_MODELS = tuple(name for name, spec in MODELS.items() if spec.not_for_training is None)
"""The models ``securefl train`` (:class:`~securefl.config.RunConfig`) accepts."""


def check_model_fits(name: str, *, input_shape: Shape) -> ModelSpec:
    """The spec of model ``name`` if it can take inputs of ``input_shape``; else a ConfigError.

    The one check of which models a data set accepts: :class:`~securefl.config.RunConfig` calls it
    on construction, :func:`build_model` before it builds.
    """
    spec = MODELS.get(name)
    if spec is None:
        raise ConfigError(f"unknown model {name!r}: set `model` to one of {', '.join(MODELS)}")
    if spec.needs_images and len(input_shape) != 3:
        raise ConfigError(
            f"model {name!r} needs image input (channels, height, width) but the data set gives "
            f"shape {tuple(input_shape)}: use `model` mlp"
        )
    if name == "resnet18" and min(input_shape[1:]) < 8:
        raise ConfigError(
            f"model 'resnet18' needs images of at least 8x8, got {tuple(input_shape)}: use another `model`"
        )
    return spec


def build_model(name: str, *, input_shape: Shape, num_outputs: int, seed: int = 0) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (without the batch axis).

    Initialisation is seeded and leaves the global torch RNG untouched.  Raises
    :class:`ConfigError` for an unknown name or a model that cannot take the data.
    """
    spec = check_model_fits(name, input_shape=input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.factory(tuple(input_shape), num_outputs)
    return model
