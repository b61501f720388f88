"""One audited training run: canaries in, one federated run, ε lower bound out.

One-run auditing (Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023) with white-box Dirac canaries (Nasr et al., USENIX Security 2023):

- ``dp`` (sample-level DP-SGD, ``--dp``): ``m`` canary examples in client 0's shard, each included
  with probability 1/2; the server reads client 0's update every round it trains;
- ``central-dp`` (user-level DP-FedAvg, ``--central-dp``): ``m`` canary clients next to the real
  ones, each included with probability 1/2; the server reads the released global-model change;
- ``none`` (no DP): the ``dp`` canaries in plain FedAvg, the baseline an audit should flag;
- ``black_box`` (sample level): m of client 0's examples, each mislabelled and kept with
  probability 1/2, scored by the final model's loss only (the weaker black-box view).

The run goes through securefl's own composition root (:func:`~securefl.federation.build_federation`)
and simulation loop; only the model (wrapped with canary coordinates), the data (rows with canary
slots), the trainer or the client list, and an observer are swapped in.  The inclusion bits come
from the operating system and exist only inside this function and its result.

What the result shows: an ε lower bound at confidence ``1 - β``.  If it exceeds the accountant's
ε, the implementation (or its accounting) is broken with that confidence.  A bound below the
accountant's ε proves nothing about the guarantee: one-run audits are loose by construction (a
Gaussian mechanism at ε = 8 audits to about 3 with a few thousand canaries) and the server sees
each round's sum, not each DP-SGD step.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from securefl.audit.bound import max_epsilon_lower_bound
from securefl.audit.breaks import Break, unclipped_update
from securefl.audit.canaries import CanaryClientTrainer, CanaryLayout, draw_inclusion
from securefl.audit.guesses import GuessOutcome, best_bound
from securefl.audit.observe import CanaryScores, ObservedChannel, ObservedServerUpdate, loss_scores
from securefl.config import RunConfig
from securefl.data import Dataset, load_dataset
from securefl.errors import ConfigError, TrainingDivergedError
from securefl.federation import Federation, RoundCallback, build_federation, run_simulation
from securefl.fl.fedavg import PlainSum
from securefl.fl.history import History
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard, ClientTrainer
from securefl.models import build_model

CANARY_CLIENT = 0
"""Sample-level audits put their canaries in this client's shard."""
MAX_CANARIES = 20_000
"""Beyond this the per-example gradients of a full batch outgrow a small machine, and the δ term of
the bound grows with m·δ: simulated Gaussian audits gain little past a few thousand canaries."""


@dataclass(frozen=True)
class AuditConfig:
    """A training run (its ``dp`` / ``central_dp`` section picks the mode) and the audit's knobs."""

    run: RunConfig
    canaries: int = 1000
    confidence: float = 0.95
    weakness: Break | None = None
    """A deliberate break of the DP mechanism (research only), or None for the real one."""
    canary_scale: float = 10.0
    """Crafted canary gradients (updates) have norm ``canary_scale × clip`` before clipping."""
    full_batch: bool = False
    """Sample-level: one Poisson batch of rate 1 per local epoch (the tightest white-box setting)."""
    black_box: bool = False
    """Sample-level: mislabelled examples scored from the final model's loss, not gradient canaries."""

    def __post_init__(self) -> None:
        run = self.run
        if run.dp is not None and run.central_dp is not None:
            raise ConfigError("audit one DP mode at a time: set `dp` or `central_dp`, not both")
        if run.secagg is not None:
            raise ConfigError(
                "the white-box audit reads updates the server sees in clear: run it without `secagg`"
            )
        if run.algorithm != "fedavg":
            raise ConfigError(f"audits train with `algorithm` fedavg, not {run.algorithm}")
        if not 2 <= self.canaries <= MAX_CANARIES:
            raise ConfigError(f"canaries {self.canaries} outside 2..{MAX_CANARIES}: change `canaries`")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence {self.confidence} outside (0, 1): use e.g. `confidence` 0.95")
        if not (self.canary_scale >= 1 and math.isfinite(self.canary_scale)):
            raise ConfigError(
                f"canary scale {self.canary_scale} < 1: canaries must reach the clip norm, use "
                "`canary_scale` 1 or more"
            )
        if self.weakness is not None and self.mode == "none":
            raise ConfigError("`weakness` weakens a DP mechanism: set `dp` or `central_dp` with it")
        if (
            self.weakness is not None
            and self.weakness.variant == "sample-rate"
            and run.central_dp is not None
            and run.central_dp.client_sampling == "fixed"
        ):
            raise ConfigError(
                "`weakness` sample-rate misreports the Poisson rate; the fixed-sampling bound does not use "
                "it: set `central_dp.client_sampling` to poisson"
            )
        if self.black_box and self.mode == "central-dp":
            raise ConfigError("`black_box` canaries are examples: use `dp` (or no DP), not `central_dp`")
        if self.full_batch and (self.mode == "central-dp" or run.clients != 1):
            raise ConfigError(
                "`full_batch` is for sample-level audits of one client: use `dp` (or no DP) with `clients` 1"
            )

    @property
    def mode(self) -> str:
        if self.run.dp is not None:
            return "dp"
        return "central-dp" if self.run.central_dp is not None else "none"

    @property
    def beta(self) -> float:
        return 1 - self.confidence

    @property
    def clip_norm(self) -> float:
        """The clip the canaries are crafted against (1 without DP)."""
        if self.run.dp is not None:
            return self.run.dp.max_grad_norm
        return self.run.central_dp.clip_norm if self.run.central_dp is not None else 1.0

    @property
    def delta(self) -> float:
        """The δ of the claim under test (0 without DP: the bound is then pure ε)."""
        if self.run.dp is not None:
            return self.run.dp.delta
        return self.run.central_dp.delta if self.run.central_dp is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "canaries": self.canaries,
            "confidence": self.confidence,
            "break": None if self.weakness is None else dataclasses.asdict(self.weakness),
            "canary_scale": self.canary_scale,
            "full_batch": self.full_batch,
            "black_box": self.black_box,
            "run": self.run.to_dict(),
        }


@dataclass(frozen=True)
class AuditResult:
    """What one audit measured."""

    config: AuditConfig
    accountant_epsilon: float
    """The ε the run claims (what its accountant says, told the original parameters under a break)."""
    outcome: GuessOutcome
    ceiling: float
    """The best bound ``m`` canaries could give (all guessed right), at the same δ and β."""
    scores: np.ndarray
    included: np.ndarray
    rounds_observed: int
    seconds: float
    history: History

    @property
    def epsilon_lower_bound(self) -> float:
        return self.outcome.epsilon

    @property
    def violation(self) -> bool:
        """True when the bound exceeds the claimed ε: the guarantee is false (at 1 - β)."""
        return self.outcome.epsilon > self.accountant_epsilon


def run_audit(
    config: AuditConfig, *, on_round: RoundCallback | None = None, dataset: Dataset | None = None
) -> AuditResult:
    """Run one audited training and convert the server's observations into an ε lower bound."""
    run = config.run
    started = time.perf_counter()
    dataset = dataset or load_dataset(
        run.dataset, data_dir=run.data_dir, download=run.download, seed=run.seed
    )
    layout = CanaryLayout(dataset.info, canaries=config.canaries, norm=config.canary_scale * config.clip_norm)
    included = draw_inclusion(config.canaries)
    # The composition root checks DP-SGD batches against the real shards; the audit's trainer is
    # rebuilt below for the canary client's larger shard, so only the other parts are used.
    fed = build_federation(
        dataclasses.replace(run, batch_size=1) if config.mode == "dp" else run, dataset=dataset
    )
    if config.black_box and fed.dataset.task != "classification":
        raise ConfigError(f"`black_box` canaries are mislabelled examples: {run.dataset} has no labels")
    if config.black_box and config.canaries >= len(fed.shards[CANARY_CLIENT]):
        raise ConfigError(
            f"`black_box` takes its {config.canaries} canaries from client {CANARY_CLIENT}'s "
            f"{len(fed.shards[CANARY_CLIENT])} examples: use fewer `canaries` or `clients`"
        )
    audit = _AUDITS[config.mode](config, fed, layout, included)
    history = run_simulation(run, federation=audit.federation, on_round=on_round)
    if history.diverged is not None:  # no verdict on a run that did not train
        raise TrainingDivergedError(history.diverged)
    if audit.probe is None:
        scores = audit.observed.total.copy()
    else:
        assert history.model is not None
        scores = loss_scores(history.model, *audit.probe)
    outcome = best_bound(scores, included, delta=config.delta, beta=config.beta)
    return AuditResult(
        config=config,
        accountant_epsilon=audit.claim(audit.observed.rounds),
        outcome=outcome,
        ceiling=max_epsilon_lower_bound(
            canaries=config.canaries, delta=config.delta, beta=config.beta / len(outcome.candidates)
        ),
        scores=scores,
        included=included,
        rounds_observed=audit.observed.rounds,
        seconds=time.perf_counter() - started,
        history=history,
    )


Claim = Callable[[int], float]
"""The claimed ε after the canary client (or the server) took part in that many rounds."""


@dataclass(frozen=True)
class _Audit:
    """An audited federation: what the server observes, what the run claims, and (black box) the
    probe rows and wrong labels on which the final model is scored."""

    federation: Federation
    observed: CanaryScores
    claim: Claim
    probe: tuple[torch.Tensor, torch.Tensor] | None = None


def _with_canary_model(fed: Federation, layout: CanaryLayout, shards: list[ClientShard]) -> Federation:
    """The federation on canary rows, with the canary-wrapped model for evaluation and a plain sum
    of that model's size (audits run without secure aggregation)."""
    assert isinstance(fed.channel, PlainSum)
    model = _new_model(fed, layout)
    size = sum(p.numel() for p in model.parameters())
    return dataclasses.replace(
        fed,
        dataset=layout.augment(fed.dataset),
        shards=shards,
        eval_model=model,
        channel=PlainSum(vector_length=size),
    )


def _new_model(fed: Federation, layout: CanaryLayout) -> torch.nn.Module:
    run = fed.config
    base = build_model(
        run.model, input_shape=fed.dataset.input_shape, num_outputs=fed.dataset.num_outputs, seed=run.seed
    )
    return layout.wrap(base)


def _shared(trainer: ClientTrainer, shards: list[ClientShard]) -> dict[int, ClientTrainer]:
    """One trainer for every client of the audited federation (it holds the canary client's plan)."""
    return dict.fromkeys((s.client_id for s in shards), trainer)


def _real_shards(fed: Federation, layout: CanaryLayout) -> list[ClientShard]:
    return [ClientShard(client_id=s.client_id, x=layout.real_rows(s.x), y=s.y) for s in fed.shards]


def _with_canary_examples(
    config: AuditConfig, fed: Federation, layout: CanaryLayout, included: np.ndarray
) -> tuple[list[ClientShard], tuple[torch.Tensor, torch.Tensor] | None]:
    """Client 0's shard with the canary rows appended (black box: its last m examples mislabelled)."""
    shards = _real_shards(fed, layout)
    first = shards[CANARY_CLIENT]
    probe = None
    if config.black_box:
        m = config.canaries
        own = fed.shards[CANARY_CLIENT]
        generator = torch.Generator().manual_seed(config.run.seed)  # which labels: public, not secret
        rows, targets, probe_rows = layout.mislabelled_rows(
            own.x[-m:], own.y[-m:], included, generator=generator
        )
        first = ClientShard(client_id=CANARY_CLIENT, x=first.x[:-m], y=first.y[:-m])
        probe = (probe_rows, targets)
    else:
        rows, targets = layout.canary_rows(included)
    shards[CANARY_CLIENT] = ClientShard(
        client_id=CANARY_CLIENT, x=torch.cat([first.x, rows]), y=torch.cat([first.y, targets])
    )
    return shards, probe


def _plain_trainer(
    run: RunConfig, fed: Federation, layout: CanaryLayout, *, full_batch: bool = False
) -> LocalSGDTrainer:
    return LocalSGDTrainer(
        model=_new_model(fed, layout),
        task=fed.dataset.task,
        local_epochs=run.training.local_epochs,
        batch_size=None if full_batch else run.training.batch_size,
        lr=run.training.lr,
        momentum=run.training.momentum,
        weight_decay=run.weight_decay,
    )


def _audit_none(config: AuditConfig, fed: Federation, layout: CanaryLayout, included: np.ndarray) -> _Audit:
    shards, probe = _with_canary_examples(config, fed, layout, included)
    trainer = _plain_trainer(config.run, fed, layout, full_batch=config.full_batch)
    canary_fed = _with_canary_model(fed, layout, shards)
    channel = ObservedChannel(canary_fed.channel, client_id=CANARY_CLIENT, canaries=config.canaries)
    audited = dataclasses.replace(canary_fed, trainers=_shared(trainer, shards), channel=channel)
    return _Audit(audited, channel.scores, lambda rounds: math.inf, probe)


def _audit_dp(config: AuditConfig, fed: Federation, layout: CanaryLayout, included: np.ndarray) -> _Audit:
    from securefl.privacy import DPSGDTrainer, epsilon_spent

    run = config.run
    assert run.dp is not None
    shards, probe = _with_canary_examples(config, fed, layout, included)
    sizes = {s.client_id: len(s) for s in shards}
    batch_size = sizes[CANARY_CLIENT] if config.full_batch else run.training.batch_size

    def trainer_for(dp: Any) -> DPSGDTrainer:
        return DPSGDTrainer(
            model=_new_model(fed, layout),
            task=fed.dataset.task,
            config=dp,
            client_sizes=sizes,
            rounds=run.rounds,
            local_epochs=run.training.local_epochs,
            batch_size=batch_size,
            lr=run.training.lr,
            momentum=run.training.momentum,
            weight_decay=run.weight_decay,
        )

    dp = run.dp
    reference = trainer_for(dp)
    weakness = config.weakness
    trainer = reference
    if weakness is None:

        def claim(rounds: int) -> float:  # the run's own accountant
            return reference.epsilon(CANARY_CLIENT)

    else:
        plan = reference.plans[CANARY_CLIENT]  # what the correct run does, and what the accountant hears
        trainer = trainer_for(weakness.dp_config(dp, noise_multiplier=plan.noise_multiplier))
        claimed_rate = weakness.claimed_rate(plan.sample_rate)

        def claim(rounds: int) -> float:
            if rounds == 0:
                return 0.0
            history = ((plan.noise_multiplier, claimed_rate, plan.steps_per_round * rounds),)
            return epsilon_spent(history, accountant=dp.accountant, delta=dp.delta)

    canary_fed = _with_canary_model(fed, layout, shards)
    channel = ObservedChannel(canary_fed.channel, client_id=CANARY_CLIENT, canaries=config.canaries)
    audited = dataclasses.replace(canary_fed, trainers=_shared(trainer, shards), channel=channel)
    return _Audit(audited, channel.scores, claim, probe)


def _audit_central_dp(
    config: AuditConfig, fed: Federation, layout: CanaryLayout, included: np.ndarray
) -> _Audit:
    from securefl.privacy import DPFedAvgServerUpdate

    run = config.run
    central = run.central_dp
    assert central is not None
    first = len(fed.shards)
    clients = first + config.canaries
    per_round = max(1, round(run.sampled_clients / run.clients * clients))
    blank, target = layout.canary_rows(np.zeros(1, dtype=bool))
    shards = _real_shards(fed, layout) + [
        ClientShard(client_id=first + j, x=blank, y=target) for j in range(config.canaries)
    ]
    audited = _with_canary_model(fed, layout, shards)
    num_params = sum(p.numel() for p in audited.eval_model.parameters())
    trainer = CanaryClientTrainer(
        _plain_trainer(config.run, fed, layout),
        first=first,
        included=included,
        num_params=num_params,
        norm=config.canary_scale * central.clip_norm,
    )

    def server_update(noise_multiplier: float, expected_clients: float) -> DPFedAvgServerUpdate:
        return DPFedAvgServerUpdate(
            noise_multiplier=noise_multiplier,
            clip_norm=central.clip_norm,
            delta=central.delta,
            clients=clients,
            clients_per_round=expected_clients,
            client_sampling=central.client_sampling,
            accountant=central.accountant,
        )

    weakness = config.weakness
    actual = server_update(
        central.noise_multiplier if weakness is None else weakness.central_noise(central), per_round
    )
    claimed = actual
    transform = fed.transform
    if weakness is not None:
        claimed = server_update(
            central.noise_multiplier, weakness.claimed_rate(per_round / clients) * clients
        )
        if weakness.variant == "clip":
            transform = unclipped_update
    observed = ObservedServerUpdate(actual, canaries=config.canaries)
    sampler = copy.copy(fed.sampler)  # the run's own sampler (scheme, secrecy) over N + m clients
    sampler.num_clients, sampler.per_round = clients, per_round
    audited = dataclasses.replace(
        audited,
        trainers=_shared(trainer, shards),
        transform=transform,
        server_update=observed,
        sampler=sampler,
    )
    return _Audit(audited, observed.scores, claimed.epsilon_after)


_AUDITS = {"none": _audit_none, "dp": _audit_dp, "central-dp": _audit_central_dp}


__all__ = ["AuditConfig", "AuditResult", "run_audit"]
