"""Sample-level differential privacy for every client: local training with Opacus' DP-SGD.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) clips each example's
gradient to ``max_grad_norm`` and adds Gaussian noise of std ``noise_multiplier * max_grad_norm``
to their sum; batches are Poisson samples (each example independently with rate ``q``), which is
what the accountants analyse.  All of it is Opacus': the per-sample gradients come from
``GradSampleModule`` (or its ExpandedWeights variant), clipping and noise from ``DPOptimizer``,
Poisson batches from ``UniformWithReplacementSampler``, the model check from ``ModuleValidator``,
ε from Opacus' accountants and the target-ε noise from ``get_noise_multiplier``.  This module only
assembles those parts the way ``PrivacyEngine.make_private`` does, split in two:

- :class:`DPSGDEngine` is the shared compute, built once per simulation: one model copy validated
  and wrapped, one ``DPOptimizer``, the loss.  It holds no privacy state and no randomness.  Each
  client copies the global weights into it (plain ``parameters_to_vector`` order, so the update
  that leaves the client has the plain model's layout, never ``_module.`` names) and gets a fresh
  momentum state, its own Poisson sampler and its own noise multiplier;
- :class:`DPSGDTrainer` is a client's side of it: its plan (sample rate, steps, noise), its
  :class:`~securefl.privacy.ledger.PrivacyLedger` and its budget, and its own secret generator.
  In a deployment each client program holds one for itself alone (``client_sizes={k: n_k}``),
  since no server could enforce a client's budget; a simulation builds one per client, all
  sharing one engine, and :func:`dp_round_metrics` / :func:`dp_ledger` report them together.
  One trainer over many clients (one ledger for all) remains for single-process uses;
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

Noise and Poisson batches come from a ``torch.Generator`` that each :class:`DPSGDTrainer` owns, as
Opacus' ``PrivacyEngine`` owns its RNG: seeded from the operating system (:mod:`secrets`) when the
trainer is built, the seed never stored.  A seed in ``config.json`` would let the server subtract
the noise, so runs under ``--dp`` are not bit-reproducible.  The generator the caller passes to
:meth:`DPSGDTrainer.train` is the simulation's and is never used for DP-SGD; the constructor's
``seed`` is a hook for tests and for measurement experiments whose adversary never reads it (a
seed known to the server voids the guarantee).  The Gaussian sampler is not Opacus'
``secure_mode`` (which needs ``torchcsprng`` and protects against floating-point attacks on the
noise).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

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
from securefl.errors import ConfigError, LedgerError, PrivacyBudgetExceeded
from securefl.fl.record import json_float
from securefl.fl.training import loss_for_task
from securefl.fl.types import ClientShard, Update
from securefl.fl.vectors import load_vector, to_vector
from securefl.privacy.central import dp_generator
from securefl.privacy.ledger import ClientRecord, PrivacyLedger, SampledGaussianEvent
from securefl.validation import require_at_least, require_positive

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
    require_at_least(rounds, 1, "rounds", "rounds")
    require_at_least(local_epochs, 1, "local epochs", "local_epochs")
    require_at_least(batch_size, 1, "batch size", "batch_size")
    for client_id, size in sorted(client_sizes.items()):
        if batch_size > size:
            raise ConfigError(
                f"DP-SGD with batch size {batch_size} > the {size} examples of client {client_id}: "
                f"lower `batch_size` to at most {min(client_sizes.values())} or use fewer `clients`"
            )
        if not config.delta < 1 / size:
            raise ConfigError(
                f"delta {config.delta:g} >= 1/n = {1 / size:.3g} for client {client_id} with {size} "
                f"examples (δ must be < 1/n, or leaking one example outright fits the guarantee): "
                f"lower `dp.delta` below {1 / max(client_sizes.values()):.3g}"
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
            f"raise `dp.target_epsilon` or lower `rounds` / `local_epochs` ({error})"
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
            'Use `model` "resnet18" (GroupNorm) or another securefl model, or convert your own with '
            "opacus.validators.ModuleValidator.fix(model)"
        ) from None
    finally:
        model.train(was_training)


class DPSGDEngine:
    """DP-SGD's compute, shared by the trainers of every simulated client; no privacy state.

    One deep copy of ``model``, validated and wrapped for per-sample gradients (Opacus'
    ``GradSampleModule``, or its ExpandedWeights variant), one ``DPOptimizer`` clipping to
    ``max_grad_norm`` at expected batch size ``batch_size``, and the task's loss: what
    ``PrivacyEngine.make_private`` builds, once per simulation instead of once per client.  It
    keeps no ledger and no generator: :meth:`train` runs the plan and draws from the generator its
    caller (a :class:`DPSGDTrainer`) owns, and lets go of that generator when it returns.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        task: str,
        lr: float,
        max_grad_norm: float,
        batch_size: int,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        grad_sample_mode: str = "ew",
        device: torch.device | str = "cpu",
    ) -> None:
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"unknown grad sample mode {grad_sample_mode!r}: choose one of {', '.join(GRAD_SAMPLE_MODES)}"
            )
        require_positive(lr, "learning rate", "lr")
        require_positive(max_grad_norm, "max grad norm", "dp.max_grad_norm")
        require_at_least(batch_size, 1, "batch size", "batch_size")
        validate_model(model)
        self.max_grad_norm = float(max_grad_norm)
        self.batch_size = int(batch_size)
        self._announced: set[tuple[DPConfig, tuple[float, ...]]] = set()
        # The engine's own copy is wrapped (hooks / expanded weights); the caller's model stays plain.
        self.device = torch.device(device)
        self._model = copy.deepcopy(model).to(self.device).train()
        self._parameters = [p for p in self._model.parameters() if p.requires_grad]
        self._module: nn.Module
        if grad_sample_mode == "ew":
            self._module = GradSampleModuleExpandedWeights(self._model, loss_reduction="mean")
        else:
            self._module = GradSampleModule(self._model, loss_reduction="mean")
        self._optimizer = DPOptimizer(
            torch.optim.SGD(self._parameters, lr=lr, momentum=momentum, weight_decay=weight_decay),
            noise_multiplier=0.0,  # set per client before training
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.batch_size,
            loss_reduction="mean",
        )
        self._loss_fn = loss_for_task(task)

    def announce(self, config: DPConfig, noise_multipliers: Sequence[float]) -> None:
        """Log the DP-SGD settings (and the gdp caveat) once per engine, not once per client."""
        key = (config, tuple(noise_multipliers))
        if key in self._announced:
            return
        self._announced.add(key)
        if config.accountant == "gdp":
            log.warning(
                "the gdp accountant is an approximation that can underestimate ε "
                "(Opacus); use rdp or prv for a guarantee"
            )
        log.info(
            "DP-SGD: noise multiplier %s, max grad norm %g, delta %g, accountant %s",
            ", ".join(f"{z:.4g}" for z in noise_multipliers),
            config.max_grad_norm,
            config.delta,
            config.accountant,
        )

    def train(
        self,
        *,
        global_params: torch.Tensor,
        shard: ClientShard,
        plan: ClientPlan,
        generator: torch.Generator,
        noise_generator: torch.Generator | None = None,
    ) -> Update:
        """One round of ``plan`` on ``shard`` from ``global_params``: Poisson batches from
        ``generator`` (a CPU one), noise from ``noise_generator`` (one on the engine's device;
        ``None``: ``generator``, on the CPU), a fresh momentum state, nothing kept for the next
        client.  The update comes back as a CPU tensor."""
        device = self.device
        start = global_params.to(device)
        load_vector(self._parameters, start)
        optimizer = self._optimizer
        optimizer.state.clear()  # every client starts a fresh local optimisation (momentum)
        optimizer.noise_multiplier = plan.noise_multiplier
        optimizer.generator = generator if noise_generator is None else noise_generator
        sampler = UniformWithReplacementSampler(
            num_samples=plan.num_samples,
            sample_rate=plan.sample_rate,
            generator=generator,
            steps=plan.steps_per_round,
        )
        self._module.train()
        loss_sum, seen = 0.0, 0
        try:
            for indices in sampler:
                optimizer.zero_grad(set_to_none=True)
                if indices:
                    batch = torch.as_tensor(indices, dtype=torch.long)
                    x, y = shard.x[batch].to(device), shard.y[batch].to(device)
                    loss = self._loss_fn(self._module(x), y)
                    loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated
                    loss_sum += float(loss.detach()) * len(indices)
                    seen += len(indices)
                else:
                    # Opacus' DPDataLoader turns an empty Poisson batch into a zero-length batch
                    # whose per-sample gradients are empty: DPOptimizer then noises a zero sum.
                    for parameter in self._parameters:
                        # grad_sample is Opacus' attribute, set on torch's Parameter at run time
                        parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))  # type: ignore[attr-defined]
                optimizer.step()
        finally:
            optimizer.zero_grad(set_to_none=True)
            optimizer.generator = None
        return Update(
            client_id=shard.client_id,
            delta=(to_vector(self._parameters) - start).cpu(),
            num_samples=plan.num_samples,
            train_loss=loss_sum / seen if seen else float("nan"),
        )


class DPSGDTrainer:
    """Local DP-SGD for the clients of ``client_sizes``, each with a ledger that persists across
    rounds and an optional ε budget it enforces itself.

    Implements :class:`~securefl.fl.types.ClientTrainer` and
    :class:`~securefl.fl.types.PrivacyAccounting`.  A client program holds one for its own client
    (``client_sizes={client_id: n}``); a simulation builds one per client sharing one ``engine``
    (:class:`DPSGDEngine`, built from ``model``, ``task``, ``lr``, ``momentum``, ``weight_decay``
    and ``grad_sample_mode`` when not given; give one or the other) and reports them together with
    :func:`dp_round_metrics` and :func:`dp_ledger`.  One trainer may also serve many clients with
    one ledger.

    Poisson batches and noise come from the trainer's own generator, seeded from the operating
    system and never stored.  ``seed`` fixes that generator: for tests only; a seed known to the
    server voids the guarantee.
    """

    def __init__(
        self,
        *,
        config: DPConfig,
        client_sizes: Mapping[int, int],
        rounds: int,
        local_epochs: int,
        batch_size: int,
        model: nn.Module | None = None,
        task: str | None = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        grad_sample_mode: str | None = None,
        engine: DPSGDEngine | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.batch_size = batch_size
        self.plans = plan_clients(
            config=config,
            client_sizes=client_sizes,
            rounds=rounds,
            local_epochs=local_epochs,
            batch_size=batch_size,
        )
        engine_settings = (model, task, lr, momentum, weight_decay, grad_sample_mode)
        if engine is None:
            if model is None or task is None or lr is None:
                raise TypeError(
                    "DPSGDTrainer needs an `engine`, or the `model`, `task` and `lr` to build one"
                )
            engine = DPSGDEngine(
                model=model,
                task=task,
                lr=lr,
                max_grad_norm=config.max_grad_norm,
                batch_size=batch_size,
                momentum=0.0 if momentum is None else momentum,
                weight_decay=0.0 if weight_decay is None else weight_decay,
                grad_sample_mode="ew" if grad_sample_mode is None else grad_sample_mode,
            )
        elif any(setting is not None for setting in engine_settings):
            raise TypeError(
                "DPSGDTrainer takes an `engine` or the model settings to build one, not both: "
                "the engine already fixes the model, task, lr, momentum, weight decay and grad sample mode"
            )
        elif (engine.batch_size, engine.max_grad_norm) != (batch_size, config.max_grad_norm):
            raise ValueError(
                f"the engine clips to {engine.max_grad_norm:g} at expected batch size "
                f"{engine.batch_size}; this trainer plans `dp.max_grad_norm` {config.max_grad_norm:g} "
                f"and `batch_size` {batch_size}: build the engine with the trainer's settings"
            )
        self._engine = engine
        self._generator = dp_generator(seed=seed)
        # Off the CPU the noise is drawn on the engine's device, by a second secret generator there.
        self._noise_generator = (
            None if engine.device.type == "cpu" else dp_generator(seed=seed, device=engine.device)
        )
        self._ledger = PrivacyLedger.open(
            accountant=config.accountant,
            delta=config.delta,
            client_sizes=client_sizes,
            budget=config.target_epsilon,
        )
        noises = sorted({plan.noise_multiplier for plan in self.plans.values()})
        engine.announce(config, noises)

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
        """One round of DP-SGD on ``shard``, recorded in its client's ledger first.

        ``generator`` is the simulation's (derived from the run's seed, known to the server) and
        is not used: DP-SGD's Poisson batches and noise come from the trainer's own generator.
        """
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
        # Validate before training: an out-of-order round or a spent budget raises here.
        ledger = self._ledger.record(client_id, plan.event(round_index))
        update = self._engine.train(
            global_params=global_params,
            shard=shard,
            plan=plan,
            generator=self._generator,
            noise_generator=self._noise_generator,
        )
        self._ledger = ledger
        return update

    # ---- the ledger as bytes --------------------------------------------------------------------

    def export_ledger(self) -> bytes:
        """This trainer's privacy ledger as canonical JSON bytes (:data:`LEDGER_FORMAT`).

        Per client its example count, its events (round, steps, sample rate, noise multiplier)
        and, once its budget stopped it, when and at which ε; with the accountant, δ and budget
        they are interpreted under.  ε is not written: it is a function of the events, recomputed
        by :meth:`import_ledger` with the same accountant.  A worker process reports its clients'
        ledgers with it, and a deployed client keeps its own on its disk."""
        ledger = self._ledger
        document = {
            "format": LEDGER_FORMAT,
            "accountant": ledger.accountant,
            "delta": ledger.delta,
            "budget": ledger.budget,
            "clients": [_client_to_json(record) for _, record in sorted(ledger.clients.items())],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    def import_ledger(self, data: bytes, *, clients: Iterable[int] | None = None) -> None:
        """Take over the ledger :meth:`export_ledger` wrote, here or in another process: the
        records of ``clients`` (``None``: of every client), the others' kept as they are.

        Afterwards :meth:`epsilon`, :meth:`can_train` and :meth:`ledger` report for those clients
        what the exporting trainer reported.  ``clients`` serves a trainer shared by clients that
        train in different processes: each process's copy is current for its own clients only.
        Raises :class:`~securefl.errors.LedgerError`, holding the ledger it had, for bytes that are
        not such a ledger, a ledger of other clients or kept under another accountant, δ or
        budget, and one that has spent less than the ledger held: every event held must be in it,
        in order (a ledger never goes backwards)."""
        document = _ledger_document(data)
        held = self._ledger
        kept_under = (document["accountant"], document["delta"], document["budget"])
        if kept_under != (held.accountant, held.delta, held.budget):
            raise LedgerError(
                f"the ledger was kept under accountant {kept_under[0]!r}, δ {kept_under[1]!r} and "
                f"budget {kept_under[2]!r}; this trainer accounts with {held.accountant!r}, δ "
                f"{held.delta!r} and budget {held.budget!r}: import a ledger kept under the same "
                "privacy settings"
            )
        entries = {entry["client_id"]: entry for entry in document["clients"]}
        sizes = {client_id: entry["num_samples"] for client_id, entry in entries.items()}
        held_sizes = {client_id: record.num_samples for client_id, record in held.clients.items()}
        if len(entries) != len(document["clients"]) or sizes != held_sizes:
            raise LedgerError(
                f"the ledger is of clients {_sizes_text(sizes, len(document['clients']))}; this trainer "
                f"holds clients {_sizes_text(held_sizes)}: import the ledger of the same clients"
            )
        taken = sorted(entries) if clients is None else sorted(set(clients))
        unknown = [client_id for client_id in taken if client_id not in entries]
        if unknown:
            raise LedgerError(f"clients {unknown} are not in the ledger: take over clients it holds")
        ledger = held
        for client_id in taken:
            ledger = _extended(ledger, client_id, entries[client_id])
        self._ledger = ledger

    # ---- PrivacyAccounting ---------------------------------------------------------------------

    def epsilon(self, client_id: int) -> float:
        """ε client ``client_id`` has spent so far (0 if it never trained)."""
        return self._ledger.epsilon(client_id)

    def round_metrics(self) -> dict[str, float]:
        """Max and median ε over every client (0 for those never trained so far), and δ."""
        return dp_round_metrics([self])

    def ledger(self) -> dict[str, Any]:
        return dp_ledger([self])


LEDGER_FORMAT = "securefl/dp-sgd-ledger/1"
"""The ``format`` of :meth:`DPSGDTrainer.export_ledger`'s JSON; another value is refused."""

_EVENT_FIELDS = ("round_index", "steps", "sample_rate", "noise_multiplier")


def _client_to_json(record: ClientRecord) -> dict[str, Any]:
    exclusion = record.exclusion
    return {
        "client_id": record.client_id,
        "num_samples": record.num_samples,
        "events": [{name: getattr(event, name) for name in _EVENT_FIELDS} for event in record.events],
        # An infinite ε (noise multiplier 0) is written null, as everywhere in securefl's JSON.
        "excluded": None
        if exclusion is None
        else {
            "after_rounds": exclusion.after_rounds,
            "would_be_epsilon": json_float(exclusion.would_be_epsilon),
        },
    }


def _ledger_document(data: bytes) -> dict[str, Any]:
    """The checked JSON of an exported ledger: every field present, of its type, nothing else."""
    if not isinstance(data, bytes):
        raise LedgerError(f"a ledger is bytes, not {type(data).__name__}")
    try:
        document = json.loads(
            data.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_without_duplicates
        )
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        raise LedgerError(f"the ledger is not JSON ({error}): import the bytes export_ledger wrote") from None
    _expect_fields(document, {"format", "accountant", "delta", "budget", "clients"}, "the ledger")
    if document["format"] != LEDGER_FORMAT:
        raise LedgerError(
            f"the ledger's format is {document['format']!r}, not {LEDGER_FORMAT!r}: import a ledger "
            "that DPSGDTrainer.export_ledger wrote"
        )
    _expect_type(document["accountant"], str, "the ledger's accountant")
    _expect_number(document["delta"], "the ledger's delta")
    if document["budget"] is not None:
        _expect_number(document["budget"], "the ledger's budget")
    _expect_type(document["clients"], list, "the ledger's clients")
    for entry in document["clients"]:
        _expect_fields(entry, {"client_id", "num_samples", "events", "excluded"}, "a client of the ledger")
        _expect_type(entry["client_id"], int, "a client id")
        _expect_type(entry["num_samples"], int, f"client {entry['client_id']}'s example count")
        _expect_type(entry["events"], list, f"client {entry['client_id']}'s events")
        for event in entry["events"]:
            _expect_fields(event, set(_EVENT_FIELDS), f"an event of client {entry['client_id']}")
            _expect_type(event["round_index"], int, "an event's round")
            _expect_type(event["steps"], int, "an event's steps")
            _expect_number(event["sample_rate"], "an event's sample rate")
            _expect_number(event["noise_multiplier"], "an event's noise multiplier")
        excluded = entry["excluded"]
        if excluded is not None:
            _expect_fields(
                excluded, {"after_rounds", "would_be_epsilon"}, f"client {entry['client_id']}'s exclusion"
            )
            _expect_type(excluded["after_rounds"], int, "an exclusion's rounds")
            if excluded["would_be_epsilon"] is not None:
                _expect_number(excluded["would_be_epsilon"], "an exclusion's ε")
    return dict(document)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError(f"a key appears twice in {[key for key, _ in pairs]}")
    return document


def _expect_fields(value: object, names: set[str], what: str) -> None:
    _expect_type(value, dict, what)
    assert isinstance(value, dict)
    if set(value) != names:
        raise LedgerError(
            f"{what} has the fields {sorted(value)}, not {sorted(names)}: "
            "import the bytes export_ledger wrote"
        )


_JSON_NAMES = {dict: "object", list: "array", int: "integer", str: "string"}


def _expect_type(value: object, kind: type, what: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LedgerError(
            f"{what} is {value!r}, not a JSON {_JSON_NAMES[kind]}: import the bytes export_ledger wrote"
        )


def _expect_number(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LedgerError(f"{what} is {value!r}, not a JSON number: import the bytes export_ledger wrote")


def _sizes_text(sizes: Mapping[int, int], listed: int | None = None) -> str:
    text = ", ".join(f"{client_id} ({size} examples)" for client_id, size in sorted(sizes.items()))
    twice = f", {listed - len(sizes)} listed twice" if listed is not None and listed != len(sizes) else ""
    return f"[{text}{twice}]"


def _extended(ledger: PrivacyLedger, client_id: int, entry: Mapping[str, Any]) -> PrivacyLedger:
    """``ledger`` with the events and exclusion of ``entry`` that it does not hold yet, recorded
    the way training records them (so ε is recomputed, round order and budget checked)."""
    held = ledger[client_id]
    try:
        events = tuple(SampledGaussianEvent(**event) for event in entry["events"])
    except ValueError as error:
        raise LedgerError(f"client {client_id}'s ledger holds an invalid event: {error}") from None
    excluded = entry["excluded"]
    if events[: len(held.events)] != held.events or (held.exclusion is not None and excluded is None):
        raise LedgerError(
            f"client {client_id}'s ledger has spent less than the one held (rounds {list(held.rounds)}"
            f"{', then excluded' if held.exclusion is not None else ''}; the imported one has rounds "
            f"{[event.round_index for event in events]}{', then excluded' if excluded else ''}): a "
            "privacy ledger never goes backwards; import the newest one"
        )
    try:
        for event in events[len(held.events) :]:
            ledger = ledger.record(client_id, event)
        if excluded is not None:
            if excluded["after_rounds"] != len(events):
                raise ValueError(f"excluded after {excluded['after_rounds']} rounds, it lists {len(events)}")
            would_be = (
                math.inf if excluded["would_be_epsilon"] is None else float(excluded["would_be_epsilon"])
            )
            if held.exclusion is None:
                ledger = ledger.exclude(client_id, would_be_epsilon=would_be)
            elif held.exclusion.would_be_epsilon != would_be:
                raise ValueError(
                    f"excluded at next ε {would_be}, the ledger held {held.exclusion.would_be_epsilon}"
                )
    except (ValueError, PrivacyBudgetExceeded) as error:
        raise LedgerError(f"client {client_id}'s ledger is inconsistent: {error}") from None
    return ledger


def dp_round_metrics(trainers: Sequence[DPSGDTrainer]) -> dict[str, float]:
    """Max and median ε over every client of ``trainers`` (0 for those never trained so far), and
    δ: one round's figures of a federation whose clients each hold their own trainer."""
    combined = _combined_ledger(trainers)
    summary = combined.summary()
    return {
        "epsilon_max": summary["epsilon_max"],
        "epsilon_median": summary["epsilon_median"],
        "delta": combined.delta,
    }


def dp_ledger(trainers: Sequence[DPSGDTrainer]) -> dict[str, Any]:
    """The sample-level record of every client of ``trainers``, for ``privacy.json``."""
    combined = _combined_ledger(trainers)
    config, batch_size = trainers[0].config, trainers[0].batch_size
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
            "max_grad_norm": config.max_grad_norm,
            "target_epsilon": config.target_epsilon,
            "expected_batch_size": batch_size,
            **combined.to_json(),
        }
    }


def _combined_ledger(trainers: Sequence[DPSGDTrainer]) -> PrivacyLedger:
    """One ledger holding the clients of every trainer; they must share their DP settings."""
    if not trainers:
        raise ValueError("no DP-SGD trainer to report on")
    first = trainers[0]
    records: dict[int, ClientRecord] = {}
    for trainer in trainers:
        if (trainer.config, trainer.batch_size) != (first.config, first.batch_size):
            raise ValueError(
                f"trainers with different DP settings ({trainer.config}, batch size "
                f"{trainer.batch_size} vs {first.config}, {first.batch_size}) form no single report"
            )
        clients = trainer.privacy_ledger.clients
        twice = sorted(records.keys() & clients.keys())
        if twice:
            raise ValueError(f"clients {twice} are held by more than one trainer")
        records.update(clients)
    return dataclasses.replace(first.privacy_ledger, clients=MappingProxyType(records))


__all__ = [
    "LEDGER_FORMAT",
    "ClientPlan",
    "DPSGDEngine",
    "DPSGDTrainer",
    "dp_ledger",
    "dp_round_metrics",
    "plan_clients",
    "validate_model",
]
