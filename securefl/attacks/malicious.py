"""A malicious server's round: the model it sends is its choice, everything else is securefl's.

The server builds the attack model(s) (:mod:`securefl.attacks.imprint`) and sends them; every
client runs its own program on what it received -- the client-side defences
(:mod:`securefl.defences`: architecture pin -- with it the client builds the pinned model itself
and loads only the server's flat parameter vector --, parameter checks on its own batch, model
context), then one
full-batch step of :class:`~securefl.fl.training.LocalSGDTrainer` -- and the updates go through
:class:`~securefl.fl.secure_channel.SecureAggregationChannel`, the real protocol, with every client
in the session of the model it received.  The attacker then gets exactly an
:class:`~securefl.attacks.observation.Observation` (the aggregate of the round and the model it
sent the target) and reads the bins back with :func:`~securefl.attacks.imprint.recover`.

- ``imprint`` (Fowl et al., ICLR 2022): one binned model to all ``N`` clients; scored on all
  ``N × batch`` images.
- ``inconsistency`` (Pasquini et al., CCS 2022): the binned model to the target (client 0) only,
  the same model with its bins switched off to everyone else, so the bins' part of the secure sum
  is the target's alone; scored on the target's images.

A trial counts as *refused* when the target refused the model (or, for imprint, every client
did), and as *defeated* when the attacker recovers no image at ``LEAKED_PSNR``.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from securefl.attacks.defences import aggregate_observation, client_observation
from securefl.attacks.experiment import check_seed
from securefl.attacks.imprint import (
    PLACEMENTS,
    ImprintLayout,
    MeasurementPrior,
    best_psnr,
    imprint_model,
    measurement_direction,
    recover,
)
from securefl.attacks.observation import PublicKnowledge
from securefl.config import SecAggConfig
from securefl.data import Dataset, load_dataset
from securefl.defences import checks
from securefl.defences.consistency import model_context
from securefl.defences.pinning import pin_for
from securefl.errors import ConfigError, ModelRefusedError, RoundAbortedError
from securefl.fl.fedavg import PlainSum, weight_by_samples
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard
from securefl.fl.vectors import load_vector, to_vector
from securefl.models import build_model

logger = logging.getLogger(__name__)

MALICIOUS_ATTACKS = ("imprint", "inconsistency")
LEAKED_PSNR = 30.0
"""An image is recovered at or above this PSNR (the issue's bar for the imprint attack)."""
SECAGG_BITS = 48
SECAGG_CLIP = 16.0
"""Ring and per-coordinate clip of the demo rounds: quantization far below the bins' signal."""
DEFAULT_BINS = {"front": 1024, "mlp": 64}
MAX_BIN_WEIGHTS = 2**27
"""Bound on bins x input features (the front block holds two such matrices: 1 GiB in float32)."""

TrialProgress = Callable[[int, int], None]
"""Called with (done, total) after each round (or each comparison row)."""


@dataclass(frozen=True)
class ClientDefences:
    """The client-side defences, each on by default; turn one off only to study the attacks."""

    consistency: bool = True
    pinning: bool = True
    parameter_checks: bool = True

    @property
    def label(self) -> str:
        on = [n for n in ("consistency", "pinning", "parameter_checks") if getattr(self, n)]
        return "+".join(on) if on else "no client defences"


@dataclass(frozen=True)
class MaliciousConfig:
    """Everything ``securefl attack --attack imprint|inconsistency`` takes."""

    attack: str = "imprint"
    dataset: str = "mnist-sample"
    placement: str = "front"
    bins: int | None = None
    clients: int = 16
    batch_size: int = 8
    learning_rate: float = 0.1
    trials: int = 1
    secagg: bool = True
    active: bool = False
    defences: ClientDefences = ClientDefences()
    seed: int = 0
    data_dir: Path | None = None
    sum_in_clear: bool = False
    """Benchmark shortcut for rounds too large for the protocol on a laptop: the same clients'
    sum by :class:`~securefl.fl.fedavg.PlainSum` (secure aggregation outputs this sum up to its
    quantization); no client-side session binding then. Not offered by the CLI."""

    @property
    def resolved_bins(self) -> int:
        return self.bins if self.bins is not None else DEFAULT_BINS.get(self.placement, 64)

    @property
    def label(self) -> str:
        channel = f"SecAgg N={self.clients}" + (" active" if self.active else "") if self.secagg else "none"
        if self.secagg and self.sum_in_clear:
            channel = f"sum of N={self.clients} in clear"
        return (
            f"{self.attack} ({self.placement}, {self.resolved_bins} bins), {channel}, {self.defences.label}"
        )


@dataclass(frozen=True)
class TrialResult:
    """One attacked round."""

    refused: tuple[int, ...]
    """Clients that refused the model (they sent nothing)."""
    findings: tuple[str, ...]
    """Why (the first refusing client's error), empty if nobody refused."""
    aborted: str | None
    """The round produced no sum (too few clients took part, or the protocol aborted)."""
    target_psnr: tuple[float, ...]
    """Best PSNR of the attacker's candidates against each of the target's images."""
    everyone_psnr: tuple[float, ...]
    """... and against every participating client's images (target first)."""
    candidates: int
    attack_seconds: float
    round_seconds: float
    defence_seconds: float
    """Client-side defence time summed over clients (pin, checks, context hash)."""
    training_seconds: float
    """Client training time summed over clients."""

    @property
    def target_recovered(self) -> float:
        return sum(p >= LEAKED_PSNR for p in self.target_psnr) / max(len(self.target_psnr), 1)

    @property
    def everyone_recovered(self) -> float:
        return sum(p >= LEAKED_PSNR for p in self.everyone_psnr) / max(len(self.everyone_psnr), 1)


@dataclass(frozen=True)
class MaliciousOutcome:
    config: MaliciousConfig
    trials: tuple[TrialResult, ...]
    originals: torch.Tensor
    """The target's images of the first trial."""
    reconstructions: torch.Tensor
    """Their best candidates (blank where nothing came back)."""
    seconds: float

    @property
    def refused_share(self) -> float:
        return sum(bool(t.refused and 0 in t.refused) for t in self.trials) / len(self.trials)

    @property
    def defeated_share(self) -> float:
        return sum(self._score(t) == 0 for t in self.trials) / len(self.trials)

    @property
    def recovered_share(self) -> float:
        """Mean over trials of the share recovered (all clients' images for imprint, the target's
        for inconsistency)."""
        return statistics.mean(self._score(t) for t in self.trials)

    def _score(self, trial: TrialResult) -> float:
        return trial.everyone_recovered if self.config.attack == "imprint" else trial.target_recovered


@dataclass(frozen=True)
class PreparedMalicious:
    config: MaliciousConfig
    dataset: Dataset
    direction: torch.Tensor
    prior: MeasurementPrior


def prepare_malicious(config: MaliciousConfig, *, dataset: Dataset | None = None) -> PreparedMalicious:
    """Validate (raising :class:`ConfigError`) and fix what the attacker knows up front."""
    if config.attack not in MALICIOUS_ATTACKS:
        raise ConfigError(f"unknown attack {config.attack!r}: choose one of {', '.join(MALICIOUS_ATTACKS)}")
    if config.placement not in PLACEMENTS:
        raise ConfigError(f"unknown `placement` {config.placement!r}: choose one of {', '.join(PLACEMENTS)}")
    if config.clients < 1 or config.batch_size < 1 or config.trials < 1:
        raise ConfigError("`clients`, `batch_size` and `trials` must be at least 1")
    check_seed(config.seed)
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise ConfigError(f"`learning_rate` {config.learning_rate} must be positive")
    if config.secagg and config.clients < 2:
        raise ConfigError("secure aggregation needs `clients` 2 or more: one client's sum is its update")
    if not config.secagg and config.clients != 1:
        raise ConfigError("without `secagg` the server observes one client's update: use `clients` 1")
    if config.attack == "inconsistency" and not config.secagg:
        raise ConfigError("model inconsistency attacks secure aggregation: use `secagg`")
    if config.bins is not None and config.bins < 1:
        raise ConfigError(f"`bins` {config.bins} must be at least 1")
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    if dataset.task != "classification" or len(dataset.input_shape) != 3:
        raise ConfigError(f"data set {dataset.name!r} is not an image set: use mnist-sample or images")
    features = math.prod(dataset.input_shape)
    if config.resolved_bins * features > MAX_BIN_WEIGHTS:
        raise ConfigError(
            f"`bins` {config.resolved_bins} x {features} input features exceeds {MAX_BIN_WEIGHTS} weights "
            f"per imprint layer: use `bins` {MAX_BIN_WEIGHTS // features} or fewer"
        )
    needed = config.clients * config.batch_size * config.trials
    if needed > len(dataset.train_x):
        raise ConfigError(
            f"{config.trials} trials x {config.clients} clients x {config.batch_size} images need {needed} "
            f"images, {dataset.name!r} has {len(dataset.train_x)}: lower one of them"
        )
    direction = measurement_direction(dataset.input_shape, seed=config.seed)
    # The attacker's prior: mean and std of the measurement on public data (here the test split,
    # which no client of these rounds holds).
    prior = MeasurementPrior.fit(dataset.test_x, direction)
    imprint_model(
        placement=config.placement,
        base_model="mlp",
        input_shape=dataset.input_shape,
        num_outputs=dataset.num_outputs,
        bins=config.resolved_bins,
        direction=direction,
        prior=prior,
        seed=0,
    )
    return PreparedMalicious(config, dataset, direction, prior)


def run_malicious(prepared: PreparedMalicious, *, progress: TrialProgress | None = None) -> MaliciousOutcome:
    """Play ``config.trials`` attacked rounds (disjoint clients each) and score them."""
    config, dataset = prepared.config, prepared.dataset
    started = time.perf_counter()
    order = np.random.default_rng([config.seed, 0x3A1]).permutation(len(dataset.train_x))
    per_trial = config.clients * config.batch_size
    trials = []
    originals = reconstructions = torch.empty(0)  # trial 0's, for the figure (config.trials >= 1)
    for trial in range(config.trials):
        rows = order[trial * per_trial : (trial + 1) * per_trial]
        shards = [
            ClientShard(
                c,
                dataset.train_x[torch.as_tensor(rows[c * config.batch_size : (c + 1) * config.batch_size])],
                dataset.train_y[torch.as_tensor(rows[c * config.batch_size : (c + 1) * config.batch_size])],
            )
            for c in range(config.clients)
        ]
        result, candidates = play_trial(prepared, shards, trial=trial)
        trials.append(result)
        if trial == 0:
            originals, reconstructions = shards[0].x, _best_candidates(candidates, shards[0].x)
        if progress is not None:
            progress(trial + 1, config.trials)
        logger.info(
            "trial %d/%d: %s target %.0f%% all %.0f%% recovered",
            trial + 1,
            config.trials,
            "refused" if result.refused else "ran",
            100 * result.target_recovered,
            100 * result.everyone_recovered,
        )
    return MaliciousOutcome(
        config=config,
        trials=tuple(trials),
        originals=originals,
        reconstructions=reconstructions,
        seconds=time.perf_counter() - started,
    )


def comparison_rows(config: MaliciousConfig) -> list[MaliciousConfig]:
    """The rows of ``securefl attack compare --attack imprint|inconsistency``: the same target
    (client 0 of round 1) unprotected, under secure aggregation, and against each defence."""
    off = ClientDefences(consistency=False, pinning=False, parameter_checks=False)
    alone = replace(config, attack="imprint", clients=1, secagg=False, active=False, defences=off)
    secagg = replace(config, secagg=True, clients=max(config.clients, 2))
    if config.attack == "imprint":
        return [
            alone,
            replace(secagg, defences=off),
            replace(secagg, defences=off, clients=4 * secagg.clients),
            replace(secagg, placement="mlp", bins=None, defences=off),
            replace(secagg, placement="mlp", bins=None, defences=ClientDefences(False, True, False)),
            replace(secagg, defences=ClientDefences()),
            replace(secagg, placement="mlp", bins=None, defences=ClientDefences()),
        ]
    consistency = ClientDefences(consistency=True, pinning=False, parameter_checks=False)
    return [
        alone,
        replace(secagg, defences=off),
        replace(secagg, defences=consistency),
        replace(secagg, defences=consistency, active=True),
        replace(secagg, defences=ClientDefences()),
    ]


def run_malicious_comparison(
    prepared: PreparedMalicious, *, progress: TrialProgress | None = None
) -> list[MaliciousOutcome]:
    """Every row of :func:`comparison_rows` on the same data (validated before any runs)."""
    rows = [prepare_malicious(row, dataset=prepared.dataset) for row in comparison_rows(prepared.config)]
    outcomes = []
    for index, row in enumerate(rows):
        outcomes.append(run_malicious(row))
        if progress is not None:
            progress(index + 1, len(rows))
    return outcomes


def server_models(prepared: PreparedMalicious, *, trial: int) -> tuple[dict[int, nn.Module], ImprintLayout]:
    """What the server sends each client: client id -> model, and where its bins are."""
    config, dataset = prepared.config, prepared.dataset

    def imprint(*, dead: bool) -> tuple[nn.Module, ImprintLayout]:
        return imprint_model(
            placement=config.placement,
            base_model="mlp",
            input_shape=dataset.input_shape,
            num_outputs=dataset.num_outputs,
            bins=config.resolved_bins,
            direction=prepared.direction,
            prior=prepared.prior,
            seed=config.seed * 10_007 + trial,
            dead=dead,
        )

    target, layout = imprint(dead=False)
    models = {0: target}
    if config.clients > 1:
        other = target if config.attack == "imprint" else imprint(dead=True)[0]
        models.update({c: other for c in range(1, config.clients)})
    return models, layout


def play_trial(
    prepared: PreparedMalicious, shards: list[ClientShard], *, trial: int
) -> tuple[TrialResult, torch.Tensor]:
    """One round: models out, client programs, secure sum, the attacker's recovery."""
    config, dataset = prepared.config, prepared.dataset
    models, layout = server_models(prepared, trial=trial)
    settings = {"round": trial, "lr": config.learning_rate, "local_steps": 1, "batch_size": config.batch_size}
    pin = pin_for("mlp", input_shape=dataset.input_shape, num_outputs=dataset.num_outputs)
    round_started = time.perf_counter()
    defence_seconds = training_seconds = 0.0
    contributions, contexts, refused, findings = [], {}, [], []
    generator = torch.Generator().manual_seed(config.seed * 7_919 + trial)
    for shard in shards:
        received = models[shard.client_id]
        checked = time.perf_counter()
        try:
            if config.defences.pinning:
                # The server's module stands for what it declares (parameter names and shapes) and
                # its flat vector; the client builds the pinned model itself and loads only that
                # vector, as ``securefl train`` does -- no server code or buffers reach the client.
                pin.check(received, client_id=shard.client_id)
                model = build_model("mlp", input_shape=dataset.input_shape, num_outputs=dataset.num_outputs)
                load_vector(model.parameters(), to_vector(received.parameters()))
            else:
                model = copy.deepcopy(received)  # no pin: the client runs the module it was sent
            if config.defences.parameter_checks:
                checks.check(model, data=shard.x, client_id=shard.client_id)
        except ModelRefusedError as error:
            refused.append(shard.client_id)
            findings.append(str(error))
            defence_seconds += time.perf_counter() - checked
            continue
        if config.defences.consistency:
            contexts[shard.client_id] = model_context(model=model, settings=settings)
        defence_seconds += time.perf_counter() - checked
        trained = time.perf_counter()
        trainer = LocalSGDTrainer(
            model=model,
            task="classification",
            local_epochs=1,
            batch_size=None,
            lr=config.learning_rate,
        )
        update = trainer.train(
            global_params=to_vector(model.parameters()),
            shard=shard,
            round_index=trial,
            generator=generator,
        )
        contributions.append(weight_by_samples(update))
        training_seconds += time.perf_counter() - trained

    target_params = to_vector(models[0].parameters())
    public = PublicKnowledge(
        model_name="imprint",
        input_shape=dataset.input_shape,
        num_classes=dataset.num_outputs,
        batch_size=config.batch_size,
        local_steps=1,
        learning_rate=config.learning_rate,
    )
    observation, aborted = None, None
    if not config.secagg:
        if contributions:
            observation = client_observation(public, target_params, contributions[0])
        else:
            aborted = "the client refused the model"
    elif len(contributions) < 2:
        aborted = f"{len(contributions)} client(s) took part: no secure-aggregation round"
    elif config.sum_in_clear:
        observation = aggregate_observation(
            public, target_params, PlainSum().aggregate(contributions, round_index=trial)
        )
    else:
        channel = SecureAggregationChannel(
            config=SecAggConfig(bits=SECAGG_BITS, clip=SECAGG_CLIP, active_adversary=config.active),
            num_params=target_params.numel(),
            weight_bound=config.batch_size,
            clients_per_round=len(contributions),
            seed=config.seed * 31 + trial,
        )
        try:
            aggregate = channel.aggregate(contributions, round_index=trial, contexts=contexts or None)
        except RoundAbortedError as error:
            aborted = f"secure aggregation aborted: {error}"
        else:
            if aggregate.weight_sum > 0 and torch.isfinite(aggregate.weighted_delta_sum).all():
                observation = aggregate_observation(public, target_params, aggregate)
            else:
                aborted = f"the sum is not a sum of updates (weight sum {aggregate.weight_sum:.3g})"
    round_seconds = time.perf_counter() - round_started

    attack_started = time.perf_counter()
    candidates = (
        recover(observation, layout) if observation is not None else torch.zeros(0, *dataset.input_shape)
    )
    attack_seconds = time.perf_counter() - attack_started
    participants = [s for s in shards if s.client_id not in refused]
    target_psnr = best_psnr(candidates, shards[0].x) if len(candidates) else torch.zeros(len(shards[0]))
    everyone = torch.cat([s.x for s in participants]) if participants else shards[0].x[:0]
    everyone_psnr = (
        best_psnr(candidates, everyone) if len(candidates) and len(everyone) else torch.zeros(len(everyone))
    )
    return (
        TrialResult(
            refused=tuple(refused),
            findings=tuple(findings[:1]),
            aborted=aborted,
            target_psnr=tuple(float(p) for p in target_psnr),
            everyone_psnr=tuple(float(p) for p in everyone_psnr),
            candidates=len(candidates),
            attack_seconds=attack_seconds,
            round_seconds=round_seconds,
            defence_seconds=defence_seconds,
            training_seconds=training_seconds,
        ),
        candidates,
    )


def _best_candidates(candidates: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    if len(candidates) == 0:
        return torch.zeros_like(originals, dtype=torch.float32)
    flat, guesses = originals.flatten(1).double(), candidates.flatten(1).double()
    distance = torch.cdist(flat, guesses)
    return candidates[distance.argmin(dim=1)].to(torch.float32)


__all__ = [
    "LEAKED_PSNR",
    "MALICIOUS_ATTACKS",
    "ClientDefences",
    "MaliciousConfig",
    "MaliciousOutcome",
    "PreparedMalicious",
    "TrialResult",
    "comparison_rows",
    "play_trial",
    "prepare_malicious",
    "run_malicious",
    "server_models",
]
