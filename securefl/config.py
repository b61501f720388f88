"""Run configuration: frozen dataclasses validated on construction; TOML in, JSON out.

Every parameter is validated here, once, when the dataclass is built; the classes built from a
configuration keep only the invariants they need as a library.  A violated constraint raises
:class:`~securefl.errors.ConfigError` naming the parameter by its field path in backticks
(`` `lr` ``, `` `dp.delta` ``, `` `secagg.bits` ``); the CLI renders those paths as its flags
(:mod:`securefl.cli.flags`).

``lr``, ``batch_size``, ``local_epochs`` and ``momentum`` hold the user's choice; ``None`` (the
default) takes the data set's training default for the model
(:meth:`securefl.data.DatasetInfo.training_defaults`). :attr:`RunConfig.training` holds the numbers
the run uses, resolved on construction (and again by ``dataclasses.replace``), and a written
configuration records those numbers.

The keys of a TOML file are the setting names of :data:`SETTINGS` (``clients-per-round`` or
``clients_per_round``, the CLI's flags without the dashes); sections are optional: a flat file is
read the same as one with ``[dp]``, ``[central-dp]`` and ``[secagg]`` tables.  Inside a table a key
is the field's name (``[secagg] bits``) or its setting name (``[secagg] secagg-bits``), plus
``enabled``; a section's switch (``dp = true``, ``enabled = false``) must be a boolean.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import numbers
import operator
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefl.errors import ConfigError
from securefl.validation import require as _require
from securefl.validation import require_at_least as _require_at_least
from securefl.validation import require_at_most as _require_at_most
from securefl.validation import require_finite as _require_finite
from securefl.validation import require_non_negative as _require_non_negative
from securefl.validation import require_positive as _require_positive

if TYPE_CHECKING:
    import torch

    from securefl.data import TrainingDefaults
    from securefl.protocols.secagg import SecAggParams

ALGORITHMS = ("fedavg", "fedsgd")
ACCOUNTANTS = ("rdp", "prv", "gdp")
CLIENT_SAMPLING = ("fixed", "poisson")
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class DPConfig:
    """Sample-level DP-SGD on every client through Opacus (`` `dp` ``)."""

    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        if self.noise_multiplier is not None:
            _require_non_negative(self.noise_multiplier, "noise multiplier", "dp.noise_multiplier")
        _require_positive(self.max_grad_norm, "max grad norm", "dp.max_grad_norm")
        _require(0 < self.delta < 1, f"delta {self.delta} is outside (0, 1): set `dp.delta`, e.g. 1e-5")
        _require(
            self.accountant in ACCOUNTANTS,
            f"unknown accountant {self.accountant!r}: set `dp.accountant` to one of {', '.join(ACCOUNTANTS)}",
        )
        if self.target_epsilon is not None:
            _require_positive(self.target_epsilon, "target epsilon", "dp.target_epsilon")

    @property
    def effective_noise_multiplier(self) -> float | None:
        """The noise multiplier, or ``None`` when a target epsilon alone chooses it.

        With both a noise multiplier and a target epsilon, the target is only a budget: clients
        whose next round would exceed it stop being sampled. Neither given: 1.0.
        """
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        return None if self.target_epsilon is not None else 1.0


@dataclass(frozen=True)
class CentralDPConfig:
    """User-level DP-FedAvg (McMahan et al. 2018): noise added by a trusted server
    (`` `central_dp` ``), or ``distributed`` (`` `central_dp.distributed` ``): each client adds a
    Skellam share under secure aggregation and the server adds none
    (:mod:`securefl.privacy.distributed`). The knobs mean the same in both modes, so the two
    compare at the same settings."""

    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    delta: float = 1e-5
    client_sampling: str = "poisson"
    accountant: str = "rdp"
    distributed: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        _require_non_negative(
            self.noise_multiplier, "central noise multiplier", "central_dp.noise_multiplier"
        )
        _require_positive(self.clip_norm, "clip norm", "central_dp.clip_norm")
        _require(0 < self.delta < 1, f"delta {self.delta} is outside (0, 1): set `central_dp.delta`")
        _require(
            self.client_sampling in CLIENT_SAMPLING,
            f"unknown client sampling {self.client_sampling!r}: set `central_dp.client_sampling` to "
            f"one of {', '.join(CLIENT_SAMPLING)}",
        )
        _require(
            self.accountant in ACCOUNTANTS,
            f"unknown accountant {self.accountant!r}: set `central_dp.accountant` to one of "
            f"{', '.join(ACCOUNTANTS)}",
        )
        if self.distributed:
            _require(
                self.noise_multiplier > 0,
                "`central_dp.distributed` needs noise: use a positive `central_dp.noise_multiplier`",
            )
            _require(
                self.accountant == "rdp",
                f"`central_dp.distributed` accounts the Skellam mechanism by RDP only, not "
                f"{self.accountant!r}: use `central_dp.accountant` rdp",
            )


AUTO = "auto"
"""``secagg.neighbors`` auto: degree and threshold chosen by
:func:`~securefl.protocols.secagg.choose_parameters` for each round's size."""

DEFAULT_ASSUMED_DROPOUT_RATE = 0.1
"""The dropout rate ``secagg.neighbors`` auto assumes unless told (Bell et al. 2020 evaluate 1-10%)."""
DEFAULT_ASSUMED_COLLUDER_RATE = 0.1
"""The fraction of a round's clients ``secagg.neighbors`` auto assumes collude with the server
unless told."""


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation of every round's updates (`` `secagg` ``).

    ``max_colluders`` is how many clients may collude with the server; ``None`` takes the largest
    number the threshold tolerates
    (:attr:`~securefl.protocols.secagg.SecAggParams.colluders_tolerated`).

    Two dropout rates, never one for the other: ``dropout_rate`` is what the *simulation* does
    (each client leaves a round with that probability), ``assumed_dropout_rate`` what the
    parameters are *chosen for* under ``neighbors`` auto.  Auto takes the degree ``k``, the
    threshold ``t`` and the colluders ``c = ceil(assumed_colluder_rate * n)`` of each round's size
    ``n`` from :func:`~securefl.protocols.secagg.choose_parameters` (every client and the server
    compute the same from the configuration); a simulation that drops more clients than assumed,
    or an explicit ``threshold`` or ``max_colluders`` that contradicts auto's, is refused.
    """

    threshold: float | None = None
    neighbors: int | str | None = None
    bits: int = 32
    clip: float | None = None
    dropout_rate: float = 0.0
    active_adversary: bool = False
    max_colluders: int | None = None
    assumed_dropout_rate: float | None = None
    """``neighbors`` auto only: the dropout rate the parameters must tolerate (default 0.1)."""
    assumed_colluder_rate: float | None = None
    """``neighbors`` auto only: the fraction of a round's clients that may collude with the
    server (default 0.1)."""

    def __post_init__(self) -> None:
        _check_types(self)
        _require(8 <= self.bits <= 62, f"secagg bits {self.bits} outside 8..62: set `secagg.bits`")
        if self.clip is not None:
            _require_positive(self.clip, "secagg clip", "secagg.clip")
        _require(
            0 <= self.dropout_rate < 1,
            f"dropout rate {self.dropout_rate} outside [0, 1): set `secagg.dropout_rate`",
        )
        if self.threshold is not None:
            remedy = "give `secagg.threshold` as a fraction in (0, 1) or a client count"
            _require_finite(self.threshold, "secagg threshold", remedy)
            _require(self.threshold > 0, f"secagg threshold {self.threshold} <= 0: {remedy}")
        if isinstance(self.neighbors, str):
            _require(
                self.neighbors == AUTO,
                f"secagg neighbors {self.neighbors!r} is neither a count nor {AUTO!r}: set "
                f"`secagg.neighbors` to an even count or {AUTO}",
            )
        elif self.neighbors is not None:
            _require_at_least(self.neighbors, 1, "secagg neighbors", "secagg.neighbors")
        if self.max_colluders is not None:
            _require_at_least(self.max_colluders, 0, "secagg colluders", "secagg.max_colluders")
        self._check_assumed_rates()

    def _check_assumed_rates(self) -> None:
        for name in ("assumed_dropout_rate", "assumed_colluder_rate"):
            rate = getattr(self, name)
            if rate is None:
                continue
            _require(
                self.auto,
                f"`secagg.{name}` chooses the parameters of `secagg.neighbors` {AUTO} only: set "
                f"`secagg.neighbors` {AUTO}, or drop `secagg.{name}`",
            )
            _require(0 <= rate < 1, f"{name.replace('_', ' ')} {rate} outside [0, 1): set `secagg.{name}`")
        if not self.auto:
            return
        dropout, colluders = self.assumed_rates
        _require(
            dropout + colluders < 1,
            f"assumed dropout rate {dropout} + assumed colluder rate {colluders} >= 1 leaves no honest "
            "survivor: lower `secagg.assumed_dropout_rate` or `secagg.assumed_colluder_rate`",
        )
        _require(
            self.dropout_rate <= dropout,
            f"the simulated `secagg.dropout_rate` {self.dropout_rate} is above the "
            f"`secagg.assumed_dropout_rate` {dropout} the parameters are chosen for: raise "
            "`secagg.assumed_dropout_rate` to at least the simulated rate, or lower `secagg.dropout_rate`",
        )

    @property
    def auto(self) -> bool:
        """Whether each round's degree and threshold come from ``choose_parameters``."""
        return self.neighbors == AUTO

    @property
    def assumed_rates(self) -> tuple[float, float]:
        """``neighbors`` auto: the assumed dropout and colluder rates (given, or the defaults)."""
        dropout, colluders = self.assumed_dropout_rate, self.assumed_colluder_rate
        return (
            DEFAULT_ASSUMED_DROPOUT_RATE if dropout is None else dropout,
            DEFAULT_ASSUMED_COLLUDER_RATE if colluders is None else colluders,
        )

    def chosen_parameters(self, clients: int) -> SecAggParams:
        """``neighbors`` auto: :func:`~securefl.protocols.secagg.choose_parameters`' degree,
        threshold and colluders for a round of ``clients`` at the assumed rates (a
        :class:`ConfigError` naming them when none meet its targets)."""
        dropout, colluders = self.assumed_rates
        return _chosen_parameters(clients, dropout, colluders, self.active_adversary)

    def neighbors_for(self, clients: int) -> int | None:
        """Each client's SecAgg+ neighbours in a round of ``clients``; ``None``: all others."""
        if self.auto:
            return self.chosen_parameters(clients).neighbors
        assert not isinstance(self.neighbors, str)  # validated: a string is auto
        return self.neighbors

    def colluders_for(self, clients: int) -> int | None:
        """``c`` for a round of ``clients``: ``max_colluders``, auto's ``ceil(rate * clients)``,
        or ``None`` (the most the threshold tolerates)."""
        return self.chosen_parameters(clients).max_colluders if self.auto else self.max_colluders

    def share_holders(self, clients: int) -> int:
        """Holders of each client's shares: its SecAgg+ neighbours and itself, or every client."""
        neighbors = self.neighbors_for(clients)
        return clients if neighbors is None else min(neighbors + 1, clients)

    def threshold_count(self, clients: int) -> int:
        """The Shamir threshold for a round of ``clients``: a fraction in (0, 1) of the share
        holders, or a count >= 2; by default a strict majority of the share holders, and against
        an active server Bonawitz et al.'s ``floor(2h/3) + 1`` of the ``h`` share holders, which
        on the complete graph tolerates ``c < n/3`` colluders (``t > c`` and ``2t > n + c``).

        A threshold of 1 is refused: each share would be the secret itself, so the server and a
        single neighbour could unmask that client's update.  Under ``neighbors`` auto: the
        threshold ``choose_parameters`` chose.
        """
        if self.auto:
            return self.chosen_parameters(clients).threshold
        return self.given_threshold_count(clients)

    def given_threshold_count(self, clients: int) -> int:
        """:meth:`threshold_count` from ``threshold`` (or its default) alone, whatever
        ``neighbors`` says."""
        holders = self.share_holders(clients)
        if self.threshold is None:
            count = 2 * holders // 3 + 1 if self.active_adversary else holders // 2 + 1
        elif self.threshold < 1:
            count = math.ceil(self.threshold * holders - 1e-9)
        else:
            _require(
                float(self.threshold).is_integer(),
                f"secagg threshold {self.threshold} is neither a fraction in (0, 1) nor a whole client "
                "count: change `secagg.threshold`",
            )
            count = int(self.threshold)
        _require(
            count >= 2 or holders < 2,
            f"secagg threshold {self.threshold} gives {count} share(s) of {holders}: a single share is the "
            "secret itself; use a `secagg.threshold` count of at least 2 or a larger fraction",
        )
        return count


@functools.lru_cache(maxsize=1024)
def _chosen_parameters(
    clients: int, dropout_rate: float, colluder_rate: float, active_adversary: bool
) -> SecAggParams:
    """:func:`~securefl.protocols.secagg.choose_parameters`, once per round size and rates (every
    client of a simulation asks for its round's)."""
    from securefl.protocols.secagg import choose_parameters

    _require(
        clients >= 2,
        f"a round of {clients} client(s) has no secure-aggregation parameters: sample at least 2 "
        "clients per round (`clients_per_round`)",
    )
    try:
        return choose_parameters(
            clients,
            dropout_rate=dropout_rate,
            corruption_rate=colluder_rate,
            active_adversary=active_adversary,
        )
    except ConfigError:
        raise ConfigError(
            f"`secagg.neighbors` {AUTO} finds no degree and threshold for a round of {clients} clients "
            f"that keep 2^-40 security and 2^-20 correctness at `secagg.assumed_dropout_rate` "
            f"{dropout_rate} and `secagg.assumed_colluder_rate` {colluder_rate}"
            + (" against an active server" if active_adversary else "")
            + ": lower those rates or sample more clients per round (`clients_per_round`)"
        ) from None


def _training_defaults(dataset: str, model: str) -> TrainingDefaults:
    """The training defaults of ``model`` on ``dataset``, once both are known and fit each other."""
    from securefl.data import DATASETS
    from securefl.models import MODELS, TRAINABLE_MODELS, check_model_fits

    _require(
        dataset in DATASETS,
        f"unknown dataset {dataset!r}: set `dataset` to one of "
        f"{', '.join(DATASETS)} (see `securefl datasets`)",
    )
    _require(model in MODELS, f"unknown model {model!r}: set `model` to one of {', '.join(MODELS)}")
    info = DATASETS[dataset]
    spec = check_model_fits(model, input_shape=info.input_shape)
    _require(
        spec.not_for_training is None,
        f"model {model!r} is not for training: {spec.not_for_training}; set `model` to one of "
        f"{', '.join(TRAINABLE_MODELS)}",
    )
    return info.training_defaults(model)


# RunConfig's fields that hold the user's training choice, ``None`` for the data set's default.
_TRAINING_FIELDS = ("lr", "momentum", "batch_size", "local_epochs")

INT_LIMIT = 2**63
"""Every integer setting is below this: torch's generators take a signed 64-bit seed, and the round
messages carry the training settings as signed 64-bit integers."""
THREADS_LIMIT = 2**31
"""``threads`` is below this: torch takes a C ``int``."""
FLOAT32_MAX = 3.4028234663852886e38
"""The largest learning rate or weight decay: SGD applies them in the model's float32."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a federated run needs; validated on construction.

    ``lr``, ``momentum``, ``batch_size`` and ``local_epochs`` are the user's choice: ``None``
    (the default) takes the data set's training default for the model
    (:meth:`securefl.data.DatasetInfo.training_defaults`). :attr:`training` holds the numbers the
    run uses, resolved on construction: ``RunConfig(dataset="boston", model="mlp").training.lr``
    is boston's learning rate, and ``dataclasses.replace`` with another data set or model
    resolves them again while keeping the settings the user chose. :meth:`to_json` records the
    resolved numbers, so a run is reproducible from its ``config.json``.
    """

    dataset: str = "mnist-sample"
    model: str = "cnn"
    clients: int = 10
    clients_per_round: int | None = None
    fraction: float | None = None
    rounds: int = 10
    local_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float = 0.0
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    algorithm: str = "fedavg"
    backend: str = "local"
    """Where the client programs run: ``local``, on this machine (in this process, or in ``workers``
    processes), or ``ray``, on Ray actors (:mod:`securefl.transports.ray_actors`): ``workers`` of
    them, by default one per CPU of the cluster.  The results are the same."""
    ray_address: str | None = None
    """The Ray cluster of ``backend`` ray: ``auto`` (the one Ray finds), ``HOST:PORT`` or
    ``ray://HOST:PORT`` (:func:`ray_endpoint`); ``None``: a local Ray instance."""
    data_dir: str | None = None
    download: bool = False
    threads: int = 1
    dp: DPConfig | None = None
    central_dp: CentralDPConfig | None = None
    secagg: SecAggConfig | None = None
    workers: int | None = None
    """Processes that run the client programs (:mod:`securefl.transports.processes`), each with one
    torch thread; 1: all in this process, one after another (:mod:`securefl.transports.inprocess`).
    The results are the same.  ``None``: one per core this process may run on, one when training
    on a GPU (:attr:`worker_processes`)."""
    device: str = "auto"
    """Where clients train and the server evaluates: ``cpu``, ``cuda``, or ``auto`` (a CUDA GPU
    when torch sees one); aggregation and the server update stay on the CPU
    (:mod:`securefl.devices`)."""
    training: TrainingDefaults = field(init=False)
    """The training settings the run uses: the user's choices, the data set's defaults for the
    rest. Every consumer reads these (``config.training.lr``), never the fields above."""

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, os.PathLike):  # a Path is welcome; the field holds its text
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        _check_types(self)
        defaults = _training_defaults(self.dataset, self.model)
        chosen = {name: getattr(self, name) for name in _TRAINING_FIELDS}
        resolved = {
            name: getattr(defaults, name) if value is None else value for name, value in chosen.items()
        }
        object.__setattr__(self, "training", dataclasses.replace(defaults, **resolved))
        self._validate()

    def _validate(self) -> None:
        from securefl.data import DATASETS, PARTITIONS

        _require(
            self.partition in PARTITIONS,
            f"unknown partition {self.partition!r}: set `partition` to one of {', '.join(PARTITIONS)}",
        )
        _require(
            self.algorithm in ALGORITHMS,
            f"unknown algorithm {self.algorithm!r}: set `algorithm` to one of {', '.join(ALGORITHMS)}",
        )
        _require(
            self.backend in BACKENDS,
            f"unknown backend {self.backend!r}: set `backend` to one of {', '.join(BACKENDS)}",
        )
        if self.ray_address is not None:
            _require(
                self.backend == "ray",
                "`ray_address` is the cluster of `backend` ray: set `backend` ray, or drop `ray_address`",
            )
            ray_endpoint(self.ray_address)
        _require_at_least(self.clients, 1, "clients", "clients")
        samples = DATASETS[self.dataset].train_samples
        _require(
            self.clients <= samples,
            f"clients {self.clients} > the {samples} training samples of dataset {self.dataset!r} "
            f"(every client needs at least one): set `clients` to {samples} or fewer",
        )
        _require(
            self.clients_per_round is None or self.fraction is None,
            "give either `clients_per_round` or `fraction`, not both",
        )
        if self.clients_per_round is not None:
            _require(
                1 <= self.clients_per_round <= self.clients,
                f"clients per round {self.clients_per_round} must be in 1..{self.clients} "
                "(`clients`): change `clients_per_round`",
            )
        if self.fraction is not None:
            _require(0 < self.fraction <= 1, f"fraction {self.fraction} is outside (0, 1]: change `fraction`")
        _require_at_least(self.rounds, 1, "rounds", "rounds")
        training = self.training
        _require_at_least(training.local_epochs, 1, "local epochs", "local_epochs")
        _require_at_least(training.batch_size, 1, "batch size", "batch_size")
        _require_positive(training.lr, "learning rate", "lr")
        _require_at_most(training.lr, FLOAT32_MAX, "learning rate", "lr")
        _require(
            0 <= training.momentum < 1, f"momentum {training.momentum} outside [0, 1): change `momentum`"
        )
        _require_non_negative(self.weight_decay, "weight decay", "weight_decay")
        _require_at_most(self.weight_decay, FLOAT32_MAX, "weight decay", "weight_decay")
        _require_positive(self.alpha, "alpha (the Dirichlet concentration, smaller = more skew)", "alpha")
        _require_at_least(self.seed, 0, "seed", "seed")
        _require_at_least(self.threads, 1, "threads", "threads")
        _require(
            self.threads < THREADS_LIMIT,
            f"threads {self.threads} >= 2**31: use a `threads` below {THREADS_LIMIT}",
        )
        if self.workers is not None:
            _require_at_least(self.workers, 1, "workers", "workers")
            _require(
                self.workers < THREADS_LIMIT,
                f"workers {self.workers} >= 2**31: use fewer `workers`",
            )
        device = self.torch_device  # an unknown name, or cuda without a GPU, is refused here
        _require(
            self.workers is None or self.workers == 1 or device.type == "cpu",
            f"`workers` {self.workers} train on the CPU, and `device` {self.device} trains on "
            f"{device}: use `workers` 1 to train on the GPU, or `device` cpu",
        )
        _require(
            self.dp is None or self.algorithm != "fedsgd",
            "`dp` trains with Poisson-sampled mini-batches (DP-SGD); it does not combine with "
            "`algorithm` fedsgd: use `algorithm` fedavg",
        )
        if self.secagg is not None:
            count = self.secagg.threshold_count(self.sampled_clients)
            _require(
                count <= self.sampled_clients,
                f"secagg threshold {count} > clients per "
                f"round {self.sampled_clients}: lower `secagg.threshold`",
            )
            if self.secagg.auto:
                self._check_auto_agrees(self.secagg)
            elif isinstance(self.secagg.neighbors, int):
                _require(
                    self.secagg.neighbors < self.sampled_clients,
                    f"secagg neighbors "
                    f"{self.secagg.neighbors} >= clients per round {self.sampled_clients}: "
                    "lower `secagg.neighbors`",
                )
        if self.central_dp is not None and self.central_dp.distributed:
            if self.secagg is None:
                raise ConfigError(
                    "`central_dp.distributed` needs `secagg`: each client's noise share is too small "
                    "to protect its own update, only the sum of the survivors' shares is; without "
                    "secure aggregation the server would see every update with its small share"
                )
            _require(
                self.secagg.clip is None,
                "`secagg.clip` does not apply under `central_dp.distributed` (updates are clipped in "
                "L2 by `central_dp.clip_norm`): drop `secagg.clip`",
            )
        elif self.central_dp is not None and self.secagg is not None:
            # Under Poisson sampling, whether a round with dropouts reaches the threshold depends
            # on how many clients were sampled, so one user can decide whether t clipped updates
            # are released (sensitivity up to t·clip): see securefl.privacy.central.
            _require(
                self.central_dp.client_sampling != "poisson" or self.secagg.dropout_rate == 0,
                "`central_dp` with `secagg`, `secagg.dropout_rate` > 0 and Poisson client sampling "
                "has no sound user-level bound (whether a round aborts depends on one user's "
                "presence): use `central_dp.client_sampling` fixed, or `secagg.dropout_rate` 0",
            )

    def _check_auto_agrees(self, secagg: SecAggConfig) -> None:
        """``secagg.neighbors`` auto chooses the threshold and the colluders of the planned round:
        an explicit ``threshold`` or ``max_colluders`` must say the same, or it is refused."""
        clients = self.sampled_clients
        chosen = secagg.chosen_parameters(clients)
        graph = "the complete graph" if chosen.neighbors is None else f"{chosen.neighbors} neighbours"
        auto = (
            f"`secagg.neighbors` {AUTO} chooses {graph}, threshold {chosen.threshold} and "
            f"{chosen.max_colluders} colluder(s) for a round of {clients} clients"
        )
        if secagg.threshold is not None:
            given = secagg.given_threshold_count(clients)
            _require(
                given == chosen.threshold,
                f"{auto}, but `secagg.threshold` {secagg.threshold} gives {given}: drop `secagg.threshold`, "
                "or choose the parameters yourself with a `secagg.neighbors` count",
            )
        if secagg.max_colluders is not None:
            _require(
                secagg.max_colluders == chosen.max_colluders,
                f"{auto}, but `secagg.max_colluders` is {secagg.max_colluders}: drop `secagg.max_colluders` "
                "and set `secagg.assumed_colluder_rate` instead",
            )

    @property
    def torch_device(self) -> torch.device:
        """The device :attr:`device` stands for on this machine."""
        from securefl.devices import resolve_device

        return resolve_device(self.device)

    @property
    def worker_processes(self) -> int:
        """How many processes run the client programs: :attr:`workers`, or by default one per core
        this process may run on (``os.sched_getaffinity``), or one on a GPU; never more than
        :attr:`clients` (1: all in this process)."""
        if self.workers is not None:
            wanted = self.workers
        elif self.torch_device.type != "cpu":
            wanted = 1
        else:
            wanted = len(os.sched_getaffinity(0))
        return max(1, min(wanted, self.clients))

    @property
    def sampled_clients(self) -> int:
        """How many clients a round samples (the expected number under Poisson sampling)."""
        if self.clients_per_round is not None:
            return self.clients_per_round
        if self.fraction is not None:
            return max(1, round(self.fraction * self.clients))
        return self.clients

    # ---- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values, the training settings as the numbers the run uses (so
        :meth:`from_mapping` of it builds the same run, with those settings chosen explicitly)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        for name, value in values.items():
            if dataclasses.is_dataclass(value):
                values[name] = dataclasses.asdict(value)  # type: ignore[arg-type]
        values.update({name: getattr(self.training, name) for name in _TRAINING_FIELDS})
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from setting names (:data:`SETTINGS`), flat or in ``dp`` / ``central-dp`` /
        ``secagg`` tables (the keys the module docstring describes).

        A section is switched on by ``dp = true`` (etc.) or by having a table, off by
        ``dp = false`` or ``enabled = false`` in its table (which drops the table's other keys);
        a value ``None`` counts as not given.
        """
        return _build(_flatten(values))

    @classmethod
    def from_toml(cls, path: Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        """Read ``path`` and apply ``overrides`` (the flags the user gave) on top: an override wins
        over the file's value of the same field, an override of ``clients_per_round`` or
        ``fraction`` drops the file's other one (they are alternatives), and an override switching
        a section off (``--no-dp``) drops the file's settings of that section."""
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
        settings = _flatten(values)
        flags = _flatten(overrides or {})
        for section in _SECTIONS:
            if flags.get(section) is False:
                settings = {k: v for k, v in settings.items() if k.partition(".")[0] != section}
        for alternatives in _ALTERNATIVES:
            if any(path in flags for path in alternatives):
                settings = {k: v for k, v in settings.items() if k not in alternatives}
        return _build({**settings, **flags})


_RAY_ADDRESS = re.compile(r"(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})")


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port of a Ray cluster address, ``HOST:PORT`` or ``ray://HOST:PORT`` (an IPv6
    host in brackets); ``None`` for ``auto`` (the cluster Ray finds itself).  Anything else is a
    :class:`~securefl.errors.ConfigError` naming `` `ray_address` ``."""
    if address == "auto":
        return None
    match = _RAY_ADDRESS.fullmatch(address)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise ConfigError(
            f"`ray_address` {address!r} is not auto, HOST:PORT or ray://HOST:PORT: give the address "
            "`ray start --head` printed, or drop `ray_address` to start a local Ray instance"
        )
    return match.group(1).strip("[]"), int(match.group(2))


_SECTIONS: dict[str, type] = {"dp": DPConfig, "central_dp": CentralDPConfig, "secagg": SecAggConfig}
_PREFIXES: dict[type, str] = {kind: f"{name}." for name, kind in _SECTIONS.items()}
# Flat setting names of the sub-configurations' fields where they differ from the field's own
# name: both sections have a ``delta`` and an ``accountant``.
_SECTION_SETTINGS: dict[str, dict[str, str]] = {
    "dp": {},
    "central_dp": {
        "noise_multiplier": "central_noise_multiplier",
        "delta": "central_delta",
        "accountant": "central_accountant",
        "distributed": "distributed_dp",
    },
    "secagg": {
        "threshold": "secagg_threshold",
        "neighbors": "secagg_neighbors",
        "bits": "secagg_bits",
        "clip": "secagg_clip",
        "max_colluders": "secagg_colluders",
        "assumed_dropout_rate": "secagg_assumed_dropout_rate",
        "assumed_colluder_rate": "secagg_assumed_colluder_rate",
    },
}

SETTINGS: dict[str, str] = {
    **{f.name: f.name for f in fields(RunConfig) if f.init},
    **{
        _SECTION_SETTINGS[section].get(f.name, f.name): f"{section}.{f.name}"
        for section, kind in _SECTIONS.items()
        for f in fields(kind)
    },
}
"""Flat setting name (a TOML key, the CLI flag without its dashes) -> field path of
:class:`RunConfig`, e.g. ``secagg_bits`` -> ``secagg.bits``; a section's own name switches it on.
``central_dp.distributed`` (``distributed_dp``) switches ``central_dp`` on as well."""

# Settings that are alternatives to each other: a flag for one drops the file's others.
_ALTERNATIVES = (frozenset({"clients_per_round", "fraction"}),)

# Fields whose value true switches their section on as well.
_SECTION_SWITCHES = frozenset({"central_dp.distributed"})
_PATHS = frozenset(SETTINGS.values())


def _switch(path: str, value: Any) -> bool:
    _require(isinstance(value, bool), f"`{path}` must be true or false, not {value!r}")
    return bool(value)


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """Setting names (flat, or in a section's table) -> field paths, with each section's switch
    under the section's name; ``None`` values are left out (not given)."""
    flat: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        _require(path not in flat, f"`{path}` is given twice (flat and in its table?): give it once")
        flat[path] = _switch(path, value) if path in _SECTIONS else value

    for key, value in values.items():
        name = key.replace("-", "_")
        if name in _SECTIONS and isinstance(value, Mapping):
            enabled = value.get("enabled", True)
            _require(
                isinstance(enabled, bool),
                f"`{name}` (`enabled` in its table) must be true or false, not {enabled!r}",
            )
            put(name, enabled)
            for sub_key, sub_value in value.items():
                if sub_key != "enabled":
                    path = _table_path(name, key, sub_key)  # a typo is refused even when off
                    if enabled:  # `enabled = false` switches the table off, its keys with it
                        put(path, sub_value)
        elif name in SETTINGS or name in _PATHS:
            put(SETTINGS.get(name, name), value)
        else:
            raise ConfigError(
                f"unknown setting {key!r}: valid settings are "
                f"{', '.join(sorted(name.replace('_', '-') for name in SETTINGS))}"
            )
    return flat


def _table_path(section: str, table: str, key: str) -> str:
    """The field path of ``key`` in the ``[table]`` of ``section``: a field's name
    (``[secagg] bits``) or its flat setting name (``[secagg] secagg-bits``)."""
    name = key.replace("-", "_")
    names = [f.name for f in fields(_SECTIONS[section])]
    if name in names:
        return f"{section}.{name}"
    path = SETTINGS.get(name, "")
    if path.startswith(f"{section}."):
        return path
    valid = ["enabled", *(n.replace("_", "-") for n in names)]
    flat = sorted(s.replace("_", "-") for s in _SECTION_SETTINGS[section].values())
    also = f" (or the flat names {', '.join(flat)})" if flat else ""
    raise ConfigError(f"unknown key {key!r} in the [{table}] table: valid keys are {', '.join(valid)}{also}")


def _build(flat: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from :func:`_flatten`'s field paths."""
    top: dict[str, Any] = {}
    section_values: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    enabled: dict[str, bool | None] = {name: flat.get(name) for name in _SECTIONS}
    for path, value in flat.items():
        section, _, sub_key = path.partition(".")
        if not sub_key:
            if path not in _SECTIONS:
                top[path] = value
            continue
        if path in _SECTION_SWITCHES:
            if not _switch(path, value) and not enabled[section]:
                continue  # switching off a mode of a section that is off
            if value and enabled[section] is None:
                enabled[section] = True
        section_values[section][sub_key] = value
    sections: dict[str, Any] = {}
    for name, values in section_values.items():
        if values and not enabled[name]:
            knobs = ", ".join(f"`{name}.{key}`" for key in values)
            raise ConfigError(f"{knobs} given without `{name}`: set `{name}` or drop them")
        if enabled[name]:
            sections[name] = _SECTIONS[name](**values)
    return RunConfig(**top, **sections)


def _check_types(config: object) -> None:
    """Refuse a constructor argument of the wrong type, naming its field path: a TOML string where
    a number is expected would otherwise fail deep inside with a raw TypeError, and a float batch
    size would slip through every range check.  A NumPy number is welcome and stored as the
    built-in one (:func:`_accepts`)."""
    prefix = _PREFIXES.get(type(config), "")
    for name, annotation in _init_types(type(config)).items():
        value = getattr(config, name)
        accepted, converted = _accepts(value, annotation)
        if not accepted:
            raise ConfigError(f"`{prefix}{name}` must be {_describe(annotation)}, not {value!r}")
        if converted is not value:  # a NumPy number: the field holds the built-in one
            object.__setattr__(config, name, converted)
            value = converted
        if isinstance(value, int) and not isinstance(value, bool) and value >= INT_LIMIT:
            path = prefix + name
            raise ConfigError(f"`{path}` {value} >= 2**63: use a `{path}` below {INT_LIMIT}")


_INIT_TYPES: dict[type, dict[str, Any]] = {}


def _init_types(kind: type) -> dict[str, Any]:
    """The constructor parameters of ``kind`` and their types (computed once per class)."""
    if kind not in _INIT_TYPES:
        parameters = inspect.signature(kind, eval_str=True).parameters
        _INIT_TYPES[kind] = {name: parameter.annotation for name, parameter in parameters.items()}
    return _INIT_TYPES[kind]


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _members(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)


def _accepts(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits ``annotation``, and the value the field holds: an integer-like value
    (``operator.index``, e.g. ``np.int64``) as an ``int``, a real number (``numbers.Real``, e.g.
    ``np.float32``) as a ``float``; a bool is never a number, a string never one either."""
    for member in _members(annotation):
        if member is type(None):
            accepted = value is None
        elif member is bool:
            accepted = isinstance(value, bool)
        elif member is int:
            if type(value) is int:
                return True, value
            if not isinstance(value, bool):
                try:
                    return True, operator.index(value)
                except TypeError:
                    pass
            accepted = False
        elif member is float:
            if type(value) in (int, float):  # a huge int stays one: its range check names it
                return True, value
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                try:
                    return True, float(value)
                except (OverflowError, TypeError, ValueError):
                    pass
            accepted = False
        elif isinstance(member, type):
            accepted = isinstance(value, member)
        else:  # a type this check does not know: the class checks the value itself
            accepted = True
        if accepted:
            return True, value
    return False, value


def _describe(annotation: Any) -> str:
    members = _members(annotation)
    described = " or ".join(
        _SCALARS.get(m, f"a {getattr(m, '__name__', m)}") for m in members if m is not type(None)
    )
    return described + (" (or left out)" if type(None) in members else "")


__all__ = ["SETTINGS", "RunConfig", "DPConfig", "CentralDPConfig", "SecAggConfig"]
