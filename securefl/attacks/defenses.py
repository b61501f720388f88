"""The protections an attack is measured against, and what the server observes under each.

A round is played through securefl's own code paths, never a re-implementation:

- ``none``: the client trains with :class:`~securefl.fl.client.LocalSGDTrainer` and sends
  :func:`~securefl.fl.fedavg.weight_by_samples`; the server sees that one update in clear.
- ``clip``: the client scales its update to L2 norm ``max_grad_norm`` with DP-FedAvg's client
  transform :class:`~securefl.privacy.central.ClipUpdate`, without any noise.
- ``prune``: gradient pruning, the defence evaluated by Zhu et al. (2019): the client zeroes the
  ``prune_ratio`` fraction of smallest-magnitude entries of every layer's update (the per-layer
  magnitude pruning of Lin et al., "Deep Gradient Compression", ICLR 2018) — :class:`PruneUpdate`.
- ``noise``: Gaussian noise of standard deviation ``noise_std`` added to every entry of the update,
  the other defence of Zhu et al. (2019), with no accounting — :class:`NoiseUpdate`.
- ``dp``: the client trains with Opacus' DP-SGD through :class:`~securefl.privacy.dp_client.DPSGDTrainer`
  (per-example clipping to ``max_grad_norm``, noise ``noise_multiplier``); ε from its ledger.
- ``secagg``: the victim and ``clients − 1`` other clients send their updates through
  :class:`~securefl.fl.secure_channel.SecureAggregationChannel`, the real secure-aggregation
  protocol (Bonawitz et al., CCS 2017); the server gets only the protocol's sum.
- ``distributed-dp``: the same ``clients`` clip their updates to ``max_grad_norm`` and each adds
  its Skellam share before secure aggregation, through
  :class:`~securefl.privacy.distributed.DistributedDPChannel` (the path of ``train
  --distributed-dp``); the server gets a sum that is already noised at ``noise_multiplier``
  (shares sized for a server that colludes with no client, ``--secagg-colluders 0``).

The announced parameters of a defence (clipping norm, pruning ratio, number of clients) are
public: the attacker's :class:`~securefl.attacks.observation.PublicKnowledge` carries them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from securefl.attacks.observation import Observation, ObservedKind, PublicKnowledge
from securefl.config import DPConfig, SecAggConfig
from securefl.errors import ConfigError
from securefl.fl.client import LocalSGDTrainer
from securefl.fl.fedavg import weight_by_samples
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.fl.types import Aggregate, ClientShard, Contribution, Update
from securefl.fl.vectors import to_vector
from securefl.privacy.central import ClipUpdate
from securefl.privacy.distributed import DistributedDPChannel
from securefl.privacy.dp_client import DPSGDTrainer

DEFENCES = ("none", "clip", "prune", "noise", "dp", "secagg", "distributed-dp")

DEFAULT_MAX_GRAD_NORM = 1.0
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
class Defence:
    """One protection and its knobs; knobs of other defences must stay ``None``."""

    name: str = "none"
    max_grad_norm: float | None = None
    """``clip``: L2 bound of the whole update; ``dp``: per-example gradient bound."""
    prune_ratio: float | None = None
    noise_std: float | None = None
    noise_multiplier: float | None = None
    clients: int | None = None

    def __post_init__(self) -> None:
        if self.name not in DEFENCES:
            raise ConfigError(f"unknown defence {self.name!r}: choose one of {', '.join(DEFENCES)}")
        owners = {
            "max_grad_norm": ("clip", "dp", "distributed-dp"),
            "prune_ratio": ("prune",),
            "noise_std": ("noise",),
            "noise_multiplier": ("dp", "distributed-dp"),
            "clients": ("secagg", "distributed-dp"),
        }
        for knob, defences in owners.items():
            if getattr(self, knob) is not None and self.name not in defences:
                flag = "--" + knob.replace("_", "-")
                raise ConfigError(
                    f"{flag} belongs to --defense {' or '.join(defences)}, not --defense {self.name}: "
                    f"drop {flag} or choose --defense {defences[0]}"
                )
        if self.max_grad_norm is not None and not (
            self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)
        ):
            raise ConfigError(f"max grad norm {self.max_grad_norm} <= 0: use a positive --max-grad-norm")
        if self.prune_ratio is not None and not 0 <= self.prune_ratio < 1:
            raise ConfigError(f"prune ratio {self.prune_ratio} outside [0, 1): e.g. --prune-ratio 0.9")
        if self.noise_std is not None and not (self.noise_std >= 0 and math.isfinite(self.noise_std)):
            raise ConfigError(f"noise std {self.noise_std} < 0: use --noise-std 0 or more")
        if self.noise_multiplier is not None and not (
            self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)
        ):
            raise ConfigError(
                f"noise multiplier {self.noise_multiplier} < 0: use --noise-multiplier 0 or more"
            )
        if self.clients is not None and self.clients < 2:
            raise ConfigError(
                f"secure aggregation of {self.clients} client(s) is one client's update: "
                "use --clients 2 or more"
            )

    @property
    def label(self) -> str:
        """A short human label, e.g. ``DP-SGD z=1`` or ``SecAgg N=16``."""
        if self.name == "none":
            return "no defence"
        if self.name == "clip":
            return f"clip C={self.resolved_max_grad_norm:g}"
        if self.name == "prune":
            return f"prune {self.resolved_prune_ratio:.0%}"
        if self.name == "noise":
            return f"noise σ={self.resolved_noise_std:g}"
        if self.name == "dp":
            return f"DP-SGD z={self.resolved_noise_multiplier:g}"
        if self.name == "distributed-dp":
            return f"distributed DP z={self.resolved_noise_multiplier:g} N={self.resolved_clients}"
        return f"SecAgg N={self.resolved_clients}"

    @property
    def resolved_max_grad_norm(self) -> float:
        return self.max_grad_norm if self.max_grad_norm is not None else DEFAULT_MAX_GRAD_NORM

    @property
    def resolved_prune_ratio(self) -> float:
        return self.prune_ratio if self.prune_ratio is not None else 0.9

    @property
    def resolved_noise_std(self) -> float:
        return self.noise_std if self.noise_std is not None else 0.01

    @property
    def resolved_noise_multiplier(self) -> float:
        return self.noise_multiplier if self.noise_multiplier is not None else 1.0

    @property
    def resolved_clients(self) -> int:
        return self.clients if self.clients is not None else 16

    @property
    def others_needed(self) -> int:
        """Other clients whose data the round needs besides the victim."""
        return self.resolved_clients - 1 if self.name in ("secagg", "distributed-dp") else 0


class PruneUpdate:
    """Zero the ``ratio`` smallest-magnitude entries of every layer's update, then weight by samples."""

    def __init__(self, ratio: float, *, layer_sizes: Sequence[int]) -> None:
        if not 0 <= ratio < 1:
            raise ConfigError(f"prune ratio {ratio} outside [0, 1)")
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
        if not std >= 0:
            raise ConfigError(f"noise std {std} < 0")
        self.std = float(std)
        self.generator = generator

    def __call__(self, update: Update) -> Contribution:
        noise = torch.randn(update.delta.shape, generator=self.generator, dtype=update.delta.dtype)
        noisy = Update(
            update.client_id, update.delta + self.std * noise, update.num_samples, update.train_loss
        )
        return weight_by_samples(noisy)


@dataclass(frozen=True)
class RoundSetup:
    """The public protocol of the attacked round."""

    model_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    batch_size: int
    local_steps: int
    learning_rate: float


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


def observe_round(
    *,
    setup: RoundSetup,
    defence: Defence,
    server_model: nn.Module,
    victim: ClientShard,
    others: Sequence[ClientShard] = (),
    seed: int = 0,
) -> tuple[Observation, RoundFacts]:
    """Play one round with ``defence`` and return what the server observes, plus the round's facts.

    ``server_model`` is the global model the server sent (its dtype is the round's arithmetic);
    the victim's and the other clients' shards hold ``setup.batch_size`` examples each.
    """
    global_params = to_vector(server_model.parameters())
    dtype = global_params.dtype
    clients = [victim, *others]
    if len(others) != defence.others_needed:
        raise ValueError(
            f"defence {defence.label} needs {defence.others_needed} other clients, got {len(others)}"
        )
    for shard in clients:
        if len(shard) != setup.batch_size:
            raise ValueError(
                f"client {shard.client_id} holds {len(shard)} examples, the round {setup.batch_size}"
            )
    clients = [ClientShard(s.client_id, s.x.to(dtype), s.y) for s in clients]
    generator = torch.Generator().manual_seed(seed)
    facts = RoundFacts()
    public = PublicKnowledge(
        input_shape=setup.input_shape,
        num_classes=setup.num_classes,
        batch_size=setup.batch_size,
        local_steps=setup.local_steps,
        learning_rate=setup.learning_rate,
    )

    if defence.name == "dp":
        config = DPConfig(
            noise_multiplier=defence.resolved_noise_multiplier,
            max_grad_norm=defence.resolved_max_grad_norm,
            delta=DEFAULT_DP_DELTA,
        )
        trainer = DPSGDTrainer(
            model=copy.deepcopy(server_model),
            task="classification",
            config=config,
            client_sizes={victim.client_id: setup.batch_size},
            rounds=1,
            local_epochs=setup.local_steps,
            batch_size=setup.batch_size,
            lr=setup.learning_rate,
        )
        update = trainer.train(
            global_params=global_params, shard=clients[0], round_index=0, generator=generator
        )
        facts = RoundFacts(epsilon=trainer.epsilon(victim.client_id), delta=DEFAULT_DP_DELTA)
        if setup.batch_size == 1 and setup.local_steps == 1:
            # One example, one step: per-example clipping is clipping the update to lr * C.
            public = _with(public, clip_norm=setup.learning_rate * defence.resolved_max_grad_norm)
        return _client_observation(setup, global_params, weight_by_samples(update), public), facts

    trainer = LocalSGDTrainer(
        model=copy.deepcopy(server_model),
        task="classification",
        local_epochs=setup.local_steps,
        batch_size=None,
        lr=setup.learning_rate,
    )
    updates = [
        trainer.train(global_params=global_params, shard=shard, round_index=0, generator=generator)
        for shard in clients
    ]
    if defence.name == "none":
        return _client_observation(setup, global_params, weight_by_samples(updates[0]), public), facts
    if defence.name == "clip":
        bound = defence.resolved_max_grad_norm
        contribution = ClipUpdate(bound)(updates[0])
        facts = RoundFacts(clipped=bool(float(updates[0].delta.double().norm()) > bound))
        return _client_observation(setup, global_params, contribution, _with(public, clip_norm=bound)), facts
    if defence.name == "prune":
        ratio = defence.resolved_prune_ratio
        transform = PruneUpdate(ratio, layer_sizes=[p.numel() for p in server_model.parameters()])
        return _client_observation(
            setup, global_params, transform(updates[0]), _with(public, prune_ratio=ratio)
        ), facts
    if defence.name == "noise":
        contribution = NoiseUpdate(defence.resolved_noise_std, generator=generator)(updates[0])
        return _client_observation(setup, global_params, contribution, public), facts

    if defence.name == "distributed-dp":
        bound = defence.resolved_max_grad_norm
        distributed = DistributedDPChannel(
            secure=SecureAggregationChannel(
                config=SecAggConfig(bits=DISTRIBUTED_DP_BITS, max_colluders=0),  # the server alone
                num_params=global_params.numel(),
                weight_bound=1,
                clients_per_round=len(clients),
                seed=seed,
            ),
            num_params=global_params.numel(),
            clip_norm=bound,
            noise_multiplier=defence.resolved_noise_multiplier,
            delta=DEFAULT_DP_DELTA,
            max_clients=len(clients),
            seed=seed,
        )
        clip = ClipUpdate(bound)
        aggregate = distributed.aggregate([clip(u) for u in updates], round_index=0)
        release = distributed.take_release()
        facts = RoundFacts(epsilon=distributed.epsilon_of([release.honest_variance]), delta=DEFAULT_DP_DELTA)
        return aggregate_observation(setup, global_params, aggregate), facts

    # secagg: the server side only ever holds the protocol's output.
    channel = SecureAggregationChannel(
        config=SecAggConfig(bits=SECAGG_BITS, clip=SECAGG_COORDINATE_BOUND),
        num_params=global_params.numel(),
        weight_bound=setup.batch_size,
        clients_per_round=len(clients),
        seed=seed,
    )
    aggregate = channel.aggregate([weight_by_samples(u) for u in updates], round_index=0)
    facts = RoundFacts(secagg_clipped_fraction=aggregate.details.get("secagg_clipped_fraction"))
    return aggregate_observation(setup, global_params, aggregate), facts


def aggregate_observation(
    setup: RoundSetup, global_params: torch.Tensor, aggregate: Aggregate
) -> Observation:
    """The server's view of a securely aggregated round: the weighted mean update, nothing else."""
    clients = len(aggregate.survivors)
    public = PublicKnowledge(
        input_shape=setup.input_shape,
        num_classes=setup.num_classes,
        batch_size=setup.batch_size,
        local_steps=setup.local_steps,
        learning_rate=setup.learning_rate,
        num_clients=clients,
    )
    mean_delta = aggregate.weighted_delta_sum.to(torch.float64) / aggregate.weight_sum
    return Observation(
        model_name=setup.model_name,
        model_parameters=global_params,
        observed_update=-mean_delta,
        kind=ObservedKind.AGGREGATE,
        public=public,
    )


def _client_observation(
    setup: RoundSetup, global_params: torch.Tensor, contribution: Contribution, public: PublicKnowledge
) -> Observation:
    delta = contribution.weighted_delta.to(torch.float64) / contribution.weight
    return Observation(
        model_name=setup.model_name,
        model_parameters=global_params,
        observed_update=-delta,
        kind=ObservedKind.CLIENT_UPDATE,
        public=public,
    )


def _with(public: PublicKnowledge, **changes: object) -> PublicKnowledge:
    values = {**public.__dict__, **changes}
    return PublicKnowledge(**values)


__all__ = [
    "DEFENCES",
    "Defence",
    "NoiseUpdate",
    "PruneUpdate",
    "RoundFacts",
    "RoundSetup",
    "aggregate_observation",
    "observe_round",
]
