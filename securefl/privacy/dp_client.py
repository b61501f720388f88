"""Sample-level differential privacy for every client: local training with Opacus' DP-SGD.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) clips each example's
gradient to ``max_grad_norm`` and adds Gaussian noise of std ``noise_multiplier * max_grad_norm``
to their sum; batches are Poisson samples (each example independently with rate ``q``), which is
what the accountants analyse.  All of it is Opacus': the per-sample gradients come from
``GradSampleModule`` (or its ExpandedWeights variant), clipping and noise from ``DPOptimizer``,
Poisson batches from ``UniformWithReplacementSampler``, the model check from ``ModuleValidator``,
ε from Opacus' accountants and the target-ε noise from ``get_noise_multiplier``.  This module only
assembles those parts the way ``PrivacyEngine.make_private`` does, once per run rather than once
per client:

- one model copy is validated and wrapped, one ``DPOptimizer`` built; each client copies the
  global weights into them (plain ``parameters_to_vector`` order, so the update that leaves the
  client has the plain model's layout, never ``_module.`` names) and gets a fresh momentum state,
  its own Poisson sampler and its own noise multiplier;
- per-sample gradients come from Opacus' ExpandedWeights mode (``grad_sample_mode="ew"``, the
  default: it computes per-sample weight gradients *instead of* the summed ones) or its hooks mode;
- batches are index tensors into the client's shard, no ``DataLoader``; an empty Poisson batch is
  what Opacus' ``DPDataLoader`` makes of it: a step whose per-sample gradients are empty, so
  ``DPOptimizer`` adds noise to a zero sum (the step is still counted by the accountant);
- the accountant state of a client is data: its events in a
  :class:`~securefl.privacy.ledger.PrivacyLedger` (noise, sample rate, steps per round), never a
  live model or engine; ε is computed from that
  history, memoised, so at most once per client per round (and once for all clients of one size).

Per-client sampling: client ``k`` with ``n_k`` examples uses the requested batch size as its
*expected* batch size, ``q_k = batch_size / n_k``, for ``local_epochs * ceil(n_k / batch_size)``
steps a round (the plain trainer's step count).  Opacus' ``make_private`` instead uses
``q = 1 / len(data_loader)``; the two agree whenever ``batch_size`` divides ``n_k``.

``target_epsilon`` chooses the noise *per client*: ``get_noise_multiplier`` for that client's
``(q_k, rounds * steps_k)``, so a client sampled in every planned round ends at the target
(within the search tolerance, from below) whatever its size.  Clients therefore may get different
noise multipliers; each client's guarantee is about its own data, so this is the tightest honest
choice (one noise for the worst client would over-noise all the others).  A client whose *next*
round would push its ε past the target is taken out of sampling (``can_train`` is False) and the
ledger records when.  With the noise calibrated this way that happens only past the planned
rounds; given a noise multiplier *and* a target, the target is only a budget and stops clients
mid-run.

The guarantee is per client, for one example of that client's data, covering the sequence of
model updates it sends.  Exactly: each client's example count ``n_k`` is public metadata, as
Opacus assumes (``make_private`` sets ``q = 1 / len(data_loader)`` from the data set's size).  It
fixes the mechanism: the sample rate ``q_k = batch_size / n_k``, the steps per round, and the
FedAvg weight ``n_k`` the client sends with its update, without noise (under secure aggregation
inside the masked vector, so the server learns only sums of weights).  The guarantee is
add/remove-one-example neighbouring with ``(q_k, steps, weight)`` held fixed at the declared
``n_k``: the two
neighbouring data sets are run by the same mechanism, and ``n_k`` itself is not protected (a
client of 100 examples and one of 101 are told apart by their weights).  The trainer is planned
from the declared counts (``client_sizes``) and refuses a shard of another size, so the weight the
server receives is always the declared count.  Whether a client takes part in a round is decided
by the server independently of its data, so rounds it skips cost nothing.  It does not cover
other values a client reports, such as its training loss.

Noise and Poisson batches come from the ``torch.Generator`` passed to :meth:`DPSGDTrainer.train`;
the simulation passes one seeded by the operating system and never stored
(:func:`securefl.fl.simulation.secret_generator`): a seed in ``config.json`` would let the server
subtract the noise, so runs under ``--dp`` are not bit-reproducible.  The Gaussian sampler is not
Opacus' ``secure_mode`` (which needs ``torchcsprng`` and protects against floating-point attacks
on the noise).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleModuleExpandedWeights
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from opacus.validators.errors import UnsupportedModuleError
from torch import nn

from securefl.config import DPConfig
from securefl.errors import ConfigError, PrivacyBudgetExceeded
from securefl.fl.client import loss_for_task
from securefl.fl.types import ClientShard, Update
from securefl.fl.vectors import load_vector, to_vector
from securefl.privacy.ledger import PrivacyLedger, SampledGaussianEvent, validate_accountant

log = logging.getLogger(__name__)

GRAD_SAMPLE_MODES = ("ew", "hooks")


@dataclass(frozen=True)
class ClientPlan:
    """How one client runs DP-SGD each round it is sampled."""

    num_samples: int
    sample_rate: float
    steps_per_round: int
    noise_multiplier: float

    def event(self, round_index: int) -> SampledGaussianEvent:
        return SampledGaussianEvent(
            round_index=round_index,
            steps=self.steps_per_round,
            sample_rate=self.sample_rate,
            noise_multiplier=self.noise_multiplier,
        )


def plan_clients(
    *,
    config: DPConfig,
    client_sizes: Mapping[int, int],
    rounds: int,
    local_epochs: int,
    batch_size: int,
) -> dict[int, ClientPlan]:
    """Sample rate, steps and noise multiplier of every client; bad input raises ConfigError."""
    if not client_sizes:
        raise ConfigError("DP-SGD needs at least one client")
    if rounds < 1:
        raise ConfigError(f"rounds {rounds} < 1: use --rounds 1 or more")
    if local_epochs < 1:
        raise ConfigError(f"local epochs {local_epochs} < 1")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} < 1")
    validate_accountant(config.accountant)
    for client_id, size in sorted(client_sizes.items()):
        if batch_size > size:
            raise ConfigError(
                f"--dp with batch size {batch_size} > the {size} examples of client {client_id}: "
                f"lower --batch-size to at most {min(client_sizes.values())} or use fewer --clients"
            )
        if not config.delta < 1 / size:
            raise ConfigError(
                f"delta {config.delta:g} >= 1/n = {1 / size:.3g} for client {client_id} with {size} "
                f"examples (δ must be < 1/n, or leaking one example outright fits the guarantee): "
                f"lower --delta below {1 / max(client_sizes.values()):.3g}"
            )
    noise_cache: dict[tuple[float, int], float] = {}
    plans = {}
    for client_id, size in client_sizes.items():
        sample_rate = batch_size / size
        steps = local_epochs * math.ceil(size / batch_size)
        key = (sample_rate, steps)
        if key not in noise_cache:
            noise_cache[key] = _noise_for(
                config, sample_rate=sample_rate, total_steps=rounds * steps, rounds=rounds
            )
        plans[int(client_id)] = ClientPlan(
            num_samples=int(size),
            sample_rate=sample_rate,
            steps_per_round=steps,
            noise_multiplier=noise_cache[key],
        )
    return plans


def _noise_for(config: DPConfig, *, sample_rate: float, total_steps: int, rounds: int) -> float:
    if config.noise_multiplier is not None:  # given noise; a target, if any, is only the budget
        return float(config.noise_multiplier)
    if config.target_epsilon is None:
        return float(config.effective_noise_multiplier or 0.0)
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=config.target_epsilon,
                target_delta=config.delta,
                sample_rate=sample_rate,
                steps=total_steps,
                accountant=config.accountant,
                epsilon_tolerance=max(1e-4, 1e-3 * config.target_epsilon),
            )
        )
    except (ValueError, OverflowError, ZeroDivisionError) as error:
        raise ConfigError(
            f"target epsilon {config.target_epsilon:g} is unreachable in {rounds} rounds "
            f"({total_steps} DP-SGD steps at sample rate {sample_rate:.3g}, δ={config.delta:g}): "
            f"raise --target-epsilon or lower --rounds / --local-epochs ({error})"
        ) from None


def validate_model(model: nn.Module) -> None:
    """Refuse models Opacus cannot train (BatchNorm mixes examples), saying how to fix them."""
    was_training = model.training
    model.train()
    try:
        ModuleValidator.validate(model, strict=True)
    except UnsupportedModuleError as error:
        reason = (
            "BatchNorm mixes the examples of a batch, so per-example gradients do not exist"
            if "BatchNorm" in str(error)
            else "Opacus cannot compute per-example gradients through it"
        )
        raise ConfigError(
            f"model {type(model).__name__} cannot be trained with DP-SGD ({reason}): {error}. "
            "Use --model resnet18 (GroupNorm) or another securefl model, or convert your own with "
            "opacus.validators.ModuleValidator.fix(model)"
        ) from None
    finally:
        model.train(was_training)


class DPSGDTrainer:
    """Local DP-SGD for every client, with per-client accounting that persists across rounds.

    Implements :class:`~securefl.fl.types.ClientTrainer` and
    :class:`~securefl.fl.types.PrivacyAccounting`.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        task: str,
        config: DPConfig,
        client_sizes: Mapping[int, int],
        rounds: int,
        local_epochs: int,
        batch_size: int,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        grad_sample_mode: str = "ew",
    ) -> None:
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"unknown grad sample mode {grad_sample_mode!r}: choose one of {', '.join(GRAD_SAMPLE_MODES)}"
            )
        if not lr > 0:
            raise ConfigError(f"learning rate {lr} <= 0: use a positive --lr")
        self.config = config
        self.batch_size = batch_size
        self.plans = plan_clients(
            config=config,
            client_sizes=client_sizes,
            rounds=rounds,
            local_epochs=local_epochs,
            batch_size=batch_size,
        )
        validate_model(model)
        # The trainer's own copy is wrapped (hooks / expanded weights); the caller's model stays plain.
        self._model = copy.deepcopy(model).train()
        self._parameters = [p for p in self._model.parameters() if p.requires_grad]
        if grad_sample_mode == "ew":
            self._module: nn.Module = GradSampleModuleExpandedWeights(self._model, loss_reduction="mean")
        else:
            self._module = GradSampleModule(self._model, loss_reduction="mean")
        self._optimizer = DPOptimizer(
            torch.optim.SGD(self._parameters, lr=lr, momentum=momentum, weight_decay=weight_decay),
            noise_multiplier=0.0,  # set per client before training
            max_grad_norm=config.max_grad_norm,
            expected_batch_size=batch_size,
            loss_reduction="mean",
        )
        self._loss_fn = loss_for_task(task)
        self._ledger = PrivacyLedger.open(
            accountant=config.accountant,
            delta=config.delta,
            client_sizes=client_sizes,
            budget=config.target_epsilon,
        )
        if config.accountant == "gdp":
            log.warning(
                "the gdp accountant is an approximation that can underestimate ε "
                "(Opacus); use rdp or prv for a guarantee"
            )
        noises = sorted({plan.noise_multiplier for plan in self.plans.values()})
        log.info(
            "DP-SGD: noise multiplier %s, max grad norm %g, delta %g, accountant %s",
            ", ".join(f"{z:.4g}" for z in noises),
            config.max_grad_norm,
            config.delta,
            config.accountant,
        )

    # ---- ClientTrainer -------------------------------------------------------------------------

    @property
    def privacy_ledger(self) -> PrivacyLedger:
        """The current (immutable) ledger."""
        return self._ledger

    def can_train(self, client_id: int) -> bool:
        """False once the client's next round would push its ε past ``target_epsilon``."""
        record = self._ledger[client_id]
        if record.exclusion is not None:
            return False
        if self._ledger.budget is None:
            return True
        # The look-ahead is memoised: when the round happens its ε is not computed again.
        next_round = record.events[-1].round_index + 1 if record.events else 0
        would_be = self._ledger.epsilon_with(client_id, self.plans[client_id].event(next_round))
        if would_be > self._ledger.budget:
            self._ledger = self._ledger.exclude(client_id, would_be_epsilon=would_be)
            log.info(
                "client %d leaves sampling: after %d rounds its next one would reach ε=%.4g > budget %g",
                client_id,
                len(record.events),
                would_be,
                self._ledger.budget,
            )
            return False
        return True

    def train(
        self,
        *,
        global_params: torch.Tensor,
        shard: ClientShard,
        round_index: int,
        generator: torch.Generator,
    ) -> Update:
        client_id = shard.client_id
        plan = self.plans.get(client_id)
        if plan is None:
            raise ValueError(f"client {client_id} was not among the client sizes DP-SGD was planned for")
        if len(shard) != plan.num_samples:
            raise ValueError(
                f"client {client_id} has {len(shard)} examples, DP-SGD was planned for {plan.num_samples}"
            )
        if not self.can_train(client_id):
            raise PrivacyBudgetExceeded(
                f"client {client_id} has no privacy budget left for another round: do not sample it"
            )
        event = plan.event(round_index)
        # Validate before training: an out-of-order round or a spent budget raises here.
        ledger = self._ledger.record(client_id, event)

        load_vector(self._parameters, global_params)
        optimizer = self._optimizer
        optimizer.state.clear()  # every client starts a fresh local optimisation (momentum)
        optimizer.noise_multiplier = plan.noise_multiplier
        optimizer.generator = generator
        sampler = UniformWithReplacementSampler(
            num_samples=plan.num_samples,
            sample_rate=plan.sample_rate,
            generator=generator,
            steps=plan.steps_per_round,
        )
        self._module.train()
        loss_sum, seen = 0.0, 0
        for indices in sampler:
            optimizer.zero_grad(set_to_none=True)
            if indices:
                batch = torch.as_tensor(indices, dtype=torch.long)
                loss = self._loss_fn(self._module(shard.x[batch]), shard.y[batch])
                loss.backward()
                loss_sum += float(loss.detach()) * len(indices)
                seen += len(indices)
            else:
                # Opacus' DPDataLoader turns an empty Poisson batch into a zero-length batch whose
                # per-sample gradients are empty: DPOptimizer then noises a zero gradient sum.
                for parameter in self._parameters:
                    parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        optimizer.generator = None

        delta = to_vector(self._parameters) - global_params
        self._ledger = ledger
        return Update(
            client_id=client_id,
            delta=delta,
            num_samples=plan.num_samples,
            train_loss=loss_sum / seen if seen else float("nan"),
        )

    # ---- PrivacyAccounting ---------------------------------------------------------------------

    def epsilon(self, client_id: int) -> float:
        """ε client ``client_id`` has spent so far (0 if it never trained)."""
        return self._ledger.epsilon(client_id)

    def round_metrics(self) -> dict[str, float]:
        """Max and median ε over every client (0 for those never trained so far), and δ."""
        summary = self._ledger.summary()
        return {
            "epsilon_max": summary["epsilon_max"],
            "epsilon_median": summary["epsilon_median"],
            "delta": self._ledger.delta,
        }

    def ledger(self) -> dict:
        return {
            "sample_level": {
                "mechanism": "DP-SGD (Opacus), Poisson-sampled batches, per-example clipping",
                "neighbouring": "add/remove one example of one client's data, with the mechanism's "
                "parameters (sample rate q_k = expected_batch_size / n_k, steps per round, FedAvg "
                "weight n_k) held fixed at the client's declared example count n_k",
                "public": [
                    "each client's example count n_k (num_samples below), as Opacus assumes: it "
                    "sets q_k, the steps and the FedAvg weight the client sends, without noise",
                    "which clients took part in each round",
                    "the training settings in config.json",
                ],
                "max_grad_norm": self.config.max_grad_norm,
                "target_epsilon": self.config.target_epsilon,
                "expected_batch_size": self.batch_size,
                **self._ledger.to_json(),
            }
        }


__all__ = ["ClientPlan", "DPSGDTrainer", "plan_clients", "validate_model"]
