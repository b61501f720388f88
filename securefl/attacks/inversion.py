"""Gradient inversion: turn an :class:`~securefl.attacks.observation.Observation` into images.

Three attacks, all of which only ever see the observation:

- ``dlg`` — Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019): a dummy image (uniform
  in [0, 1]) and a dummy soft label are optimised jointly with L-BFGS so that the update they
  would have produced matches the observed one in squared L2 distance.
- ``idlg`` — improved DLG (Zhao, Mopuri & Bilen, 2020): the label is read analytically from the
  last layer's update (:func:`infer_labels`), then DLG runs on the image only.
- ``ig`` — Inverting Gradients (Geiping, Bauermeister, Dröge & Moeller, NeurIPS 2020): cosine
  distance between the dummy and the observed update plus a total-variation prior, Adam on the
  *signed* gradient, learning rate ÷10 at 3/8, 5/8 and 7/8 of the iterations, pixels projected
  onto the box [0, 1] after every step, several restarts.

The attacker's dummy round replays the public protocol: each of the ``num_clients`` clients runs
``local_steps`` full-batch SGD steps with the public learning rate (unrolled and differentiated
through, as in Geiping et al.'s multi-step FedAvg attack), its update is clipped to the announced
norm if there is one, the clients' updates are averaged, and, when the clients prune their
updates, only the coordinates that came back non-zero are compared. Restarts are ranked by the
attack's own objective only, never by a comparison with the private data.

DLG and iDLG need the model's gradient to be differentiable in the input in a useful way: on a
piecewise-linear network (ReLU, max-pooling) the second derivative is zero almost everywhere, the
L2 gradient-matching landscape is piecewise and L-BFGS's curvature model breaks down, so Zhu et
al. replace ReLU by sigmoid. :func:`check_twice_differentiable` refuses such models for DLG/iDLG;
Inverting Gradients (first-order, signed Adam steps on the cosine) is the attack to use there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from securefl.attacks.observation import Observation
from securefl.errors import ConfigError
from securefl.fl.vectors import load_vector
from securefl.models import build_model

logger = logging.getLogger(__name__)

ATTACKS = ("dlg", "idlg", "ig")
GRADIENT_MATCHING_ATTACKS = ("dlg", "idlg")

DEFAULT_ITERATIONS = {"dlg": 300, "idlg": 300, "ig": 1000}
"""L-BFGS iterations (each with a strong-Wolfe line search) or Adam steps per restart."""

LBFGS_HISTORY = 100
LBFGS_CHUNK = 25
LBFGS_EVALUATIONS_PER_ITERATION = 10

_PIECEWISE_LINEAR_OPERATIONS = {
    "relu": "ReLU",
    "relu_": "ReLU",
    "relu6": "ReLU6",
    "hardtanh": "hardtanh",
    "hardtanh_": "hardtanh",
    "leaky_relu": "leaky ReLU",
    "leaky_relu_": "leaky ReLU",
    "threshold": "threshold",
    "max_pool1d": "max-pooling",
    "max_pool2d": "max-pooling",
    "max_pool3d": "max-pooling",
    "max_pool1d_with_indices": "max-pooling",
    "max_pool2d_with_indices": "max-pooling",
    "max_pool3d_with_indices": "max-pooling",
}


@dataclass(frozen=True)
class AttackConfig:
    """How hard the attacker tries. Defaults follow the papers, scaled to a CPU."""

    attack: str
    max_iterations: int | None = None
    """Per restart; ``None`` takes :data:`DEFAULT_ITERATIONS` of the attack."""
    restarts: int = 1
    """Independent random initialisations; the one with the lowest objective wins."""
    converged_below: float = 1e-8
    """DLG/iDLG: a restart stops, and no further restart is tried, once the L2 distance relative
    to the observed update's squared norm falls below this."""
    step_size: float = 0.1
    """Inverting Gradients: Adam's initial learning rate."""
    tv_weight: float = 1e-4
    """Inverting Gradients: weight of the total-variation prior."""
    seed: int = 0
    dtype: torch.dtype | None = None
    """Attacker's arithmetic; ``None`` is float64 for DLG/iDLG (L-BFGS wants it), float32 for IG."""
    device: torch.device | str = "cpu"
    """Where the attacker's optimisation runs (:func:`securefl.devices.resolve_device`); the
    random starts are drawn on the CPU either way, and the reconstruction comes back there."""

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ConfigError(f"unknown attack {self.attack!r}: choose one of {', '.join(ATTACKS)}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be at least 1, got {self.restarts}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ConfigError(f"max_iterations must be at least 1, got {self.max_iterations}")
        if self.tv_weight < 0 or not self.step_size > 0 or not self.converged_below >= 0:
            raise ConfigError("tv_weight and converged_below must be >= 0 and step_size > 0")

    @property
    def iterations(self) -> int:
        return self.max_iterations or DEFAULT_ITERATIONS[self.attack]

    @property
    def arithmetic(self) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.float64 if self.attack in GRADIENT_MATCHING_ATTACKS else torch.float32


@dataclass(frozen=True)
class AttackProgress:
    """Reported to the progress callback after every iteration."""

    restart: int
    restarts: int
    iteration: int
    iterations: int
    objective: float


ProgressCallback = Callable[[AttackProgress], None]


@dataclass(frozen=True)
class Reconstruction:
    """What the attack produced: images in [0, 1] and the labels it used or found."""

    images: torch.Tensor
    """(total_samples, C, H, W) float32 in [0, 1], in no particular order."""
    labels: torch.Tensor
    objective: float
    """The attack's own objective for the chosen restart (relative L2 for DLG/iDLG)."""
    restart_objectives: tuple[float, ...]
    iterations: int
    """Iterations run over all restarts."""
    seconds: float


# --------------------------------------------------------------------------- model checks


class _OperationRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


def piecewise_linear_operations(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """The piecewise-linear operations (ReLU, max-pooling, …) a forward pass of ``model`` calls."""
    recorder = _OperationRecorder()
    parameter = next(model.parameters())
    with torch.no_grad(), recorder:
        model(torch.zeros((1, *input_shape), dtype=parameter.dtype))
    found = {
        _PIECEWISE_LINEAR_OPERATIONS[name] for name in recorder.names if name in _PIECEWISE_LINEAR_OPERATIONS
    }
    return sorted(found)


def check_twice_differentiable(
    attack: str, model_name: str, *, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Raise :class:`ConfigError` if ``attack`` is DLG/iDLG and ``model_name`` is piecewise linear."""
    if attack not in GRADIENT_MATCHING_ATTACKS:
        return
    model = build_model(model_name, input_shape=input_shape, num_outputs=num_classes, seed=0)
    operations = piecewise_linear_operations(model, input_shape)
    if operations:
        raise ConfigError(
            f"`attack` {attack} needs a twice-differentiable model (e.g. the sigmoid `model` lenet), "
            f"but model {model_name!r} uses {' and '.join(operations)}, whose second derivative is "
            "zero almost everywhere, so the gradient-matching L-BFGS of DLG gets no usable "
            "curvature: use `attack` ig (Inverting Gradients) or `model` lenet"
        )


# --------------------------------------------------------------------------- label inference


def _last_linear_slices(model: nn.Module) -> tuple[slice, slice | None, tuple[int, int]]:
    """Where the last linear layer's weight and bias sit in the flat parameter vector."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ConfigError("label inference needs a model whose last layer is nn.Linear")
    offsets: dict[int, slice] = {}
    start = 0
    for parameter in model.parameters():
        offsets[id(parameter)] = slice(start, start + parameter.numel())
        start += parameter.numel()
    bias = offsets[id(last.bias)] if last.bias is not None else None
    return offsets[id(last.weight)], bias, (last.out_features, last.in_features)


def infer_labels(observation: Observation, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Labels read from the last layer's update, without any optimisation.

    For one image (Zhao et al. 2020): with softmax cross-entropy, the last layer's gradient row of
    class ``i`` is ``(p_i − y_i) · h`` (and ``p_i − y_i`` for its bias) where ``h`` ≥ 0 is the
    output of a sigmoid/ReLU layer, so the true class is the only row with a negative sum. We add
    the bias as the weight of a constant input 1, which keeps that exact even if ``h`` is all zero.

    For several images (a batch, or N clients behind an aggregate), the bias update gives
    ``lr · steps · (mean_p_i − n_i / total)``; ``mean_p`` is estimated by running the model on
    random images (the bias-corrected count estimate of Wainakh et al., "User-Level Label Leakage
    from Gradients", PETS 2022) and the counts are rounded to sum to the batch (largest
    remainder). Labels come back grouped by class.
    """
    public = observation.public
    model = _attacker_model(observation, torch.float64)
    weight_slice, bias_slice, (num_classes, _) = _last_linear_slices(model)
    update = observation.observed_update
    weight = update[weight_slice].view(num_classes, -1)
    total = public.total_samples
    if total == 1:
        score = weight.sum(dim=1)
        if bias_slice is not None:
            score = score + update[bias_slice]
        return torch.argmin(score).view(1)
    if bias_slice is None:
        raise ConfigError("label inference for more than one image needs a bias in the last layer")
    mean_bias_gradient = update[bias_slice] / (public.learning_rate * public.local_steps)
    generator = generator or torch.Generator().manual_seed(0)
    with torch.no_grad():
        probes = torch.rand((max(64, total), *public.input_shape), generator=generator, dtype=torch.float64)
        mean_probability = torch.softmax(model(probes), dim=1).mean(dim=0)
    counts = (total * (mean_probability - mean_bias_gradient)).clamp_min(0)
    if float(counts.sum()) == 0.0:
        counts = torch.ones(num_classes, dtype=torch.float64)
    counts = counts * (total / counts.sum())
    whole = counts.floor().long()
    remainder_order = torch.argsort(counts - whole, descending=True)
    missing = total - int(whole.sum())
    whole[remainder_order[:missing]] += 1
    return torch.repeat_interleave(torch.arange(num_classes), whole)


# --------------------------------------------------------------------------- the dummy round


def _attacker_model(
    observation: Observation, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> nn.Module:
    public = observation.public
    model = build_model(
        public.model_name,
        input_shape=public.input_shape,
        num_outputs=public.num_classes,
        seed=0,
    ).to(device=device, dtype=dtype)
    load_vector(model.parameters(), observation.model_parameters.to(device=device, dtype=dtype))
    return model


class _DummyRound:
    """The attacker's differentiable replay of the clients' side of the round."""

    def __init__(self, observation: Observation, dtype: torch.dtype, device: torch.device | str) -> None:
        self.public = observation.public
        self.device = torch.device(device)
        self.model = _attacker_model(observation, dtype, self.device)
        self.names = [name for name, _ in self.model.named_parameters()]
        self.base = [parameter.detach().requires_grad_(True) for parameter in self.model.parameters()]
        target = observation.observed_update.to(device=self.device, dtype=dtype)
        self.support = (target != 0) if self.public.prune_ratio else None
        self.target = target[self.support] if self.support is not None else target
        self.target_norm_squared = float(self.target.pow(2).sum())

    def update(
        self,
        images: torch.Tensor,
        label_loss: Callable[[torch.Tensor, int], torch.Tensor],
    ) -> torch.Tensor:
        public = self.public
        size = public.batch_size
        client_updates = []
        for client in range(public.num_clients):
            client_images = images[client * size : (client + 1) * size]
            parameters = self.base
            accumulated: list[torch.Tensor] | None = None
            for _ in range(public.local_steps):
                output = functional_call(
                    self.model, dict(zip(self.names, parameters, strict=True)), (client_images,)
                )
                loss = label_loss(output, client)
                gradients = torch.autograd.grad(loss, parameters, create_graph=True)
                steps = [public.learning_rate * gradient for gradient in gradients]
                accumulated = (
                    steps if accumulated is None else [a + s for a, s in zip(accumulated, steps, strict=True)]
                )
                if public.local_steps > 1:
                    parameters = [p - s for p, s in zip(parameters, steps, strict=True)]
            assert accumulated is not None
            flat = torch.cat([step.reshape(-1) for step in accumulated])
            if public.clip_norm is not None:
                flat = flat * (public.clip_norm / (flat.norm() + 1e-12)).clamp(max=1.0)
            client_updates.append(flat)
        mean = client_updates[0] if len(client_updates) == 1 else torch.stack(client_updates).mean(dim=0)
        return mean[self.support] if self.support is not None else mean


def _hard_label_loss(labels: torch.Tensor, batch_size: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def loss(output: torch.Tensor, client: int) -> torch.Tensor:
        return nn.functional.cross_entropy(output, labels[client * batch_size : (client + 1) * batch_size])

    return loss


def _soft_label_loss(
    label_logits: torch.Tensor, batch_size: int
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def loss(output: torch.Tensor, client: int) -> torch.Tensor:
        soft = torch.softmax(label_logits[client * batch_size : (client + 1) * batch_size], dim=-1)
        return torch.sum(-soft * torch.log_softmax(output, dim=-1), dim=-1).mean()

    return loss


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of horizontal and vertical neighbours."""
    horizontal = (images[:, :, :, :-1] - images[:, :, :, 1:]).abs().mean()
    vertical = (images[:, :, :-1, :] - images[:, :, 1:, :]).abs().mean()
    return horizontal + vertical


def _cosine_distance(dummy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1 - torch.dot(dummy, target) / (dummy.norm() * target.norm() + 1e-30)


# --------------------------------------------------------------------------- the attacks


def reconstruct(
    observation: Observation,
    *,
    config: AttackConfig,
    progress: ProgressCallback | None = None,
) -> Reconstruction:
    """Run ``config.attack`` on ``observation`` and return the best restart's images.

    Raises :class:`ConfigError` for DLG/iDLG on a piecewise-linear model.
    """
    public = observation.public
    check_twice_differentiable(
        config.attack, public.model_name, input_shape=public.input_shape, num_classes=public.num_classes
    )
    dtype = config.arithmetic
    dummy_round = _DummyRound(observation, dtype, config.device)
    generator = torch.Generator().manual_seed(config.seed)
    known_labels = (
        None
        if config.attack == "dlg"
        else infer_labels(observation, generator=generator).to(dummy_round.device)
    )
    started = time.perf_counter()
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    objectives: list[float] = []
    iterations_run = 0
    for restart in range(config.restarts):
        if config.attack == "ig":
            assert known_labels is not None
            objective, images, labels, iterations = _inverting_gradients(
                dummy_round,
                known_labels,
                config=config,
                generator=generator,
                restart=restart,
                progress=progress,
            )
        else:
            objective, images, labels, iterations = _deep_leakage(
                dummy_round,
                known_labels,
                config=config,
                generator=generator,
                restart=restart,
                progress=progress,
            )
        iterations_run += iterations
        objectives.append(objective)
        logger.info(
            "%s restart %d: objective %.3e after %d iterations", config.attack, restart, objective, iterations
        )
        if best is None or objective < best[0]:
            best = (objective, images, labels)
        if config.attack in GRADIENT_MATCHING_ATTACKS and objective < config.converged_below:
            break
    assert best is not None
    return Reconstruction(
        images=best[1].clamp(0, 1).to(device="cpu", dtype=torch.float32),
        labels=best[2].cpu(),
        objective=best[0],
        restart_objectives=tuple(objectives),
        iterations=iterations_run,
        seconds=time.perf_counter() - started,
    )


def _deep_leakage(
    dummy_round: _DummyRound,
    known_labels: torch.Tensor | None,
    *,
    config: AttackConfig,
    generator: torch.Generator,
    restart: int,
    progress: ProgressCallback | None,
) -> tuple[float, torch.Tensor, torch.Tensor, int]:
    """DLG (``known_labels`` is None: soft labels are optimised too) or iDLG, with L-BFGS."""
    public = dummy_round.public
    dtype = config.arithmetic
    total = public.total_samples
    device = dummy_round.device
    images = torch.rand((total, *public.input_shape), generator=generator, dtype=dtype)
    images = images.to(device).requires_grad_(True)
    variables = [images]
    if known_labels is None:
        label_logits = torch.randn((total, public.num_classes), generator=generator, dtype=dtype)
        label_logits = label_logits.to(device).requires_grad_(True)
        variables.append(label_logits)
        label_loss = _soft_label_loss(label_logits, public.batch_size)
    else:
        label_loss = _hard_label_loss(known_labels, public.batch_size)
    scale = dummy_round.target_norm_squared or 1.0

    def distance() -> torch.Tensor:
        return (dummy_round.update(images, label_loss) - dummy_round.target).pow(2).sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = distance()
        loss.backward()
        return loss

    # torch's L-BFGS keeps its curvature pairs across step() calls, but restarting its inner loop
    # every iteration degrades it badly; run it in chunks of iterations and report between them.
    optimizer = torch.optim.LBFGS(
        variables,
        lr=1.0,
        max_iter=LBFGS_CHUNK,
        history_size=LBFGS_HISTORY,
        tolerance_grad=1e-300,
        tolerance_change=1e-300,
        line_search_fn="strong_wolfe",
    )
    iteration = 0
    while iteration < config.iterations:
        chunk = min(LBFGS_CHUNK, config.iterations - iteration)
        optimizer.param_groups[0].update(max_iter=chunk, max_eval=chunk * LBFGS_EVALUATIONS_PER_ITERATION)
        snapshot = [variable.detach().clone() for variable in variables]
        loss = float(optimizer.step(closure).detach())
        done = optimizer.state[images]["n_iter"]
        stalled = done == iteration
        iteration = done
        if not math.isfinite(loss) or not all(torch.isfinite(v).all() for v in variables):
            with torch.no_grad():
                for variable, saved in zip(variables, snapshot, strict=True):
                    variable.copy_(saved)
            break
        objective = float(distance().detach()) / scale
        if progress is not None:
            progress(AttackProgress(restart, config.restarts, iteration, config.iterations, objective))
        if objective < config.converged_below or stalled or not math.isfinite(objective):
            break
    final = float(distance().detach()) / scale
    objective = final if math.isfinite(final) else math.inf
    labels = known_labels if known_labels is not None else torch.argmax(label_logits.detach(), dim=-1)
    return objective, images.detach().clone(), labels.clone(), iteration


def _inverting_gradients(
    dummy_round: _DummyRound,
    labels: torch.Tensor,
    *,
    config: AttackConfig,
    generator: torch.Generator,
    restart: int,
    progress: ProgressCallback | None,
) -> tuple[float, torch.Tensor, torch.Tensor, int]:
    """Geiping et al. (2020): cosine + TV, Adam on signed gradients, step schedule, box [0, 1]."""
    public = dummy_round.public
    dtype = config.arithmetic
    images = torch.rand((public.total_samples, *public.input_shape), generator=generator, dtype=dtype)
    images = images.to(dummy_round.device).requires_grad_(True)
    label_loss = _hard_label_loss(labels, public.batch_size)
    optimizer = torch.optim.Adam([images], lr=config.step_size)
    iterations = config.iterations
    milestones = sorted({max(1, round(iterations * fraction)) for fraction in (3 / 8, 5 / 8, 7 / 8)})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

    def objective_of(candidate: torch.Tensor) -> torch.Tensor:
        dummy = dummy_round.update(candidate, label_loss)
        return _cosine_distance(dummy, dummy_round.target) + config.tv_weight * total_variation(candidate)

    for iteration in range(1, iterations + 1):
        optimizer.zero_grad()
        loss = objective_of(images)
        (gradient,) = torch.autograd.grad(loss, images)
        images.grad = gradient.sign()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            images.clamp_(0, 1)
        if progress is not None:
            progress(AttackProgress(restart, config.restarts, iteration, iterations, float(loss.detach())))
    final = float(objective_of(images).detach())
    return (final if math.isfinite(final) else math.inf), images.detach().clone(), labels.clone(), iterations
