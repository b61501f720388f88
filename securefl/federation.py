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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from securefl.config import RunConfig
from securefl.data import Dataset, load_dataset, partition, partition_stats
from securefl.fl.client import FederatedClient
from securefl.fl.evaluation import Evaluator
from securefl.fl.fedavg import ClientSampler, PlainSum, WeightedMean, weight_by_samples
from securefl.fl.history import History
from securefl.fl.record import RoundRecord, RoundStatus
from securefl.fl.secure_channel import SecureAggregationChannel, traffic_details
from securefl.fl.server import FederatedServer
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import (
    Aggregation,
    AggregationClient,
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
    client's Ed25519 identity; the channel holds only their public halves.
    """

    config: RunConfig
    dataset: Dataset
    parts: list[torch.Tensor]
    shards: list[ClientShard]
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
        c = self.config
        return {
            "algorithm": c.algorithm,
            "local_epochs": c.training.local_epochs,
            "batch_size": c.training.batch_size,
            "lr": c.training.lr,
            "momentum": c.training.momentum,
            "weight_decay": c.weight_decay,
        }


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
    trainers = _build_trainers(config, new_model(), dataset, shards)
    sampling = config.central_dp.client_sampling if config.central_dp is not None else "fixed"
    max_clients = config.clients if sampling == "poisson" else config.sampled_clients
    channel: Aggregation = PlainSum(vector_length=num_params)
    signing_keys = None
    min_released_clients = 1  # a plain sum releases one client's update as a sum
    if config.secagg is not None:
        if config.secagg.active_adversary:  # each client's identity, enrolled before the first round
            signing_keys = {s.client_id: keys.generate_signing_key() for s in shards}
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
            verify_keys=None
            if signing_keys is None
            else {c: k.public_key() for c, k in signing_keys.items()},
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

            assert isinstance(channel, SecureAggregationChannel)  # RunConfig requires secagg
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
        trainers=trainers,
        transform=transform,
        channel=channel,
        server_update=server_update,
        signing_keys=signing_keys,
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


def _build_trainers(
    config: RunConfig, model: nn.Module, dataset: Dataset, shards: list[ClientShard]
) -> dict[int, ClientTrainer]:
    """Plain local SGD or FedSGD's single full-batch step (one trainer shared by every simulated
    client), or Opacus DP-SGD (one trainer and ledger per client, sharing one engine)."""
    fedsgd = config.algorithm == "fedsgd"
    if config.dp is not None:
        from securefl.privacy import DPSGDEngine, DPSGDTrainer  # Opacus only when asked for

        engine = DPSGDEngine(
            model=model,
            task=dataset.task,
            lr=config.training.lr,
            max_grad_norm=config.dp.max_grad_norm,
            batch_size=config.training.batch_size,
            momentum=config.training.momentum,
            weight_decay=config.weight_decay,
        )
        return {
            s.client_id: DPSGDTrainer(
                config=config.dp,
                client_sizes={s.client_id: len(s)},
                rounds=config.rounds,
                local_epochs=config.training.local_epochs,
                batch_size=config.training.batch_size,
                engine=engine,
            )
            for s in shards
        }
    shared = LocalSGDTrainer(
        model=model,
        task=dataset.task,
        local_epochs=1 if fedsgd else config.training.local_epochs,
        batch_size=None if fedsgd else config.training.batch_size,
        lr=config.training.lr,
        momentum=0.0 if fedsgd else config.training.momentum,
        weight_decay=config.weight_decay,
    )
    return dict.fromkeys((s.client_id for s in shards), shared)


@dataclass
class Programs:
    """The two sides of a federation, ready to exchange bytes: nothing else connects them."""

    server: FederatedServer
    clients: dict[int, FederatedClient]


def build_programs(fed: Federation) -> Programs:
    """The server program and one client program per shard, from ``fed``'s plug points."""
    config = fed.config

    def client_aggregation(client_id: int) -> AggregationClient:
        channel = fed.channel
        if fed.signing_keys is None:
            return channel.client(client_id)
        # active secure aggregation: the client's own identity
        if not isinstance(channel, SignedAggregation):
            raise TypeError(
                f"signing keys need an aggregation whose clients sign, not {type(channel).__name__}"
            )
        return channel.client(client_id, signing_key=fed.signing_keys[client_id])

    # The pinned architecture every client checks the received model against (its own copy).
    architecture = copy.deepcopy(fed.eval_model)
    clients = {
        shard.client_id: FederatedClient(
            shard=shard,
            trainer=fed.trainers[shard.client_id],
            transform=fed.transform,
            aggregation=client_aggregation(shard.client_id),
            architecture=architecture,
            generator_for=lambda round_index, client_id: client_generator(
                config.seed, round_index, client_id
            ),
        )
        for shard in fed.shards
    }
    server = FederatedServer(
        params=to_vector(fed.eval_model.parameters()),
        architecture=fed.eval_model,
        sampler=fed.sampler,
        aggregation=fed.channel,
        server_update=fed.server_update,
        settings=fed.round_settings,
        evaluate=Evaluator(
            model=fed.eval_model, x=fed.dataset.test_x, y=fed.dataset.test_y, task=fed.dataset.task
        ),
        num_clients=len(fed.shards),
        train_loss_reported=config.dp is None and config.central_dp is None,
    )
    return Programs(server=server, clients=clients)


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
    transport: InProcessTransport | ProcessTransport = (
        ProcessTransport(workers=config.workers, faults_for=faults_for)
        if config.workers > 1
        else InProcessTransport(faults_for=faults_for)
    )
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
            record = server.records[-1]
            model_bytes = server.params.numel() * server.params.element_size()
            details = traffic_details(traffic)
            record = dataclasses.replace(
                record,
                bytes_up=details.pop("bytes_up"),
                bytes_down=details.pop("bytes_down"),
                seconds=time.perf_counter() - started,
                aggregation={**record.aggregation, **details, "model_bytes": model_bytes},
                privacy={**record.privacy, **_client_privacy(client_accountants)},
            )
            history.records.append(record)
            if on_round is not None:
                on_round(record)
            if record.status is RoundStatus.DIVERGED:
                history.diverged = _divergence_message(record, config)
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


def _divergence_message(record: RoundRecord, config: RunConfig) -> str:
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
