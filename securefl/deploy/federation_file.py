"""``federation.toml``: one file that describes a federation to the server and to every client.

Two tables::

    [run]                        # exactly the keys of `securefl train --config` (RunConfig)
    dataset = "mnist-sample"
    model = "cnn"
    clients = 5
    rounds = 10
    [run.secagg]
    bits = 32

    [federation]
    address = "127.0.0.1:50051"  # host:port the server listens on and the clients dial ([::1]:port)
    step_deadline_seconds = 60.0 # a client silent past a step's deadline is a dropout of the round
    join_timeout_seconds = 600.0 # how long the server waits for min_clients to join
    min_clients = 5              # eligible clients a round waits for (default: clients per round)
    max_client_samples = 4000    # FedAvg's weight bound under secure aggregation (below)
    ca = "ca/ca.pem"             # the federation's CA, relative to this file's folder
    server_cert = "server/cert.pem"
    server_key = "server/key.pem"
    enrolment = "enrolment.json" # the enrolled clients' identities
    insecure = false             # true: plain-text gRPC, no certificates (loopback tests only)

``[run]`` is parsed by :meth:`RunConfig.from_mapping <securefl.config.RunConfig.from_mapping>`, the
parser of ``securefl train``'s TOML files; its errors name the setting as ``run.<field>``.
``[federation]`` is checked here, each error naming ``federation.<key>``.

``max_client_samples`` is the public bound ``w_max`` on a FedAvg client's weight (its sample
count) under secure aggregation: every coordinate of the masked vector is sized from it
(:meth:`SecureAggregationChannel.codec_for <securefl.fl.secure_channel.SecureAggregationChannel.codec_for>`).
A simulation takes the largest shard; in a deployment the server never sees the shards, so the
bound is configured here, and a client whose data is larger refuses to send a larger weight.
Under DP-FedAvg every client sends weight 1 and the bound is not used.

:meth:`FederationFile.fingerprint` hashes what decides a run's results (the resolved ``[run]``
settings, ``min_clients``, ``max_client_samples``): a server checkpoint records it, and
``--resume`` refuses a checkpoint of another federation (:mod:`securefl.deploy.checkpoint`).
Addresses, deadlines, certificate paths and ``insecure`` are operational and may change between
a stop and a resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefl.atomic import write_atomically
from securefl.config import SETTINGS, RunConfig
from securefl.errors import ConfigError
from securefl.fl.quantize import level_for
from securefl.validation import require, require_at_least, require_positive

FILE_NAME = "federation.toml"
"""The name ``securefl federation init`` gives the file."""

PATH_KEYS = ("ca", "server_cert", "server_key", "enrolment")
"""The keys that name files, relative to the folder of ``federation.toml``."""

_MAX_PORT = 65_535
_ADDRESS = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class FederationFile:
    """A federation: the run both programs agree on, where the server listens, its deadlines and
    its certificates.  Validated on construction; :meth:`load` and :meth:`write` read and write
    ``federation.toml`` (atomically).

    ``directory`` is the folder the certificate paths are relative to (the TOML file's own folder
    when loaded); it is not written to the file.  ``min_clients`` ``None`` means the clients per
    round of ``run``.
    """

    run: RunConfig
    address: str
    step_deadline_seconds: float = 60.0
    join_timeout_seconds: float = 600.0
    min_clients: int | None = None
    max_client_samples: int | None = None
    ca: str | None = None
    server_cert: str | None = None
    server_key: str | None = None
    enrolment: str | None = None
    insecure: bool = False
    directory: Path = Path(".")

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "directory", Path(self.directory))
        if self.min_clients is None:
            object.__setattr__(self, "min_clients", self.run.sampled_clients)
        _check_address(self.address)
        for key in ("step_deadline_seconds", "join_timeout_seconds"):
            require_positive(getattr(self, key), key.replace("_", " "), f"federation.{key}")
        self._check_min_clients()
        self._check_max_client_samples()
        if not self.insecure:
            missing = [f"`federation.{key}`" for key in PATH_KEYS if getattr(self, key) is None]
            require(
                not missing,
                f"{', '.join(missing)} not given: mutual TLS needs the federation's CA, the server's "
                "certificate and key and the enrolment list (`securefl federation init` writes them), "
                "or set `federation.insecure` true for a plain-text test on loopback",
            )
        for key in PATH_KEYS:
            value = getattr(self, key)
            require(
                value is None or value.strip() != "",
                f"`federation.{key}` is empty: give a path relative to the folder of {FILE_NAME}",
            )

    def _check_min_clients(self) -> None:
        assert self.min_clients is not None  # resolved in __post_init__
        require_at_least(self.min_clients, 1, "min clients", "federation.min_clients")
        require(
            self.min_clients <= self.run.clients,
            f"min clients {self.min_clients} > the federation's {self.run.clients} clients "
            f"(`run.clients`): lower `federation.min_clients`",
        )
        require(
            self.run.secagg is None or self.min_clients >= 2,
            "secure aggregation needs rounds of at least 2 clients: use `federation.min_clients` 2 or more",
        )

    def _check_max_client_samples(self) -> None:
        bound = self.max_client_samples
        if bound is not None:
            require_at_least(bound, 1, "max client samples", "federation.max_client_samples")
        if not self.weight_bound_used:
            return
        require(
            bound is not None,
            "`federation.max_client_samples` is not given: under `secagg` a FedAvg client's weight (its "
            "sample count) is bounded by a public number the masked vector is sized for; set it to "
            "the most samples any client trains on",
        )
        assert bound is not None and self.run.secagg is not None
        most = self.run.clients if _poisson(self.run) else self.run.sampled_clients
        level = level_for(bits=self.run.secagg.bits, num_clients=most)
        require(
            bound <= level,
            f"max client samples {bound} > the {level} levels a {self.run.secagg.bits}-bit ring leaves "
            f"each of {most} clients: lower `federation.max_client_samples` or raise `run.secagg.bits`",
        )

    # ---- what the programs read --------------------------------------------------------------

    @property
    def weight_bound_used(self) -> bool:
        """Whether ``max_client_samples`` bounds the clients' weights: secure aggregation of FedAvg
        weights (DP-FedAvg clients send weight 1)."""
        return self.run.secagg is not None and self.run.central_dp is None

    @property
    def host(self) -> str:
        """The host part of :attr:`address` (an IPv6 address without its brackets)."""
        return _check_address(self.address)[0]

    def plain_text(self, insecure_flag: bool) -> bool:
        """Whether a program talks plain text: only when its own command line says
        ``--insecure`` (``insecure_flag``) -- this file is handed to every client, so a line in it
        must not switch a data owner's TLS off -- and only on a loopback address.  A file without
        certificates (``federation.insecure``) is refused without the flag."""
        if not insecure_flag:
            require(
                not self.insecure,
                "this federation.toml sets `federation.insecure` (no certificates): plain text needs "
                "--insecure on this program's own command line, for a loopback test; for a real "
                "federation run `securefl federation init`, which writes the certificates",
            )
            return False
        host = self.host
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        require(
            loopback,
            f"--insecure talks plain text, which is for loopback tests only; {host} (`federation.address`) "
            "is not a loopback address: drop --insecure and use the federation's certificates",
        )
        return True

    @property
    def port(self) -> int:
        return _check_address(self.address)[1]

    def path(self, key: str) -> Path:
        """The file named by ``key`` (one of :data:`PATH_KEYS`), resolved against :attr:`directory`."""
        if key not in PATH_KEYS:
            raise KeyError(f"{key!r} is not one of {', '.join(PATH_KEYS)}")
        value = getattr(self, key)
        if value is None:
            raise ConfigError(f"`federation.{key}` is not given in {self.directory / FILE_NAME}")
        return self.directory / value

    def fingerprint(self) -> str:
        """SHA-256 (hex) of what decides the run's results: the resolved ``[run]`` settings (the
        numbers :meth:`RunConfig.to_dict` records, so a default written out hashes as the default),
        ``min_clients`` and ``max_client_samples``."""
        decisive = {
            "run": self.run.to_dict(),
            "min_clients": self.min_clients,
            "max_client_samples": self.max_client_samples,
        }
        text = json.dumps(decisive, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # ---- the file ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> FederationFile:
        """Read and validate ``path``; every error is a :class:`ConfigError` naming the file and the
        setting (``run.<field>`` or ``federation.<key>``)."""
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"federation file {path} does not exist: create one with `securefl federation init`"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read federation file {path}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"federation file {path} is not valid TOML: {error}") from None
        try:
            return cls.from_mapping(values, directory=path.parent)
        except ConfigError as error:
            raise type(error)(f"{path}: {error}") from None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, directory: Path) -> FederationFile:
        """Build from the two tables of a parsed ``federation.toml``."""
        unknown = sorted(set(values) - {"run", "federation"})
        require(
            not unknown,
            f"unknown table or key {', '.join(map(repr, unknown))}: {FILE_NAME} has a [run] and a "
            "[federation] table",
        )
        for table in ("run", "federation"):
            require(table in values, f"the [{table}] table is missing")
            require(isinstance(values[table], Mapping), f"`{table}` must be a table ([{table}]), not a value")
        try:
            run = RunConfig.from_mapping(values["run"])
        except ConfigError as error:
            raise type(error)(f"[run]: {in_run_terms(str(error))}") from None
        settings: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls) if f.name not in ("run", "directory")}
        for key, value in values["federation"].items():
            name = key.replace("-", "_")
            require(
                name in names,
                f"unknown key {key!r} in the [federation] table: valid keys are {', '.join(sorted(names))}",
            )
            require(name not in settings, f"`federation.{name}` is given twice: give it once")
            settings[name] = value
        require("address" in settings, "`federation.address` is missing: give the server's host:port")
        return cls(run=run, directory=directory, **settings)

    def to_toml(self) -> str:
        """The file's text: ``[run]`` with every setting the run uses (training numbers resolved),
        then ``[federation]``; what :meth:`load` reads back to an equal federation."""
        run = {key: value for key, value in self.run.to_dict().items() if value is not None}
        sections = {key: run.pop(key) for key in list(run) if isinstance(run[key], dict)}
        lines = ["[run]", *_toml_pairs(run)]
        for name, table in sections.items():
            lines += ["", f"[run.{name}]", *_toml_pairs({k: v for k, v in table.items() if v is not None})]
        federation = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("run", "directory") and getattr(self, f.name) is not None
        }
        lines += ["", "[federation]", *_toml_pairs(federation)]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Write :meth:`to_toml` to ``path`` atomically (the previous file stays whole until the
        new one is complete)."""
        write_atomically(Path(path), self.to_toml().encode("utf-8"))


def in_run_terms(message: str) -> str:
    """``message`` (a :class:`RunConfig` error) with each backticked field path named as the
    ``[run]`` table's key, `` `lr` `` -> `` `run.lr` ``: in a federation file there are no flags."""
    paths = frozenset(SETTINGS.values())
    return re.sub(
        r"`([A-Za-z_][A-Za-z0-9_.]*)`",
        lambda match: f"`run.{match.group(1)}`" if match.group(1) in paths else match.group(0),
        message,
    )


def _poisson(run: RunConfig) -> bool:
    return run.central_dp is not None and run.central_dp.client_sampling == "poisson"


def _check_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` or ``[ipv6]:port``, or :class:`ConfigError`."""
    match = _ADDRESS.match(address)
    require(
        match is not None,
        f"address {address!r} is not host:port: set `federation.address`, e.g. 127.0.0.1:50051 "
        "or [::1]:50051",
    )
    assert match is not None
    port = int(match.group("port"))
    require(
        1 <= port <= _MAX_PORT,
        f"port {port} of address {address!r} is outside 1..{_MAX_PORT}: change `federation.address`",
    )
    return match.group("ipv6") or match.group("host"), port


_TYPES: dict[str, tuple[type, ...]] = {
    "address": (str,),
    "step_deadline_seconds": (int, float),
    "join_timeout_seconds": (int, float),
    "min_clients": (int,),
    "max_client_samples": (int,),
    "ca": (str,),
    "server_cert": (str,),
    "server_key": (str,),
    "enrolment": (str,),
    "insecure": (bool,),
}
_DESCRIBED = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check_types(federation: FederationFile) -> None:
    """Refuse a value of the wrong type, naming its key (a bool is never a number)."""
    require(isinstance(federation.run, RunConfig), f"`run` must be a RunConfig, not {type(federation.run)}")
    for key, kinds in _TYPES.items():
        value = getattr(federation, key)
        if value is None and key not in ("address", "insecure"):
            continue
        numeric = not isinstance(value, bool) or bool in kinds
        require(
            isinstance(value, kinds) and numeric,
            f"`federation.{key}` must be {_DESCRIBED[kinds[-1]]}, not {value!r}",
        )
    for key in ("step_deadline_seconds", "join_timeout_seconds"):
        value = getattr(federation, key)
        object.__setattr__(federation, key, float(value))


def _toml_pairs(values: Mapping[str, Any]) -> list[str]:
    return [f"{key} = {_toml_value(value)}" for key, value in values.items()]


def _toml_value(value: Any) -> str:
    """A TOML scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(char) for char in value) + '"'
    raise TypeError(f"no TOML form for {value!r}")


def _toml_char(char: str) -> str:
    """One character of a TOML basic string: quote, backslash and control characters (U+0000 to
    U+001F and U+007F, which TOML forbids unescaped) escaped."""
    if char in ('"', "\\"):
        return "\\" + char
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04X}"
    return char


__all__ = ["FILE_NAME", "PATH_KEYS", "FederationFile", "in_run_terms"]
