"""The protections an attack is measured against, and what the server observes under each.

One small frozen class per defence; each validates its own parameters and plays the victim's round
(:meth:`Defence.observe`) through securefl's own code paths, never a re-implementation:

- :class:`NoDefence` (``none``): the client trains with :class:`~securefl.fl.training.LocalSGDTrainer`
  and sends :func:`~securefl.fl.fedavg.weight_by_samples`; the server sees that one update in clear.
- :class:`ClipDefence` (``clip``): the client scales its update to L2 norm ``max_grad_norm`` with
  DP-FedAvg's client transform :class:`~securefl.privacy.central.ClipUpdate`, without any noise.
- :class:`PruneDefence` (``prune``): gradient pruning, the defence evaluated by Zhu et al., "Deep
  Leakage from Gradients", NeurIPS 2019: the client zeroes the ``prune_ratio`` fraction of
  smallest-magnitude entries of every layer's update (the per-layer magnitude pruning of Lin et al.,
  "Deep Gradient Compression", ICLR 2018) — :class:`PruneUpdate`.
- :class:`NoiseDefence` (``noise``): Gaussian noise of standard deviation ``noise_std`` added to every
  entry of the update, the other defence of Zhu et al. (2019), with no accounting —
  :class:`NoiseUpdate`.
- :class:`DPSGDDefence` (``dp``): the client trains with Opacus' DP-SGD (Abadi et al., "Deep Learning
  with Differential Privacy", CCS 2016) through :class:`~securefl.privacy.dp_client.DPSGDTrainer`
  (per-example clipping to ``max_grad_norm``, noise ``noise_multiplier``); ε from its ledger.
- :class:`SecAggDefence` (``secagg``): the victim and ``clients − 1`` other clients send their updates
  through :class:`~securefl.fl.secure_channel.SecureAggregationChannel`, the real secure-aggregation
  protocol (Bonawitz et al., CCS 2017); the server gets only the protocol's sum.
- :class:`DistributedDPDefence` (``distributed-dp``): the same ``clients`` clip their updates to
  ``max_grad_norm`` and each adds its Skellam share (Agarwal et al., "The Skellam Mechanism for
  Differentially Private Federated Learning", NeurIPS 2021) before secure aggregation, through
  :class:`~securefl.privacy.distributed.DistributedDPChannel` (the path of ``train
  --distributed-dp``); the server gets a sum that is already noised at ``noise_multiplier`` (shares
  sized for a server that colludes with no client).

:data:`DEFENCES` maps the command line's names to the classes. The caller states the round's
protocol in a :class:`~securefl.attacks.observation.PublicKnowledge`; the defence adds what it
announces (clipping norm, pruning ratio, number of clients summed) to the observation's copy.
Errors name a parameter in backticks (`` `max_grad_norm` ``); the command line shows its flag.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import ClassVar

import torch
from torch import nn

from securefl.attacks.observation import Observation, ObservedKind, PublicKnowledge
from securefl.config import DPConfig, SecAggConfig
from securefl.errors import ConfigError
from securefl.fl.fedavg import weight_by_samples
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import Aggregate, ClientShard, Contribution, Update
from securefl.fl.vectors import to_vector
from securefl.validation import require_non_negative, require_positive

DEFAULT_DP_DELTA = 1e-5
SECAGG_BITS = 48
"""Ring size for the attack demos: the quantization step stays far below the update's values."""
DISTRIBUTED_DP_BITS = 20
"""Ring size of the distributed-DP demos: rounding inflates the clip by well under 0.1%."""
SECAGG_COORDINATE_BOUND = 16.0
"""Public per-coordinate clip of the secure channel, set well above any update entry of the demos
so the aggregate differs from the plain mean only by quantization (the clipped fraction is
reported in the round facts)."""


@dataclass(frozen=True)
class RoundFacts:
    """What the experiment (not the attacker) records about the round."""

    epsilon: float | None = None
    """DP-SGD: the victim's ε for this round at ``delta``, from Opacus' accountant (via the ledger);
    distributed DP: the user-level ε of the round (Skellam accountant)."""
    delta: float | None = None
    clipped: bool | None = None
    """``clip``: whether the bound changed the update."""
    secagg_clipped_fraction: float | None = None


@dataclass(frozen=True, eq=False)
class VictimRound:
    """One attacked round, checked and ready for a defence to play: the model the server sent,
    the victim's shard first and the other clients' after it (features in the model's dtype)."""

    public: PublicKnowledge
    server_model: nn.Module
    global_params: torch.Tensor
    clients: tuple[ClientShard, ...]
    generator: torch.Generator
    """Simulation randomness of the round (local training, the ``noise`` defence), seeded."""
    seed: int

    @property
    def victim(self) -> ClientShard:
        return self.clients[0]

    def local_updates(self) -> list[Update]:
        """Every client's update from plain full-batch local SGD, the victim's first."""
        trainer = LocalSGDTrainer(
            model=copy.deepcopy(self.server_model),
            task="classification",
            local_epochs=self.public.local_steps,
            batch_size=None,
            lr=self.public.learning_rate,
        )
        return [
            trainer.train(
                global_params=self.global_params, shard=shard, round_index=0, generator=self.generator
            )
            for shard in self.clients
        ]

    def client_observation(
        self, contribution: Contribution, *, clip_norm: float | None = None, prune_ratio: float | None = None
    ) -> Observation:
        """The server's view of one client's contribution, with what the defence announced."""
        public = replace(self.public, num_clients=1, clip_norm=clip_norm, prune_ratio=prune_ratio)
        return client_observation(public, self.global_params, contribution)

    def aggregate_observation(self, aggregate: Aggregate) -> Observation:
        """The server's view of a securely aggregated round."""
        public = replace(self.public, clip_norm=None, prune_ratio=None)
        return aggregate_observation(public, self.global_params, aggregate)


@dataclass(frozen=True)
class Defence(ABC):
    """A protection of the victim's round: its parameters, and what the server observes under it."""

    name: ClassVar[str]
    """The defence's name on the command line (``securefl attack --defence``)."""

    @property
    @abstractmethod
    def label(self) -> str:
        """A short human label, e.g. ``DP-SGD z=1`` or ``SecAgg N=16``."""

    @property
    def others_needed(self) -> int:
        """Other clients whose data the round needs besides the victim."""
        return 0

    def observe(
        self,
        *,
        public: PublicKnowledge,
        server_model: nn.Module,
        victim: ClientShard,
        others: Sequence[ClientShard] = (),
        seed: int = 0,
    ) -> tuple[Observation, RoundFacts]:
        """Play one round under this defence and return what the server observes, plus the facts.

        ``public`` is the round's protocol (model, shapes, batch size, local steps, learning rate);
        the defence fills in what it announces (``num_clients``, ``clip_norm``, ``prune_ratio``).
        ``server_model`` is the global model the server sent (its dtype is the round's arithmetic);
        the victim's and the :attr:`others_needed` other clients' shards hold ``public.batch_size``
        examples each.
        """
        if len(others) != self.others_needed:
            raise ValueError(
                f"defence {self.label} needs {self.others_needed} other clients, got {len(others)}"
            )
        for shard in (victim, *others):
            if len(shard) != public.batch_size:
                raise ValueError(
                    f"client {shard.client_id} holds {len(shard)} examples, the round {public.batch_size}"
                )
        global_params = to_vector(server_model.parameters())
        round_ = VictimRound(
            public=public,
            server_model=server_model,
            global_params=global_params,
            clients=tuple(
                ClientShard(s.client_id, s.x.to(global_params.dtype), s.y) for s in (victim, *others)
            ),
            generator=torch.Generator().manual_seed(seed),
            seed=seed,
        )
        return self.play(round_)

    @abstractmethod
    def play(self, round_: VictimRound) -> tuple[Observation, RoundFacts]:
        """This defence's round, through securefl's own code; called by :meth:`observe`."""


@dataclass(frozen=True)
class NoDefence(Defence):
    """The client's update in clear."""

    name: ClassVar[str] = "none"

    @property
    def label(self) -> str:
        return "no defence"

    def play(self, round_: VictimRound) -> tuple[Observation, RoundFacts]:
        (update,) = round_.local_updates()
        return round_.client_observation(weight_by_samples(update)), RoundFacts()


@dataclass(frozen=True)
class ClipDefence(Defence):
    """The update scaled to L2 norm at most ``max_grad_norm`` (DP-FedAvg's clipping, no noise)."""

    name: ClassVar[str] = "clip"
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("max_grad_norm", self.max_grad_norm)

    @property
    def label(self) -> str:
        return f"clip C={self.max_grad_norm:g}"

    def play(self, round_: VictimRound) -> tuple[Observation, RoundFacts]:
        (update,) = round_.local_updates()
        from securefl.privacy.central import ClipUpdate  # Opacus only when this defence runs

        contribution = ClipUpdate(self.max_grad_norm)(update)
        facts = RoundFacts(clipped=bool(float(update.delta.double().norm()) > self.max_grad_norm))
        return round_.client_observation(contribution, clip_norm=self.max_grad_norm), facts


@dataclass(frozen=True)
class PruneDefence(Defence):
    """The ``prune_ratio`` smallest-magnitude entries of every layer's update zeroed."""

    name: ClassVar[str] = "prune"
    prune_ratio: float = 0.9

    def __post_init__(self) -> None:
        _check_fraction("prune_ratio", self.prune_ratio)

    @property
    def label(self) -> str:
        return f"prune {self.prune_ratio:.0%}"

    def play(self, round_: VictimRound) -> tuple[Observation, RoundFacts]:
        (update,) = round_.local_updates()
        layer_sizes = [p.numel() for p in round_.server_model.parameters()]
        contribution = PruneUpdate(self.prune_ratio, layer_sizes=layer_sizes)(update)
        return round_.client_observation(contribution, prune_ratio=self.prune_ratio), RoundFacts()


@dataclass(frozen=True)
class NoiseDefence(Defence):
    """N(0, ``noise_std``²) added to every entry of the update, without accounting."""

    name: ClassVar[str] = "noise"
    noise_std: float = 0.01

    def __post_init__(self) -> None:
        _check_non_negative("noise_std", self.noise_std)

    @property
    def label(self) -> str:
        return f"noise σ={self.noise_std:g}"

    def play(self, round_: VictimRound) -> tuple[Observation, RoundFacts]:
        (update,) = round_.local_updates()
        contribution = NoiseUpdate(self.noise_std, generator=round_.generator)(update)
        return round_.client_observation(contribution), RoundFacts()


@dataclass(frozen=True)
class DPSGDDefence(Defence):
    """Opacus' DP-SGD on the client: per-example clipping to ``max_grad_norm``, noise
    ``noise_multiplier``, ε at δ = :data:`DEFAULT_DP_DELTA` from the client's ledger."""

    name: ClassVar[str] = "dp"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    """Per-example gradient bound."""

    def __post_init__(self) -> None:
        _check_non_negative("noise_multiplier", self.noise_multiplier)
        _check_positive("max_grad_norm", self.max_grad_norm)

    @property
    def label(self) -> str:
        return f"DP-SGD z={self.noise_multiplier:g}"

    def play(self, round_: VictimRound) -> tuple[Observation, RoundFacts]:
        public, victim = round_.public, round_.victim
        from securefl.privacy.dp_client import DPSGDTrainer  # Opacus only when this defence runs

        trainer = DPSGDTrainer(
            model=copy.deepcopy(round_.server_model),
            task="classification",
            config=DPConfig(
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm,
                delta=DEFAULT_DP_DELTA,
            ),
            client_sizes={victim.client_id: public.batch_size},
            rounds=1,
            local_epochs=public.local_steps,
            batch_size=public.batch_size,
            lr=public.learning_rate,
            # A measurement: the noise repeats with the experiment's seed, which the attack never reads.
            seed=round_.seed,
        )
        update = trainer.train(
            global_params=round_.global_params, shard=victim, round_index=0, generator=round_.generator
        )
        facts = RoundFacts(epsilon=trainer.epsilon(victim.client_id), delta=DEFAULT_DP_DELTA)
        # One example, one step: per-example clipping is clipping the update to lr * C.
        single = public.batch_size == 1 and public.local_steps == 1
        clip_norm = public.learning_rate * self.max_grad_norm if single else None
        return round_.client_observation(weight_by_samples(update), clip_norm=clip_norm), facts


@dataclass(frozen=True)
class SecAggDefence(Defence):
    """The victim's update summed with ``clients − 1`` others' by the secure-aggregation protocol."""

    name: ClassVar[str] = "secagg"
    clients: int = 16

    def __post_init__(self) -> None:
        _check_clients(self.clients)

    @property
    def label(self) -> str:
        return f"SecAgg N={self.clients}"

    @property
    def others_needed(self) -> int:
        return self.clients - 1

    def play(self, round_: VictimRound) -> tuple[Observation, RoundFacts]:
        updates = round_.local_updates()
        channel = SecureAggregationChannel(
            config=SecAggConfig(bits=SECAGG_BITS, clip=SECAGG_COORDINATE_BOUND),
            num_params=round_.global_params.numel(),
            weight_bound=round_.public.batch_size,
            clients_per_round=len(updates),
            seed=round_.seed,
        )
        # The server side only ever holds the protocol's output.
        aggregate = channel.aggregate([weight_by_samples(u) for u in updates], round_index=0)
        facts = RoundFacts(secagg_clipped_fraction=aggregate.details.get("secagg_clipped_fraction"))
        return round_.aggregate_observation(aggregate), facts


@dataclass(frozen=True)
class DistributedDPDefence(Defence):
    """``clients`` clipped updates, each with its Skellam share of noise, summed by secure
    aggregation; ε is the round's user-level ε at δ = :data:`DEFAULT_DP_DELTA`."""

    name: ClassVar[str] = "distributed-dp"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    """L2 bound of each client's whole update."""
    clients: int = 16

    def __post_init__(self) -> None:
        # distributed DP's noise is its point: each client's Skellam share needs z > 0
        _check_positive("noise_multiplier", self.noise_multiplier)
        _check_positive("max_grad_norm", self.max_grad_norm)
        _check_clients(self.clients)

    @property
    def label(self) -> str:
        return f"distributed DP z={self.noise_multiplier:g} N={self.clients}"

    @property
    def others_needed(self) -> int:
        return self.clients - 1

    def play(self, round_: VictimRound) -> tuple[Observation, RoundFacts]:
        updates = round_.local_updates()
        num_params = round_.global_params.numel()
        from securefl.privacy.distributed import DistributedDPChannel  # Opacus only when asked for

        distributed = DistributedDPChannel(
            secure=SecureAggregationChannel(
                config=SecAggConfig(bits=DISTRIBUTED_DP_BITS, max_colluders=0),  # the server alone
                num_params=num_params,
                weight_bound=1,
                clients_per_round=len(updates),
                seed=round_.seed,
            ),
            num_params=num_params,
            clip_norm=self.max_grad_norm,
            noise_multiplier=self.noise_multiplier,
            delta=DEFAULT_DP_DELTA,
            max_clients=len(updates),
            seed=round_.seed,
        )
        from securefl.privacy.central import ClipUpdate  # Opacus only when this defence runs

        clip = ClipUpdate(self.max_grad_norm)
        aggregate = distributed.aggregate([clip(u) for u in updates], round_index=0)
        release = distributed.take_release()
        facts = RoundFacts(epsilon=distributed.epsilon_of([release.honest_variance]), delta=DEFAULT_DP_DELTA)
        return round_.aggregate_observation(aggregate), facts


DEFENCES: Mapping[str, type[Defence]] = MappingProxyType(
    {
        kind.name: kind
        for kind in (
            NoDefence,
            ClipDefence,
            PruneDefence,
            NoiseDefence,
            DPSGDDefence,
            SecAggDefence,
            DistributedDPDefence,
        )
    }
)
"""Every defence by its command-line name, in the order ``securefl attack --help`` lists them."""


class PruneUpdate:
    """Zero the ``ratio`` smallest-magnitude entries of every layer's update, then weight by samples."""

    def __init__(self, ratio: float, *, layer_sizes: Sequence[int]) -> None:
        _check_fraction("ratio", ratio)
        self.ratio = float(ratio)
        self.layer_sizes = [int(size) for size in layer_sizes]

    def prune(self, vector: torch.Tensor) -> torch.Tensor:
        if vector.numel() != sum(self.layer_sizes):
            raise ValueError(f"update has {vector.numel()} entries, the layers {sum(self.layer_sizes)}")
        pieces = []
        for layer in vector.split(self.layer_sizes):
            drop = int(math.floor(self.ratio * layer.numel()))
            kept = layer.clone()
            if drop > 0:
                smallest = torch.topk(layer.abs(), drop, largest=False).indices
                kept[smallest] = 0
            pieces.append(kept)
        return torch.cat(pieces)

    def __call__(self, update: Update) -> Contribution:
        pruned = Update(update.client_id, self.prune(update.delta), update.num_samples, update.train_loss)
        return weight_by_samples(pruned)


class NoiseUpdate:
    """Add N(0, std²) to every entry of the update (seeded), then weight by samples."""

    def __init__(self, std: float, *, generator: torch.Generator) -> None:
        _check_non_negative("std", std)
        self.std = float(std)
        self.generator = generator

    def __call__(self, update: Update) -> Contribution:
        noise = torch.randn(update.delta.shape, generator=self.generator, dtype=update.delta.dtype)
        noisy = Update(
            update.client_id, update.delta + self.std * noise, update.num_samples, update.train_loss
        )
        return weight_by_samples(noisy)


def client_observation(
    public: PublicKnowledge, global_params: torch.Tensor, contribution: Contribution
) -> Observation:
    """The server's view of one client's round: that client's update (its weighted delta ÷ weight)."""
    delta = contribution.weighted_delta.to(torch.float64) / contribution.weight
    return Observation(
        model_parameters=global_params,
        observed_update=-delta,
        kind=ObservedKind.CLIENT_UPDATE,
        public=public,
    )


def aggregate_observation(
    public: PublicKnowledge, global_params: torch.Tensor, aggregate: Aggregate
) -> Observation:
    """The server's view of a securely aggregated round: the weighted mean update, nothing else;
    ``public.num_clients`` becomes the number of clients summed."""
    mean_delta = aggregate.weighted_delta_sum.to(torch.float64) / aggregate.weight_sum
    return Observation(
        model_parameters=global_params,
        observed_update=-mean_delta,
        kind=ObservedKind.AGGREGATE,
        public=replace(public, num_clients=len(aggregate.survivors)),
    )


def _check_positive(parameter: str, value: float) -> None:
    require_positive(value, f"`{parameter}`", parameter)


def _check_non_negative(parameter: str, value: float) -> None:
    require_non_negative(value, f"`{parameter}`", parameter)


def _check_fraction(parameter: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"`{parameter}` {value} outside [0, 1): e.g. `{parameter}` 0.9")


def _check_clients(clients: int) -> None:
    if clients < 2:
        raise ConfigError(
            f"secure aggregation of {clients} client(s) is one client's update: use `clients` 2 or more"
        )


__all__ = [
    "DEFENCES",
    "ClipDefence",
    "DPSGDDefence",
    "Defence",
    "DistributedDPDefence",
    "NoDefence",
    "NoiseDefence",
    "NoiseUpdate",
    "PruneDefence",
    "PruneUpdate",
    "RoundFacts",
    "SecAggDefence",
    "VictimRound",
    "aggregate_observation",
    "client_observation",
]
