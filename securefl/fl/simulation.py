"""Runs federated rounds in one process: the only place that knows every client.

Per round: the :class:`~securefl.fl.fedavg.ClientSampler` picks clients among those that can still
train; each trains through the run's :class:`~securefl.fl.types.ClientTrainer`; its update is
transformed on the client side into a :class:`~securefl.fl.types.Contribution`; the aggregation
channel turns all contributions into one :class:`~securefl.fl.types.Aggregate`; the server update
turns that into the next global parameters; the model is evaluated on the held-out test split.
Client-side values never reach the server-side objects except through the channel.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from securefl.config import RunConfig
from securefl.data import Dataset, load_dataset, partition, partition_stats
from securefl.defences.consistency import model_context
from securefl.errors import ConfigError, ThresholdNotMetError
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.fedavg import ClientSampler, PlainSum, WeightedMean, weight_by_samples
from securefl.fl.history import History
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.fl.types import (
    Aggregate,
    Aggregation as AggregationChannel,
    ClientShard,
    ClientTrainer,
    Contribution,
    PrivacyAccounting,
    ServerUpdate,
    Update,
    UpdateTransform,
)
from securefl.fl.vectors import load_vector, to_vector
from securefl.models import build_model

log = logging.getLogger(__name__)

RoundCallback = Callable[[dict[str, Any]], None]


def client_generator(seed: int, round_index: int, client_id: int) -> torch.Generator:
    """The RNG of one client in one round: independent of which clients else were sampled."""
    state = np.random.SeedSequence([seed, round_index, client_id]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def secret_generator(seed: int, round_index: int, client_id: int) -> torch.Generator:
    """A generator seeded from the operating system, never stored: for DP-SGD's noise and batch
    sampling on each client (DP-FedAvg's server noise owns one of its own), which must stay
    unknown to the server (a seed in config.json would let it subtract
    the noise). DP runs are therefore not bit-reproducible, by design."""
    return torch.Generator().manual_seed(secrets.randbits(63))


@dataclass
class Federation:
    """Everything a run is made of, built once; swap any plug point to try a new protection."""

    config: RunConfig
    dataset: Dataset
    parts: list[torch.Tensor]
    shards: list[ClientShard]
    eval_model: nn.Module
    trainer: ClientTrainer
    transform: UpdateTransform
    channel: AggregationChannel
    server_update: ServerUpdate
    sampler: ClientSampler
    generator_for: Callable[[int, int, int], torch.Generator] = client_generator

    @property
    def round_settings(self) -> dict[str, int | float | str]:
        """The training settings every client of a round receives with the model."""
        c = self.config
        return {
            "algorithm": c.algorithm,
            "local_epochs": c.local_epochs,
            "batch_size": c.batch_size,
            "lr": c.lr,
            "momentum": c.momentum,
            "weight_decay": c.weight_decay,
        }


def build_federation(config: RunConfig, *, dataset: Dataset | None = None) -> Federation:
    """Load data, partition it, build the model and the four plug points from ``config``."""
    dataset = dataset or load_dataset(
        config.dataset, data_dir=config.data_dir, download=config.download, seed=config.seed
    )
    parts = partition(
        dataset.train_y,
        scheme=config.partition,
        num_clients=config.clients,
        alpha=config.alpha,
        seed=config.seed,
        num_classes=dataset.num_outputs if dataset.task == "classification" else None,
    )
    shards = [
        ClientShard(client_id=i, x=dataset.train_x[idx].contiguous(), y=dataset.train_y[idx].contiguous())
        for i, idx in enumerate(parts)
    ]

    def new_model() -> nn.Module:
        return build_model(
            config.model, input_shape=dataset.input_shape, num_outputs=dataset.num_outputs, seed=config.seed
        )

    eval_model = new_model()
    num_params = sum(p.numel() for p in eval_model.parameters())
    trainer = _build_trainer(config, new_model(), dataset, shards)
    sampling = config.central_dp.client_sampling if config.central_dp is not None else "fixed"
    max_clients = config.clients if sampling == "poisson" else config.sampled_clients
    channel: AggregationChannel = PlainSum()
    min_released_clients = 1  # a plain sum releases one client's update as a sum
    if config.secagg is not None:
        secure = SecureAggregationChannel(
            config=config.secagg,
            num_params=num_params,
            # DP-FedAvg clients send weight 1; FedAvg clients their sample count.
            weight_bound=1 if config.central_dp is not None else max(len(s) for s in shards),
            clients_per_round=config.sampled_clients,
            max_clients=max_clients,
            dp_clip_norm=(
                config.central_dp.clip_norm
                if config.central_dp is not None and not config.central_dp.distributed
                else None
            ),
            seed=config.seed,
        )
        if config.central_dp is not None and sampling == "poisson":
            min_released_clients = secure.smallest_round(max_clients)
            log.info(
                "DP-FedAvg with secure aggregation: a Poisson round of fewer than %d clients "
                "releases noise only, so one user can move a round by %d·clip: accounted at z/%d",
                min_released_clients,
                min_released_clients,
                min_released_clients,
            )
        channel = secure
    transform: UpdateTransform = weight_by_samples
    server_update: ServerUpdate = WeightedMean()
    if config.central_dp is not None:
        from securefl.privacy import ClipUpdate, DPFedAvgServerUpdate  # Opacus only when asked for

        central = config.central_dp
        transform = ClipUpdate(central.clip_norm)
        server_update = DPFedAvgServerUpdate(
            noise_multiplier=central.noise_multiplier,
            clip_norm=central.clip_norm,
            delta=central.delta,
            clients=config.clients,
            clients_per_round=config.sampled_clients,
            client_sampling=central.client_sampling,
            accountant=central.accountant,
            min_released_clients=min_released_clients,
        )
        if central.distributed:  # the clients add the noise; central DP's ε is kept for comparison
            from securefl.privacy.distributed import DistributedDPChannel, DistributedDPServerUpdate

            assert isinstance(channel, SecureAggregationChannel)  # RunConfig requires --secagg
            distributed = DistributedDPChannel(
                secure=channel,
                num_params=num_params,
                clip_norm=central.clip_norm,
                noise_multiplier=central.noise_multiplier,
                delta=central.delta,
                max_clients=max_clients,
                seed=config.seed,
            )
            channel = distributed
            server_update = DistributedDPServerUpdate(
                channel=distributed,
                expected_clients=config.sampled_clients,
                central_reference=server_update,
            )
    if config.dp is not None or config.central_dp is not None:
        transform = _without_loss(transform)
    return Federation(
        config=config,
        dataset=dataset,
        parts=parts,
        shards=shards,
        eval_model=eval_model,
        trainer=trainer,
        transform=transform,
        channel=channel,
        server_update=server_update,
        generator_for=secret_generator if config.dp is not None else client_generator,
        # Under central DP the sample must stay unknown to the server (amplification by sampling).
        sampler=ClientSampler(
            num_clients=config.clients,
            per_round=config.sampled_clients,
            scheme=sampling,
            seed=config.seed,
            secret=config.central_dp is not None,
        ),
    )


def _without_loss(transform: UpdateTransform) -> UpdateTransform:
    """Under DP a client's training loss is computed without noise: it does not leave the client."""

    def transform_without_loss(update: Update) -> Contribution:
        return dataclasses.replace(transform(update), train_loss=0.0)

    return transform_without_loss


def _build_trainer(
    config: RunConfig, model: nn.Module, dataset: Dataset, shards: list[ClientShard]
) -> ClientTrainer:
    """Plain local SGD, FedSGD's single full-batch step, or Opacus DP-SGD (``--dp``)."""
    fedsgd = config.algorithm == "fedsgd"
    if config.dp is not None:
        from securefl.privacy import DPSGDTrainer  # Opacus only when asked for

        if fedsgd:
            raise ConfigError(
                "--dp trains with Poisson-sampled mini-batches (DP-SGD); it does not "
                "combine with --algorithm fedsgd: use --algorithm fedavg"
            )
        return DPSGDTrainer(
            model=model,
            task=dataset.task,
            config=config.dp,
            client_sizes={s.client_id: len(s) for s in shards},
            rounds=config.rounds,
            local_epochs=config.local_epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return LocalSGDTrainer(
        model=model,
        task=dataset.task,
        local_epochs=1 if fedsgd else config.local_epochs,
        batch_size=None if fedsgd else config.batch_size,
        lr=config.lr,
        momentum=0.0 if fedsgd else config.momentum,
        weight_decay=config.weight_decay,
    )


def evaluate(
    model: nn.Module, params: torch.Tensor, dataset: Dataset, *, batch_size: int = 1000
) -> dict[str, float]:
    """Test loss and accuracy (classification) or MSE and R² (regression) of ``params``."""
    load_vector(model.parameters(), params)
    model.eval()
    x, y = dataset.test_x, dataset.test_y
    loss_sum, correct, squared_error = 0.0, 0, 0.0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            output = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            if dataset.task == "classification":
                loss_sum += float(nn.functional.cross_entropy(output, target, reduction="sum"))
                correct += int((output.argmax(1) == target).sum())
            else:
                squared_error += float(((output.squeeze(-1) - target) ** 2).sum())
    n = len(y)
    if dataset.task == "classification":
        return {"test_loss": loss_sum / n, "test_accuracy": correct / n}
    mse = squared_error / n
    variance = float(((y - y.mean()) ** 2).mean())
    return {"test_mse": mse, "test_r2": 1.0 - mse / variance if variance > 0 else float("nan")}


def run_round(
    fed: Federation, params: torch.Tensor, *, round_index: int, eligible: list[int]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One round among the ``eligible`` clients: sample, train on the client side, aggregate,
    update. Returns the new parameters and the round's record (without evaluation and timing)."""
    sampled = fed.sampler.sample(round_index, eligible)
    record: dict[str, Any] = {
        "round": round_index,
        "clients": len(sampled),
        "excluded_clients": len(fed.shards) - len(eligible),
        "status": "ok" if sampled else "empty",
    }
    contributions = [
        fed.transform(
            fed.trainer.train(
                global_params=params,
                shard=fed.shards[client_id],
                round_index=round_index,
                generator=fed.generator_for(fed.config.seed, round_index, client_id),
            )
        )
        for client_id in sampled
    ]
    # Each client binds the model and settings it received into the aggregation session (model
    # consistency: clients shown different models cannot be summed together). The architecture is
    # the federation's pinned one, the same for every party.
    settings = {"round": round_index, **fed.round_settings}
    contexts = {
        client_id: model_context(model=fed.eval_model, settings=settings, params=params)
        for client_id in sampled
    }
    aggregate = Aggregate.empty(params)
    if contributions:
        try:
            aggregate = fed.channel.aggregate(contributions, round_index=round_index, contexts=contexts)
        except ThresholdNotMetError as error:  # nothing was revealed: the round is an empty one
            record.update(status="aborted", abort_reason=str(error), **getattr(error, "details", {}))
    # Every round goes through the server update, an empty or aborted one too: FedAvg leaves the
    # model as it is, DP-FedAvg releases its noise and counts the round (skipping it would leave
    # the round unaccounted and reveal that it aborted; see securefl.privacy.central).
    params = fed.server_update(params, aggregate)
    record["survivors"] = len(aggregate.survivors)
    if aggregate.weight_sum > 0:
        record["train_loss"] = aggregate.train_loss_sum / aggregate.weight_sum
    record.update(aggregate.details)
    record.setdefault("bytes_up", 0)
    model_bytes = params.numel() * params.element_size()
    record["bytes_down"] = len(sampled) * model_bytes + record.get("bytes_down", 0)
    return params, record


def run_simulation(
    config: RunConfig,
    *,
    federation: Federation | None = None,
    on_round: RoundCallback | None = None,
) -> History:
    """Run ``config.rounds`` rounds and return the :class:`History` with the final model.

    ``on_round`` is called with each round's record as soon as it is complete (progress bars).
    """
    torch.set_num_threads(config.threads)
    fed = federation or build_federation(config)
    history = History(
        config=config,
        partition=partition_stats(fed.parts, fed.dataset.train_y, num_classes=fed.dataset.num_outputs),
    )
    params = to_vector(fed.eval_model.parameters())
    accountants = [x for x in (fed.trainer, fed.server_update) if isinstance(x, PrivacyAccounting)]
    for round_index in range(1, config.rounds + 1):
        started = time.perf_counter()
        eligible = [s.client_id for s in fed.shards if fed.trainer.can_train(s.client_id)]
        if not eligible:
            history.stopped_early = (
                f"no client can train in round {round_index}: every privacy budget is spent"
            )
            log.info(history.stopped_early)
            break
        params, record = run_round(fed, params, round_index=round_index, eligible=eligible)
        if accountants:
            record.pop("train_loss", None)  # clients do not send it under DP (_without_loss)
            for accountant in accountants:
                record.update(accountant.round_metrics())
        record.update(evaluate(fed.eval_model, params, fed.dataset))
        record["seconds"] = time.perf_counter() - started
        history.records.append(record)
        if on_round is not None:
            on_round(record)
    load_vector(fed.eval_model.parameters(), params)
    history.model = fed.eval_model
    if accountants:
        history.privacy = {}
        for accountant in accountants:
            history.privacy.update(accountant.ledger())
    return history
