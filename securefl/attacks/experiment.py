"""One attack experiment end to end: pick victims, play their rounds under a defence, attack what
the server observed, score the reconstructions against the victims' images.

The experiment is the only place that holds both sides: it gives the victims' data to the
client code of :meth:`~securefl.attacks.defences.Defence.observe` and the resulting
:class:`~securefl.attacks.observation.Observation` (nothing else) to
:func:`~securefl.attacks.inversion.reconstruct`, then compares.

The server chooses the model it sends. For DLG and iDLG it sends the sigmoid LeNet initialised
uniformly in [-0.5, 0.5] (``server_init="uniform"``), the initialisation of Zhu et al.'s code:
a curious server picks a leakage-friendly model, and with PyTorch's default initialisation the
sigmoid LeNet's gradients are far less invertible. Inverting Gradients works with the default
initialisation (``server_init="default"``). DLG/iDLG rounds run in float64 (the server sends a
float64 model, so the client's update is not rounded to float32), which gives L-BFGS margin to
drive the gradient distance to 1e-8 of its scale; Inverting Gradients rounds run in float32.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from securefl.attacks.defences import (
    ClipDefence,
    Defence,
    DPSGDDefence,
    NoDefence,
    PruneDefence,
    RoundFacts,
    SecAggDefence,
)
from securefl.attacks.inversion import (
    ATTACKS,
    AttackConfig,
    AttackProgress,
    check_twice_differentiable,
    reconstruct,
)
from securefl.attacks.metrics import label_accuracy, score_images
from securefl.attacks.observation import PublicKnowledge
from securefl.data import Dataset, load_dataset
from securefl.devices import resolve_device
from securefl.errors import ConfigError
from securefl.fl.types import ClientShard
from securefl.models import MODELS, build_model
from securefl.validation import require_at_least, require_at_most, require_positive

logger = logging.getLogger(__name__)

SERVER_INITS = ("auto", "uniform", "default")
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_RESTARTS = {"dlg": 8, "idlg": 8, "ig": 2}
LEAKED_PSNR = 40.0
"""A reconstruction at or above this PSNR is counted as recovered (the DLG/iDLG target)."""
SEED_LIMIT = 2**32
"""Attack seeds are in ``[0, SEED_LIMIT)``: each round's seed is ``seed`` times a prime of up to
six digits plus the round, and must stay a non-negative seed of torch's and numpy's generators."""
MAX_LOCAL_STEPS = 10_000
"""The most local steps an attacked round simulates (the papers use 1 to a few hundred); more
would run for hours before the attack starts."""

COMPARISON_DEFENCES: tuple[Defence, ...] = (
    NoDefence(),
    ClipDefence(max_grad_norm=0.01),
    PruneDefence(prune_ratio=0.5),
    PruneDefence(prune_ratio=0.9),
    DPSGDDefence(noise_multiplier=0.01, max_grad_norm=1.0),
    DPSGDDefence(noise_multiplier=0.1, max_grad_norm=1.0),
    DPSGDDefence(noise_multiplier=1.0, max_grad_norm=1.0),
    *(SecAggDefence(clients=n) for n in (2, 4, 8, 16, 32)),
)
"""The rows of ``securefl attack compare``: every defence of the issue, same victims."""

ExperimentProgress = Callable[[str, AttackProgress], None]


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything ``securefl attack`` takes; validated by :func:`prepare` before any work."""

    attack: str = "dlg"
    dataset: str = "mnist-sample"
    model: str = "lenet"
    batch_size: int = 1
    local_steps: int = 1
    learning_rate: float = 0.1
    images: int = 4
    seed: int = 0
    defence: Defence = field(default_factory=NoDefence)
    restarts: int | None = None
    iterations: int | None = None
    server_init: str = "auto"
    data_dir: Path | None = None
    precision: str = "auto"
    """Arithmetic of the round and the attacker: auto (float64 for DLG/iDLG, float32 for IG),
    float32 or float64."""
    device: str = "auto"
    """Where the attacker optimises: auto (a CUDA GPU when torch sees one), cpu or cuda
    (:mod:`securefl.devices`); the victims' round runs on the CPU."""

    @property
    def resolved_server_init(self) -> str:
        if self.server_init != "auto":
            return self.server_init
        return "default" if self.attack == "ig" else "uniform"

    @property
    def arithmetic(self) -> torch.dtype:
        if self.precision != "auto":
            return PRECISIONS[self.precision]
        return torch.float32 if self.attack == "ig" else torch.float64

    def attack_config(self, round_index: int) -> AttackConfig:
        return AttackConfig(
            attack=self.attack,
            max_iterations=self.iterations,
            restarts=self.restarts if self.restarts is not None else DEFAULT_RESTARTS[self.attack],
            seed=self.seed * 100_003 + round_index,
            dtype=self.arithmetic,
            device=resolve_device(self.device),
        )


@dataclass(frozen=True)
class Prepared:
    """A validated experiment: the data set and the victims, chosen before anything runs."""

    config: ExperimentConfig
    dataset: Dataset
    victim_indices: tuple[int, ...]
    mean_image: torch.Tensor

    @property
    def rounds(self) -> int:
        return self.config.images // self.config.batch_size


def check_seed(seed: int) -> None:
    """Refuse a seed outside ``[0, SEED_LIMIT)`` (``-1`` would crash numpy's generator later)."""
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"`seed` {seed} outside 0..{SEED_LIMIT - 1}: use a `seed` in that range")


def prepare(config: ExperimentConfig, *, dataset: Dataset | None = None) -> Prepared:
    """Check every input (raising :class:`ConfigError`) and choose the victims; no attack runs."""
    if config.attack not in ATTACKS:
        from securefl.attacks.malicious import MALICIOUS_ATTACKS  # it imports this module

        raise ConfigError(
            f"unknown attack {config.attack!r}: choose one of {', '.join(ATTACKS)} (gradient inversion) "
            f"or {', '.join(MALICIOUS_ATTACKS)} (a malicious server)"
        )
    if config.model not in MODELS:
        raise ConfigError(f"unknown model {config.model!r}: choose one of {', '.join(MODELS)}")
    if config.server_init not in SERVER_INITS:
        raise ConfigError(
            f"unknown server init {config.server_init!r}: choose one of {', '.join(SERVER_INITS)}"
        )
    if config.precision != "auto" and config.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {config.precision!r}: choose auto, float32 or float64")
    check_seed(config.seed)
    resolve_device(config.device)  # an unknown name, or cuda without a GPU, is refused here
    require_at_least(config.images, 1, "`images`", "images")
    require_at_least(config.batch_size, 1, "`batch_size`", "batch_size")
    require_at_least(config.local_steps, 1, "`local_steps`", "local_steps")
    require_at_most(config.local_steps, MAX_LOCAL_STEPS, "`local_steps`", "local_steps")
    require_positive(config.learning_rate, "`learning_rate`", "learning_rate")
    if config.restarts is not None:
        require_at_least(config.restarts, 1, "`restarts`", "restarts")
    if config.iterations is not None:
        require_at_least(config.iterations, 1, "`iterations`", "iterations")
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    if dataset.task != "classification" or len(dataset.input_shape) != 3:
        raise ConfigError(
            f"data set {dataset.name!r} is not an image classification set: the attacks reconstruct "
            "images, set `dataset` to mnist-sample, images or cifar10"
        )
    victims_available = len(dataset.test_x)
    if config.batch_size > victims_available or config.images > victims_available:
        raise ConfigError(
            f"`batch_size` {config.batch_size} / `images` {config.images} exceed the {victims_available} "
            f"test images of {dataset.name!r}: lower them"
        )
    if config.images % config.batch_size:
        suggestion = config.batch_size * max(1, config.images // config.batch_size)
        raise ConfigError(
            f"`images` {config.images} is not a multiple of `batch_size` {config.batch_size}: each attacked "
            f"round holds one batch, so use a multiple such as `images` {suggestion}"
        )
    others = config.defence.others_needed * config.batch_size
    if others > len(dataset.train_x):
        raise ConfigError(
            f"secure aggregation with `clients` {config.defence.others_needed + 1} needs {others} other "
            f"clients' images, {dataset.name!r} has {len(dataset.train_x)}: lower `clients` or `batch_size`"
        )
    check_twice_differentiable(
        config.attack, config.model, input_shape=dataset.input_shape, num_classes=dataset.num_outputs
    )
    rng = np.random.default_rng([config.seed, 0xA77])
    victims = rng.choice(victims_available, size=config.images, replace=False)
    mean_image = dataset.train_x.mean(dim=0)
    return Prepared(config, dataset, tuple(int(i) for i in victims), mean_image)


@dataclass(frozen=True)
class ImageResult:
    """One victim image and how well it was recovered."""

    test_index: int
    label: int
    recovered_label: int
    psnr: float
    ssim: float
    mse: float
    baseline_psnr: float

    @property
    def label_correct(self) -> bool:
        return self.label == self.recovered_label


@dataclass(frozen=True)
class RoundResult:
    """One attacked round: the attack's own view of it and the round's facts."""

    seconds: float
    objective: float
    restarts_run: int
    iterations: int
    facts: RoundFacts


@dataclass(frozen=True)
class AttackOutcome:
    """The result of :func:`run_attack`: images, scores and timings."""

    config: ExperimentConfig
    originals: torch.Tensor
    reconstructions: torch.Tensor
    """Paired with ``originals`` (same order), float32 in [0, 1]."""
    images: tuple[ImageResult, ...]
    rounds: tuple[RoundResult, ...]
    seconds: float

    @property
    def defence_label(self) -> str:
        return self.config.defence.label

    @property
    def median_psnr(self) -> float:
        return statistics.median(image.psnr for image in self.images)

    @property
    def median_ssim(self) -> float:
        return statistics.median(image.ssim for image in self.images)

    @property
    def median_baseline_psnr(self) -> float:
        return statistics.median(image.baseline_psnr for image in self.images)

    @property
    def label_accuracy(self) -> float:
        predicted = torch.tensor([image.recovered_label for image in self.images])
        return label_accuracy(predicted, torch.tensor([image.label for image in self.images]))

    @property
    def leaked_fraction(self) -> float:
        return sum(image.psnr >= LEAKED_PSNR for image in self.images) / len(self.images)

    @property
    def epsilon(self) -> float | None:
        values = [r.facts.epsilon for r in self.rounds if r.facts.epsilon is not None]
        return max(values) if values else None


def server_model(config: ExperimentConfig, dataset: Dataset, round_index: int) -> nn.Module:
    """The global model the (curious) server sends in round ``round_index``."""
    seed = config.seed * 10_007 + round_index
    model = build_model(
        config.model, input_shape=dataset.input_shape, num_outputs=dataset.num_outputs, seed=seed
    )
    if config.resolved_server_init == "uniform":
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.rand(parameter.shape, generator=generator) - 0.5)
    return model.to(config.arithmetic)


def _other_clients(prepared: Prepared, round_index: int) -> list[ClientShard]:
    config = prepared.config
    count = config.defence.others_needed
    if count == 0:
        return []
    rng = np.random.default_rng([config.seed, round_index, count, 0x07E5])
    picked = rng.choice(len(prepared.dataset.train_x), size=count * config.batch_size, replace=False)
    shards = []
    for client in range(count):
        rows = torch.as_tensor(picked[client * config.batch_size : (client + 1) * config.batch_size])
        shards.append(ClientShard(client + 1, prepared.dataset.train_x[rows], prepared.dataset.train_y[rows]))
    return shards


def run_attack(
    prepared: Prepared, *, progress: ExperimentProgress | None = None, description: str = ""
) -> AttackOutcome:
    """Attack every victim round of ``prepared`` and score the reconstructions."""
    config = prepared.config
    dataset = prepared.dataset
    public = PublicKnowledge(
        model_name=config.model,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_outputs,
        batch_size=config.batch_size,
        local_steps=config.local_steps,
        learning_rate=config.learning_rate,
    )
    started = time.perf_counter()
    originals, paired, results, rounds = [], [], [], []
    for round_index in range(prepared.rounds):
        rows = torch.as_tensor(
            prepared.victim_indices[round_index * config.batch_size : (round_index + 1) * config.batch_size]
        )
        victim = ClientShard(0, dataset.test_x[rows], dataset.test_y[rows])
        others = _other_clients(prepared, round_index)
        observation, facts = config.defence.observe(
            public=public,
            server_model=server_model(config, dataset, round_index),
            victim=victim,
            others=others,
            seed=config.seed * 7_919 + round_index,
        )
        label = f"{description}round {round_index + 1}/{prepared.rounds}"

        def report(event: AttackProgress, label: str = label) -> None:
            if progress is not None:
                progress(label, event)

        reconstruction = reconstruct(observation, config=config.attack_config(round_index), progress=report)
        # Pair the reconstructions with *every* image behind the observation (all N clients' under
        # secure aggregation) and read off the victim's pairs: a reconstruction of another client's
        # image goes to that client, it does not count as a leak of a similar-looking victim image.
        everyone = torch.cat([victim.x, *(shard.x for shard in others)])
        scores, pairing = score_images(reconstruction.images, everyone, mean_image=prepared.mean_image)
        scores, pairing = scores[: len(victim)], pairing[: len(victim)]
        for position, score in enumerate(scores):
            results.append(
                ImageResult(
                    test_index=int(rows[position]),
                    label=int(victim.y[position]),
                    recovered_label=int(reconstruction.labels[pairing[position]]),
                    psnr=score.psnr,
                    ssim=score.ssim,
                    mse=score.mse,
                    baseline_psnr=score.baseline_psnr,
                )
            )
        originals.append(victim.x)
        paired.append(reconstruction.images[pairing])
        rounds.append(
            RoundResult(
                seconds=reconstruction.seconds,
                objective=reconstruction.objective,
                restarts_run=len(reconstruction.restart_objectives),
                iterations=reconstruction.iterations,
                facts=facts,
            )
        )
        logger.info("%s: PSNR %s", label, ", ".join(f"{s.psnr:.1f}" for s in scores))
    return AttackOutcome(
        config=config,
        originals=torch.cat(originals).to(torch.float32),
        reconstructions=torch.cat(paired).to(torch.float32),
        images=tuple(results),
        rounds=tuple(rounds),
        seconds=time.perf_counter() - started,
    )


def run_comparison(
    prepared: Prepared,
    *,
    defences: Sequence[Defence] = COMPARISON_DEFENCES,
    progress: ExperimentProgress | None = None,
) -> list[AttackOutcome]:
    """The same victims (and server models) through every defence, one outcome per defence."""
    validated = [prepare(replace(prepared.config, defence=d), dataset=prepared.dataset) for d in defences]
    outcomes = []
    for index, row in enumerate(validated):
        description = f"{row.config.defence.label} ({index + 1}/{len(validated)}) "
        outcomes.append(run_attack(row, progress=progress, description=description))
    return outcomes
