"""The composition root: a :class:`~securefl.config.RunConfig` becomes a server program, client
programs and a transport, and :func:`run_simulation` runs them.

:func:`build_federation` loads and partitions the data and builds the plug points of a run -- each
client's trainer, the update transform, the aggregation, the server update, the sampler -- as a
:class:`Federation` that can be inspected and changed (``dataclasses.replace``) before it runs.
:func:`run_simulation` turns it into one :class:`~securefl.fl.server.FederatedServer` (sampling,
aggregation's server half, server update, evaluation, history) and one
:class:`~securefl.fl.client.FederatedClient` per client (its data, trainer, DP ledger, transform,
aggregation half), which talk only through encoded messages carried by a transport (default:
:class:`~securefl.transports.inprocess.InProcessTransport`).  This module sits above ``fl/`` and
``privacy/``: it is the one place that knows both.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from torch import nn

from securefl.config import RunConfig
from securefl.data import Dataset, load_dataset, partition, partition_stats
from securefl.data.datasets import DatasetInfo, Task
from securefl.fl.client import ClientMemory, FederatedClient
from securefl.fl.client_pool import ClientPool, ShardRows
from securefl.fl.evaluation import Evaluator
from securefl.fl.fedavg import ClientSampler, PlainSum, WeightedMean, weight_by_samples
from securefl.fl.history import History
from securefl.fl.record import RoundRecord, RoundStatus
from securefl.fl.secure_channel import SecureAggregationChannel, traffic_details
from securefl.fl.server import FederatedServer
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.turns import Traffic
from securefl.fl.types import (
    Aggregation,
    ClientShard,
    ClientTrainer,
    Contribution,
    PrivacyAccounting,
    ServerUpdate,
    SignedAggregation,
    Update,
    UpdateTransform,
)
from securefl.fl.vectors import load_vector, to_vector
from securefl.models import build_model
from securefl.protocols.crypto import keys
from securefl.transports.inprocess import InProcessTransport
from securefl.transports.processes import ProcessTransport

if TYPE_CHECKING:
    from securefl.privacy import DPSGDTrainer
    from securefl.transports.ray_actors import RayTransport

log = logging.getLogger(__name__)

RoundCallback = Callable[[RoundRecord], None]


def client_generator(seed: int, round_index: int, client_id: int) -> torch.Generator:
    """The simulation randomness of one client in one round (batch shuffling): independent of
    which other clients were sampled.  Not secret: DP trainers draw their own."""
    state = np.random.SeedSequence([seed, round_index, client_id]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


@dataclass
class Federation:
    """Everything a run is made of, built once; swap any plug point to try a new protection.

    ``trainers`` maps each client to its trainer (plain SGD shares one trainer, i.e. one model,
    between the simulated clients; DP-SGD gives each client its own, with its own ledger, sharing
    one compute engine).  ``signing_keys`` (active-adversary secure aggregation) are each
    client's Ed25519 identity; the channel holds only their public halves.  ``shards[c]`` is
    client ``c``'s data (``shards[c].client_id == c``): by default its rows of the data set,
    copied out when asked for (:class:`~securefl.fl.client_pool.ShardRows`).
    """

    config: RunConfig
    dataset: Dataset
    parts: list[torch.Tensor]
    shards: Sequence[ClientShard]
    eval_model: nn.Module
    trainers: Mapping[int, ClientTrainer]
    transform: UpdateTransform
    channel: Aggregation
    server_update: ServerUpdate
    sampler: ClientSampler
    signing_keys: Mapping[int, Ed25519PrivateKey] | None = None

    @property
    def round_settings(self) -> dict[str, int | float | str]:
        """The training settings every client of a round receives with the model."""
        return round_settings(self.config)


def build_federation(config: RunConfig, *, dataset: Dataset | None = None) -> Federation:
    """Load data, partition it, build the model and the plug points from ``config``."""
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
    shards = ShardRows(dataset.train_x, dataset.train_y, parts)
    eval_model = build_model_for(config, dataset.info)
    num_params = sum(p.numel() for p in eval_model.parameters())
    new_trainer = trainer_factory(config, build_model_for(config, dataset.info), dataset.task)
    signing_keys = None
    if config.secagg is not None and config.secagg.active_adversary:
        # each client's identity, enrolled before the first round
        signing_keys = {client_id: keys.generate_signing_key() for client_id in range(len(shards))}
    channel = build_aggregation(
        config,
        num_params=num_params,
        max_client_samples=max(len(rows) for rows in parts),
        verify_keys=None if signing_keys is None else {c: k.public_key() for c, k in signing_keys.items()},
    )
    return Federation(
        config=config,
        dataset=dataset,
        parts=parts,
        shards=shards,
        eval_model=eval_model,
        trainers={s.client_id: new_trainer(s) for s in shards},
        transform=update_transform(config),
        channel=channel,
        server_update=build_server_update(config, channel),
        signing_keys=signing_keys,
        sampler=build_sampler(config),
    )


def round_settings(config: RunConfig) -> dict[str, int | float | str]:
    """The training settings every client of a round receives with the model."""
    return {
        "algorithm": config.algorithm,
        "local_epochs": config.training.local_epochs,
        "batch_size": config.training.batch_size,
        "lr": config.training.lr,
        "momentum": config.training.momentum,
        "weight_decay": config.weight_decay,
    }


def build_model_for(config: RunConfig, info: DatasetInfo) -> nn.Module:
    """``config.model`` for ``info``'s inputs and outputs, initialised from ``config.seed``: the
    same weights in every process that builds it (the server's global model, a client's pinned
    architecture)."""
    return build_model(
        config.model, input_shape=info.input_shape, num_outputs=info.num_outputs, seed=config.seed
    )


def _poisson_sampling(config: RunConfig) -> bool:
    return config.central_dp is not None and config.central_dp.client_sampling == "poisson"


def build_sampler(config: RunConfig) -> ClientSampler:
    """Who trains in each round.  Under central DP the sample must stay unknown to the server
    (amplification by sampling): the draw is then secret."""
    return ClientSampler(
        num_clients=config.clients,
        per_round=config.sampled_clients,
        scheme="poisson" if _poisson_sampling(config) else "fixed",
        seed=config.seed,
        secret=config.central_dp is not None,
    )


def build_aggregation(
    config: RunConfig,
    *,
    num_params: int,
    max_client_samples: int,
    verify_keys: Mapping[int, Ed25519PublicKey] | None = None,
) -> Aggregation:
    """The aggregation both sides run, computed from the configuration alone (so a server and a
    client on different machines build the same one): a plain sum, secure aggregation, or
    distributed DP under secure aggregation.  ``max_client_samples`` bounds a FedAvg client's
    weight (the largest shard); ``verify_keys`` are the clients' enrolled Ed25519 identities
    (active-adversary secure aggregation)."""
    if config.secagg is None:
        return PlainSum(vector_length=num_params)
    max_clients = config.clients if _poisson_sampling(config) else config.sampled_clients
    central = config.central_dp
    secure = SecureAggregationChannel(
        config=config.secagg,
        num_params=num_params,
        # DP-FedAvg clients send weight 1; FedAvg clients their sample count.
        weight_bound=1 if central is not None else max_client_samples,
        clients_per_round=config.sampled_clients,
        max_clients=max_clients,
        dp_clip_norm=central.clip_norm if central is not None and not central.distributed else None,
        seed=config.seed,
        verify_keys=None if verify_keys is None else dict(verify_keys),
    )
    if central is None or not central.distributed:
        return secure
    from securefl.privacy.distributed import DistributedDPChannel  # Opacus only when asked for

    return DistributedDPChannel(
        secure=secure,
        num_params=num_params,
        clip_norm=central.clip_norm,
        noise_multiplier=central.noise_multiplier,
        delta=central.delta,
        max_clients=max_clients,
        seed=config.seed,
    )


def build_server_update(config: RunConfig, channel: Aggregation) -> ServerUpdate:
    """FedAvg's weighted mean, or DP-FedAvg's noised mean with its user-level accountant (the
    clients' noise under distributed DP, central DP's ε kept for comparison)."""
    central = config.central_dp
    if central is None:
        return WeightedMean()
    from securefl.privacy import DPFedAvgServerUpdate  # Opacus only when asked for

    min_released_clients = 1  # a plain sum releases one client's update as a sum
    if _poisson_sampling(config):
        secure = getattr(channel, "secure", channel)
        if isinstance(secure, SecureAggregationChannel):
            min_released_clients = secure.smallest_round(config.clients)
            log.info(
                "DP-FedAvg with secure aggregation: a Poisson round of fewer than %d clients "
                "releases noise only, so one user can move a round by %d·clip: accounted at z/%d",
                min_released_clients,
                min_released_clients,
                min_released_clients,
            )
    central_update = DPFedAvgServerUpdate(
        noise_multiplier=central.noise_multiplier,
        clip_norm=central.clip_norm,
        delta=central.delta,
        clients=config.clients,
        clients_per_round=config.sampled_clients,
        client_sampling=central.client_sampling,
        accountant=central.accountant,
        min_released_clients=min_released_clients,
    )
    if not central.distributed:
        return central_update
    from securefl.privacy.distributed import DistributedDPChannel, DistributedDPServerUpdate

    if not isinstance(channel, DistributedDPChannel):
        raise TypeError(f"distributed DP needs a DistributedDPChannel, not {type(channel).__name__}")
    return DistributedDPServerUpdate(
        channel=channel, expected_clients=config.sampled_clients, central_reference=central_update
    )


def update_transform(config: RunConfig) -> UpdateTransform:
    """What a client does to its update before aggregation: FedAvg's weighting by sample count,
    or DP-FedAvg's clipping (weight 1).  Under any DP the training loss stays on the client."""
    transform: UpdateTransform = weight_by_samples
    if config.central_dp is not None:
        from securefl.privacy import ClipUpdate  # Opacus only when asked for

        transform = ClipUpdate(config.central_dp.clip_norm)
    if config.dp is not None or config.central_dp is not None:
        transform = _without_loss(transform)
    return transform


def _without_loss(transform: UpdateTransform) -> UpdateTransform:
    """Under DP a client's training loss is computed without noise: it does not leave the client."""

    def transform_without_loss(update: Update) -> Contribution:
        return dataclasses.replace(transform(update), train_loss=0.0)

    return transform_without_loss


TrainerFactory = Callable[[ClientShard], ClientTrainer]
"""``shard -> trainer``: the trainer of the client holding ``shard``."""


def trainer_factory(config: RunConfig, model: nn.Module, task: Task) -> TrainerFactory:
    """Plain local SGD or FedSGD's single full-batch step (one trainer, i.e. one model, shared by
    every client a process hosts), or Opacus DP-SGD (one trainer and ledger per client, sharing
    one compute engine).  ``model`` is the process's training copy."""
    fedsgd = config.algorithm == "fedsgd"
    if config.dp is not None:
        from securefl.privacy import DPSGDEngine, DPSGDTrainer  # Opacus only when asked for

        dp = config.dp
        engine = DPSGDEngine(
            model=model,
            task=task,
            lr=config.training.lr,
            max_grad_norm=dp.max_grad_norm,
            batch_size=config.training.batch_size,
            momentum=config.training.momentum,
            weight_decay=config.weight_decay,
            device=config.torch_device,
        )

        def dp_trainer(shard: ClientShard) -> ClientTrainer:
            return DPSGDTrainer(
                config=dp,
                client_sizes={shard.client_id: len(shard)},
                rounds=config.rounds,
                local_epochs=config.training.local_epochs,
                batch_size=config.training.batch_size,
                engine=engine,
            )

        return dp_trainer
    shared = LocalSGDTrainer(
        model=model,
        task=task,
        local_epochs=1 if fedsgd else config.training.local_epochs,
        batch_size=None if fedsgd else config.training.batch_size,
        lr=config.training.lr,
        momentum=0.0 if fedsgd else config.training.momentum,
        weight_decay=config.weight_decay,
        device=config.torch_device,
    )
    return lambda shard: shared


@dataclass
class Programs:
    """The two sides of a federation, ready to exchange bytes: nothing else connects them.
    ``clients`` builds a client's program when it is first asked for
    (:class:`~securefl.fl.client_pool.ClientPool`; the in-process transport parks them again)."""

    server: FederatedServer
    clients: Mapping[int, FederatedClient]


def build_programs(fed: Federation) -> Programs:
    """The server program and a pool of client programs, one per shard, from ``fed``'s plug
    points: a client's program is built when it is sampled, from its shard rows, its trainer
    (and ledger), its signing key and what it remembered from its last round."""
    # The pinned architecture every client checks the received model against (its own copy).
    architecture = copy.deepcopy(fed.eval_model)

    def build(client_id: int, memory: ClientMemory | None) -> FederatedClient:
        return client_program(
            fed.config,
            shard=fed.shards[client_id],
            trainer=fed.trainers[client_id],
            transform=fed.transform,
            aggregation=fed.channel,
            architecture=architecture,
            signing_key=None if fed.signing_keys is None else fed.signing_keys[client_id],
            memory=memory,
        )

    clients = ClientPool(len(fed.shards), build)
    server = server_program(
        fed.config,
        eval_model=fed.eval_model,
        test_x=fed.dataset.test_x,
        test_y=fed.dataset.test_y,
        task=fed.dataset.task,
        aggregation=fed.channel,
        server_update=fed.server_update,
        sampler=fed.sampler,
        num_clients=len(fed.shards),
    )
    return Programs(server=server, clients=clients)


def server_program(
    config: RunConfig,
    *,
    eval_model: nn.Module,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    task: Task,
    aggregation: Aggregation,
    server_update: ServerUpdate,
    sampler: ClientSampler,
    num_clients: int,
) -> FederatedServer:
    """The server program of ``num_clients`` clients: the global model (``eval_model``'s
    weights), sampling, the aggregation's server half, the server update and evaluation on the
    held-out ``test_x``."""
    return FederatedServer(
        params=to_vector(eval_model.parameters()),
        architecture=eval_model,
        sampler=sampler,
        aggregation=aggregation,
        server_update=server_update,
        settings=round_settings(config),
        evaluate=Evaluator(model=eval_model, x=test_x, y=test_y, task=task, device=config.torch_device),
        num_clients=num_clients,
        train_loss_reported=config.dp is None and config.central_dp is None,
    )


def client_program(
    config: RunConfig,
    *,
    shard: ClientShard,
    trainer: ClientTrainer,
    transform: UpdateTransform,
    aggregation: Aggregation,
    architecture: nn.Module,
    signing_key: Ed25519PrivateKey | None = None,
    memory: ClientMemory | None = None,
) -> FederatedClient:
    """The client program of ``shard``'s owner: its trainer, transform, its half of
    ``aggregation`` (signed with ``signing_key`` under active-adversary secure aggregation) and the
    pinned ``architecture`` it checks every received model against; ``memory``: what it
    remembered from its last round, when it is rebuilt."""
    if signing_key is None:
        half = aggregation.client(shard.client_id)
    elif isinstance(aggregation, SignedAggregation):
        half = aggregation.client(shard.client_id, signing_key=signing_key)
    else:
        raise TypeError(
            f"signing keys need an aggregation whose clients sign, not {type(aggregation).__name__}"
        )
    return FederatedClient(
        shard=shard,
        trainer=trainer,
        transform=transform,
        aggregation=half,
        architecture=architecture,
        generator_for=lambda round_index, client_id: client_generator(config.seed, round_index, client_id),
        memory=memory,
    )


def build_server(
    config: RunConfig,
    *,
    info: DatasetInfo,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    max_client_samples: int,
    verify_keys: Mapping[int, Ed25519PublicKey] | None = None,
) -> FederatedServer:
    """The server program alone, as a deployment runs it: built from the configuration and the
    server's held-out ``test_x``/``test_y``, holding no client data.  ``max_client_samples``
    and ``verify_keys`` as in :func:`build_aggregation` (the same values every client uses)."""
    eval_model = build_model_for(config, info)
    channel = build_aggregation(
        config,
        num_params=sum(p.numel() for p in eval_model.parameters()),
        max_client_samples=max_client_samples,
        verify_keys=verify_keys,
    )
    return server_program(
        config,
        eval_model=eval_model,
        test_x=test_x,
        test_y=test_y,
        task=info.task,
        aggregation=channel,
        server_update=build_server_update(config, channel),
        sampler=build_sampler(config),
        num_clients=config.clients,
    )


class ClientFactory:
    """Client programs built from the configuration alone, one shard at a time: what a
    deployment's client process (its own shard) or a worker hosting many clients builds.

    What every client of this process shares is built once: the pinned architecture, the
    aggregation (each client gets its own half), the update transform and the training model
    (or DP-SGD's compute engine; each DP client still gets its own trainer and ledger).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        info: DatasetInfo,
        max_client_samples: int,
        verify_keys: Mapping[int, Ed25519PublicKey] | None = None,
    ) -> None:
        self.config = config
        self.architecture = build_model_for(config, info)
        self.aggregation = build_aggregation(
            config,
            num_params=sum(p.numel() for p in self.architecture.parameters()),
            max_client_samples=max_client_samples,
            verify_keys=verify_keys,
        )
        self.transform = update_transform(config)
        self._new_trainer = trainer_factory(config, build_model_for(config, info), info.task)

    def trainer(self, shard: ClientShard) -> ClientTrainer:
        """A new trainer for ``shard``'s owner (under DP-SGD with a new, empty ledger)."""
        return self._new_trainer(shard)

    def client(
        self,
        shard: ClientShard,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        trainer: ClientTrainer | None = None,
        memory: ClientMemory | None = None,
    ) -> FederatedClient:
        """The client program of ``shard``'s owner (signing with ``signing_key`` under
        active-adversary secure aggregation), training with ``trainer`` (default: a new one) and
        remembering ``memory`` (a deployed client restarted with the ledger on its disk remembers
        the last round it trained, so a replay of it is refused, not trained again)."""
        return client_program(
            self.config,
            shard=shard,
            trainer=trainer if trainer is not None else self._new_trainer(shard),
            transform=self.transform,
            aggregation=self.aggregation,
            architecture=self.architecture,
            signing_key=signing_key,
            memory=memory,
        )


def run_simulation(
    config: RunConfig,
    *,
    federation: Federation | None = None,
    on_round: RoundCallback | None = None,
) -> History:
    """Run ``config.rounds`` rounds and return the :class:`History` with the final model.

    ``on_round`` is called with each round's record as soon as it is complete (progress bars).
    A round whose model or test loss is NaN or infinite stops the run: the history keeps the
    rounds before it and that round, says why in :attr:`History.diverged`, and its model is the
    last finite one (the model that round started from).
    """
    torch.set_num_threads(config.threads)
    fed = federation or build_federation(config)
    programs = build_programs(fed)
    server, clients = programs.server, programs.clients
    faults_for = getattr(fed.channel, "simulated_dropouts", None)
    workers = config.worker_processes
    transport: InProcessTransport | ProcessTransport | RayTransport
    if config.backend == "ray":
        from securefl.transports.ray_actors import RayTransport  # Ray only when asked for

        transport = RayTransport(
            config,
            shards=fed.shards,
            signing_keys=fed.signing_keys,
            faults_for=faults_for,
            actors=config.workers,
        )
    elif workers > 1:
        transport = ProcessTransport(workers=workers, faults_for=faults_for)
    else:
        transport = InProcessTransport(faults_for=faults_for)
    with transport:
        transport.enrol(server, clients)
        history = History(
            config=config,
            partition=partition_stats(fed.parts, fed.dataset.train_y, num_classes=fed.dataset.num_outputs),
        )
        client_accountants = _client_accountants(fed.trainers)
        final = server.params
        for round_index in range(1, config.rounds + 1):
            able, needed = len(server.eligible), fed.channel.fewest_clients
            if able < needed:
                history.stopped_early = (
                    f"no client can train in round {round_index}: every privacy budget is spent"
                    if able == 0
                    else f"only {able} client(s) can still train in round {round_index}, and a round of "
                    f"this aggregation needs {needed}: the others' privacy budgets are spent"
                )
                log.info(history.stopped_early)
                break
            started = time.perf_counter()
            before = server.params
            traffic = transport.run_round(server, clients)
            record = measured_record(
                server.records[-1],
                traffic,
                seconds=time.perf_counter() - started,
                model_bytes=server.params.numel() * server.params.element_size(),
                privacy=_client_privacy(client_accountants),
            )
            history.records.append(record)
            if on_round is not None:
                on_round(record)
            if record.status is RoundStatus.DIVERGED:
                history.diverged = divergence_message(record, config)
                log.info(history.diverged)
                final = before  # the last finite model: the one the diverged round started from
                break
            final = server.params
    load_vector(fed.eval_model.parameters(), final)
    history.model = fed.eval_model
    accountants = [*client_accountants, *server.accountants]
    if accountants:
        history.privacy = {}
        if client_accountants:
            history.privacy.update(_client_ledger(client_accountants))
        for accountant in server.accountants:
            history.privacy.update(accountant.ledger())
    return history


def measured_record(
    record: RoundRecord,
    traffic: Traffic,
    *,
    seconds: float,
    model_bytes: int,
    privacy: Mapping[str, float] | None = None,
) -> RoundRecord:
    """``record`` (the server's) with what its transport measured: the bytes each direction
    carried, the seconds the round took, each side's compute time and the model's size; and the
    clients' privacy figures ``privacy`` where this process holds their ledgers."""
    details = traffic_details(traffic)
    return dataclasses.replace(
        record,
        bytes_up=details.pop("bytes_up"),
        bytes_down=details.pop("bytes_down"),
        seconds=seconds,
        aggregation={**record.aggregation, **details, "model_bytes": model_bytes},
        privacy={**record.privacy, **(privacy or {})},
    )


def divergence_message(record: RoundRecord, config: RunConfig) -> str:
    """Why a run stopped at the diverged round ``record``, and what to try."""
    return (
        f"training diverged in round {record.round}: {record.divergence}; lower `lr` (now "
        f"{config.training.lr:g}), or clip the updates (DP-FedAvg's `central_dp.clip_norm`)"
    )


def _client_accountants(trainers: Mapping[int, ClientTrainer]) -> list[PrivacyAccounting]:
    """The distinct trainers that account privacy (each client's DP-SGD ledger)."""
    unique = {id(t): t for t in trainers.values()}
    return [t for t in unique.values() if isinstance(t, PrivacyAccounting)]


def _client_privacy(accountants: list[PrivacyAccounting]) -> dict[str, float]:
    """The clients' privacy figures after a round (what each client would report)."""
    if not accountants:
        return {}
    if len(accountants) == 1:
        return accountants[0].round_metrics()
    from securefl.privacy import dp_round_metrics

    return dp_round_metrics(_dp_sgd_trainers(accountants))


def _client_ledger(accountants: list[PrivacyAccounting]) -> dict:
    if len(accountants) == 1:
        return accountants[0].ledger()
    from securefl.privacy import dp_ledger

    return dp_ledger(_dp_sgd_trainers(accountants))


def _dp_sgd_trainers(accountants: list[PrivacyAccounting]) -> list[DPSGDTrainer]:
    """Several clients' ledgers report together only as DP-SGD trainers' (one per client)."""
    from securefl.privacy import DPSGDTrainer

    trainers = [a for a in accountants if isinstance(a, DPSGDTrainer)]
    if len(trainers) != len(accountants):
        raise TypeError("several clients' privacy ledgers report together only as DP-SGD trainers'")
    return trainers
