"""Run configuration: frozen dataclasses validated on construction; TOML in, JSON out.

Every parameter is validated here, once, when the dataclass is built; the classes built from a
configuration keep only the invariants they need as a library.  A violated constraint raises
:class:`~securefl.errors.ConfigError` naming the parameter by its field path in backticks
(`` `lr` ``, `` `dp.delta` ``, `` `secagg.bits` ``); the CLI renders those paths as its flags
(:mod:`securefl.cli.flags`).

``lr``, ``batch_size``, ``local_epochs`` and ``momentum`` not given to :class:`RunConfig` (or
given as ``None``) take the data set's training defaults for the model
(:meth:`securefl.data.DatasetInfo.training_defaults`), resolved by the constructor: the fields
themselves are plain numbers, so a written configuration records the numbers the run used.

The keys of a TOML file are the setting names of :data:`SETTINGS` (``clients-per-round`` or
``clients_per_round``, the CLI's flags without the dashes); sections are optional: a flat file is
read the same as one with ``[dp]``, ``[central-dp]`` and ``[secagg]`` tables.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefl.errors import ConfigError

if TYPE_CHECKING:
    from securefl.data import TrainingDefaults

ALGORITHMS = ("fedavg", "fedsgd")
ACCOUNTANTS = ("rdp", "prv", "gdp")
CLIENT_SAMPLING = ("fixed", "poisson")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _require_finite(value: float, what: str, remedy: str) -> None:
    """Refuse NaN and ±inf before any comparison (``nan < 0`` and ``inf > 0`` would mislead)."""
    _require(math.isfinite(value), f"{what} {value} is not a finite number: {remedy}")


def _require_positive(value: float, what: str, path: str) -> None:
    remedy = f"use a positive `{path}`"
    _require_finite(value, what, remedy)
    _require(value > 0, f"{what} {value} <= 0: {remedy}")


def _require_non_negative(value: float, what: str, path: str) -> None:
    remedy = f"use `{path}` 0 or more"
    _require_finite(value, what, remedy)
    _require(value >= 0, f"{what} {value} < 0: {remedy}")


def _require_at_least(value: int, least: int, what: str, path: str) -> None:
    _require(value >= least, f"{what} {value} < {least}: use `{path}` {least} or more")


@dataclass(frozen=True)
class DPConfig:
    """Sample-level DP-SGD on every client through Opacus (`` `dp` ``)."""

    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation of every round's updates (`` `secagg` ``).

    ``max_colluders`` is how many clients may collude with the server; ``None`` takes the largest
    number the threshold tolerates
    (:attr:`~securefl.protocols.secagg.SecAggParams.colluders_tolerated`).
    """

    threshold: float | None = None
    neighbors: int | None = None
    bits: int = 32
    clip: float | None = None
    dropout_rate: float = 0.0
    active_adversary: bool = False
    max_colluders: int | None = None

    def __post_init__(self) -> None:
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
        if self.neighbors is not None:
            _require_at_least(self.neighbors, 1, "secagg neighbors", "secagg.neighbors")
        if self.max_colluders is not None:
            _require_at_least(self.max_colluders, 0, "secagg colluders", "secagg.max_colluders")

    def share_holders(self, clients: int) -> int:
        """Holders of each client's shares: its SecAgg+ neighbours and itself, or every client."""
        return clients if self.neighbors is None else min(self.neighbors + 1, clients)

    def threshold_count(self, clients: int) -> int:
        """The Shamir threshold for a round of ``clients``: a fraction in (0, 1) of the share
        holders, or a count >= 2; by default a strict majority of the share holders, and against
        an active server Bonawitz et al.'s ``floor(2h/3) + 1`` of the ``h`` share holders, which
        on the complete graph tolerates ``c < n/3`` colluders (``t > c`` and ``2t > n + c``).

        A threshold of 1 is refused: each share would be the secret itself, so the server and a
        single neighbour could unmask that client's update.
        """
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


def _training_defaults(dataset: str, model: str) -> TrainingDefaults:
    """The training defaults of ``model`` on ``dataset``, once both are known and fit each other."""
    from securefl.data import DATASETS
    from securefl.models import MODELS, check_model_fits

    _require(
        dataset in DATASETS,
        f"unknown dataset {dataset!r}: set `dataset` to one of "
        f"{', '.join(DATASETS)} (see `securefl datasets`)",
    )
    _require(model in MODELS, f"unknown model {model!r}: set `model` to one of {', '.join(MODELS)}")
    info = DATASETS[dataset]
    check_model_fits(model, input_shape=info.input_shape)
    return info.training_defaults(model)


# RunConfig's fields whose constructor argument may be left out for the data set's default.
_TRAINING_FIELDS = ("lr", "batch_size", "local_epochs", "momentum")


@dataclass(frozen=True, init=False)
class RunConfig:
    """Everything a federated run needs; validated on construction.

    The constructor's ``lr``, ``batch_size``, ``local_epochs`` and ``momentum`` may be left out
    (or ``None``): they then take the data set's training defaults for the model
    (:meth:`securefl.data.DatasetInfo.training_defaults`). The fields are always the resolved
    numbers: ``RunConfig(dataset="boston", model="mlp").lr`` is boston's learning rate. The
    constructor takes the fields in this order, with the defaults its signature gives.
    """

    dataset: str
    model: str
    clients: int
    clients_per_round: int | None
    fraction: float | None
    rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    partition: str
    alpha: float
    seed: int
    algorithm: str
    data_dir: str | None
    download: bool
    threads: int
    dp: DPConfig | None
    central_dp: CentralDPConfig | None
    secagg: SecAggConfig | None

    def __init__(
        self,
        dataset: str = "mnist-sample",
        model: str = "cnn",
        clients: int = 10,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        rounds: int = 10,
        local_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float = 0.0,
        partition: str = "iid",
        alpha: float = 0.5,
        seed: int = 0,
        algorithm: str = "fedavg",
        data_dir: str | None = None,
        download: bool = False,
        threads: int = 1,
        dp: DPConfig | None = None,
        central_dp: CentralDPConfig | None = None,
        secagg: SecAggConfig | None = None,
    ) -> None:
        given = dict(locals())  # first: exactly the arguments, one per field
        del given["self"]
        defaults = _training_defaults(dataset, model)
        for name in _TRAINING_FIELDS:
            if given[name] is None:
                given[name] = getattr(defaults, name)
        for name, value in given.items():
            object.__setattr__(self, name, value)
        self._validate()

    def _validate(self) -> None:
        from securefl.data import PARTITIONS

        _require(
            self.partition in PARTITIONS,
            f"unknown partition {self.partition!r}: set `partition` to one of {', '.join(PARTITIONS)}",
        )
        _require(
            self.algorithm in ALGORITHMS,
            f"unknown algorithm {self.algorithm!r}: set `algorithm` to one of {', '.join(ALGORITHMS)}",
        )
        _require_at_least(self.clients, 1, "clients", "clients")
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
        _require_at_least(self.local_epochs, 1, "local epochs", "local_epochs")
        _require_at_least(self.batch_size, 1, "batch size", "batch_size")
        _require_positive(self.lr, "learning rate", "lr")
        _require(0 <= self.momentum < 1, f"momentum {self.momentum} outside [0, 1): change `momentum`")
        _require_non_negative(self.weight_decay, "weight decay", "weight_decay")
        _require_positive(self.alpha, "alpha (the Dirichlet concentration, smaller = more skew)", "alpha")
        _require_at_least(self.seed, 0, "seed", "seed")
        _require_at_least(self.threads, 1, "threads", "threads")
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
            if self.secagg.neighbors is not None:
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

    @property
    def sampled_clients(self) -> int:
        """How many clients a round samples (the expected number under Poisson sampling)."""
        if self.clients_per_round is not None:
            return self.clients_per_round
        if self.fraction is not None:
            return max(1, round(self.fraction * self.clients))
        return self.clients

    # ---- serialisation -------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RunConfig:
        """Build from setting names (:data:`SETTINGS`), flat or in ``dp`` / ``central-dp`` /
        ``secagg`` tables.

        Sub-configurations are switched on by ``dp = true`` (etc.) or by having a table.
        """
        flat: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if isinstance(value, dict):
                flat[name] = bool(value.get("enabled", True))
                for sub_key, sub_value in value.items():
                    if sub_key != "enabled":
                        flat[f"{name}.{sub_key.replace('-', '_')}"] = sub_value
            else:
                flat[name] = value
        return _build(flat)

    @classmethod
    def from_toml(cls, path: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
        """Read ``path`` and apply ``overrides`` (the flags the user gave) on top."""
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
        merged = {key.replace("-", "_"): value for key, value in values.items()}
        merged.update({key.replace("-", "_"): value for key, value in (overrides or {}).items()})
        return cls.from_mapping(merged)


_SECTIONS = {"dp": DPConfig, "central_dp": CentralDPConfig, "secagg": SecAggConfig}
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
    },
}

SETTINGS: dict[str, str] = {
    **{f.name: f.name for f in fields(RunConfig)},
    **{
        _SECTION_SETTINGS[section].get(f.name, f.name): f"{section}.{f.name}"
        for section, kind in _SECTIONS.items()
        for f in fields(kind)
    },
}
"""Flat setting name (a TOML key, the CLI flag without its dashes) -> field path of
:class:`RunConfig`, e.g. ``secagg_bits`` -> ``secagg.bits``; a section's own name switches it on.
``central_dp.distributed`` (``distributed_dp``) switches ``central_dp`` on as well."""

# Settings that switch a section on and set one of its fields.
_SECTION_SWITCHES = {"distributed_dp": ("central_dp", "distributed")}


def _build(flat: dict[str, Any]) -> RunConfig:
    top: dict[str, Any] = {}
    section_values: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    given: dict[str, list[str]] = {name: [] for name in _SECTIONS}
    enabled = {name: bool(flat.get(name, False)) for name in _SECTIONS}
    for switch, (section, field) in _SECTION_SWITCHES.items():
        if flat.get(switch, False):
            enabled[section] = True
            section_values[section][field] = True
    for key, value in flat.items():
        if key in _SECTIONS or key in _SECTION_SWITCHES:
            continue
        path = key if key.partition(".")[0] in _SECTIONS else SETTINGS.get(key)
        if path is None:
            raise ConfigError(
                f"unknown setting {key.replace('_', '-')!r}: valid settings are "
                f"{', '.join(sorted(name.replace('_', '-') for name in SETTINGS))}"
            )
        section, _, sub_key = path.partition(".")
        if sub_key:
            section_values[section][sub_key] = value
            given[section].append(path)
        else:
            top[key] = value
    sections: dict[str, Any] = {}
    for name, values in section_values.items():
        if given[name] and not enabled[name]:
            knobs = ", ".join(f"`{path}`" for path in given[name])
            raise ConfigError(f"{knobs} given without `{name}`: set `{name}` or drop them")
        if enabled[name]:
            sections[name] = _construct(_SECTIONS[name], values, prefix=f"{name}.")
    return _construct(RunConfig, {**top, **sections})


def _construct(kind: type, values: dict[str, Any], prefix: str = "") -> Any:
    """``kind(**values)``, after checking each value against its constructor parameter's type (a
    TOML string where a number is expected would otherwise fail deep inside with a raw TypeError);
    ``prefix`` is the field path of ``kind`` inside :class:`RunConfig` (``"dp."``)."""
    parameters = inspect.signature(kind, eval_str=True).parameters
    for field_name, value in values.items():
        expected = parameters[field_name].annotation if field_name in parameters else None
        if expected is not None and not _accepts(value, expected):
            raise ConfigError(f"`{prefix}{field_name}` must be {_describe(expected)}, not {value!r}")
    try:
        return kind(**values)
    except TypeError as error:
        raise ConfigError(f"invalid settings for {kind.__name__}: {error}") from None


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _scalar_types(annotation: Any) -> list[Any] | None:
    """The scalar types (and None) of ``annotation``, or None if it is anything else."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else [annotation]
    if all(member in _SCALARS or member is type(None) for member in members):
        return list(members)
    return None


def _accepts(value: Any, annotation: Any) -> bool:
    members = _scalar_types(annotation)
    if members is None:  # paths, literals, ...: the class checks them itself
        return True
    for member in members:
        if member is type(None) and value is None:
            return True
        if member is bool and isinstance(value, bool):
            return True
        if member is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if member is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if member is str and isinstance(value, str | os.PathLike):
            return True
    return False


def _describe(annotation: Any) -> str:
    members = _scalar_types(annotation) or []
    described = " or ".join(_SCALARS[m] for m in members if m is not type(None))
    return described + (" (or left out)" if type(None) in members else "")


__all__ = ["SETTINGS", "RunConfig", "DPConfig", "CentralDPConfig", "SecAggConfig"]
