"""One client of a deployed federation, as ``securefl client`` runs it on the data owner's machine.

:func:`prepare_client` builds the client program (:class:`~securefl.fl.client.FederatedClient`)
from three things the owner holds, none of which comes from the server:

- ``federation.toml`` (the run both sides agree on) and the enrolment list beside it (public: the
  clients' certificate fingerprints and Ed25519 verify keys, which secure aggregation against an
  active server checks signatures with);
- the client's identity directory from ``securefl federation init`` (``client-<i>/``: its TLS
  certificate and key, the federation CA, its Ed25519 signing key): who it is;
- its own data, read from a local path (:func:`securefl.data.local.load_local_data`).

:func:`run_prepared_client` serves that program to the server over gRPC with mutual TLS
(:func:`securefl.transports.grpc_client.run_client`: reconnects with backoff, rejoins, returns
when the federation has finished, raises :class:`~securefl.errors.AccessRefusedError` when either
side refuses the other).

Under ``dp`` the client's privacy ledger (Abadi et al., CCS 2016; Opacus' accountant) lives on its
own disk, in :data:`DEFAULT_LEDGER_FILE` inside the identity directory unless told otherwise: read
at start (a ledger never goes backwards: :meth:`DPSGDTrainer.import_ledger
<securefl.privacy.dp_client.DPSGDTrainer.import_ledger>`), and rewritten atomically after every
round it trains and *before* that round's update leaves (``run_client``'s ``before_send``), so a
crash at any instant never loses spent budget.  The client refuses to train past its budget
whatever the server asks (:class:`~securefl.fl.client.FederatedClient` checks its trainer first).

The fault hook of :mod:`securefl.deploy.faults` counts the batches of replies this client sends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from securefl.atomic import write_atomically
from securefl.data import DATASETS
from securefl.data.local import load_local_data
from securefl.deploy.faults import fault_from_environment
from securefl.deploy.federation_file import FederationFile
from securefl.deploy.limits import federation_message_limit, weight_bound
from securefl.deploy.pki import Enrolment, Identity, load_identity
from securefl.errors import ConfigError
from securefl.federation import ClientFactory
from securefl.fl.client import ClientMemory, FederatedClient
from securefl.fl.types import ClientShard
from securefl.transports.grpc_client import Backoff, ClientTls, run_client

if TYPE_CHECKING:
    from securefl.privacy import DPSGDTrainer

log = logging.getLogger(__name__)

DEFAULT_LEDGER_FILE = "privacy-ledger.json"
"""The privacy ledger's file in the identity directory, unless ``securefl client --ledger``."""


@dataclass(frozen=True)
class PreparedClient:
    """A client program ready to connect: who it is, where it dials, and its ledger's file."""

    federation: FederationFile
    identity: Identity
    client: FederatedClient
    tls: ClientTls | None
    max_message_bytes: int
    ledger: Path | None
    """The privacy ledger's file (``None`` without ``dp``)."""


def prepare_client(
    federation: FederationFile,
    *,
    identity: Path,
    data: Path,
    ledger: Path | None = None,
    insecure: bool = False,
) -> PreparedClient:
    """Build client ``identity``'s program on its data at ``data``; under ``dp`` load its ledger
    from ``ledger`` (default: :data:`DEFAULT_LEDGER_FILE` in the identity directory) when the
    file exists.  ``insecure`` (the command line's ``--insecure``) talks plain text, on loopback only
    (:meth:`~securefl.deploy.federation_file.FederationFile.plain_text`).  Every problem is a
    :class:`~securefl.errors.ConfigError` saying what to fix, raised before anything connects."""
    config = federation.run
    me = load_identity(identity)
    if me.client_id is None:
        raise ConfigError(
            f"{identity} is the identity of {me.name!r}, not of a client: give a client-<i> directory"
        )
    if me.client_id >= config.clients:
        raise ConfigError(
            f"{identity} is client {me.client_id}, but the federation has clients 0..{config.clients - 1} "
            "(`run.clients`): use an identity of this federation"
        )
    torch.set_num_threads(config.threads)
    info = DATASETS[config.dataset]
    x, y = load_local_data(data, input_shape=info.input_shape, num_outputs=info.num_outputs, task=info.task)
    shard = ClientShard(client_id=me.client_id, x=x, y=y)
    bound = weight_bound(federation)
    if federation.weight_bound_used and len(shard) > bound:
        log.warning(
            "client %d holds %d examples, more than `federation.max_client_samples` %d: its FedAvg "
            "weight is capped at %d",
            me.client_id,
            len(shard),
            bound,
            bound,
        )
    active = config.secagg is not None and config.secagg.active_adversary
    verify_keys = Enrolment.load(federation.path("enrolment")).verify_keys() if active else None
    factory = ClientFactory(config, info=info, max_client_samples=bound, verify_keys=verify_keys)
    trainer = factory.trainer(shard)
    ledger_file = None
    memory = None
    if config.dp is not None:
        ledger_file = Path(ledger) if ledger is not None else me.certificate.parent / DEFAULT_LEDGER_FILE
        memory = _load_ledger(_dp_trainer(trainer), me.client_id, ledger_file)
    client = factory.client(
        shard, signing_key=me.load_signing_key() if active else None, trainer=trainer, memory=memory
    )
    num_params = sum(p.numel() for p in factory.architecture.parameters())
    return PreparedClient(
        federation=federation,
        identity=me,
        client=client,
        tls=None if federation.plain_text(insecure) else me.tls,
        max_message_bytes=federation_message_limit(config, factory.aggregation, num_params=num_params),
        ledger=ledger_file,
    )


def run_prepared_client(
    prepared: PreparedClient, *, backoff: Backoff | None = None, stop: threading.Event | None = None
) -> None:
    """Serve ``prepared`` to the federation's server until the federation finishes (or ``stop``);
    ``backoff`` paces the reconnections (default :class:`Backoff`'s)."""
    run_client(
        prepared.client,
        address=prepared.federation.address,
        tls=prepared.tls,
        max_message_bytes=prepared.max_message_bytes,
        backoff=backoff or Backoff(),
        stop=stop,
        before_send=_before_send(prepared),
    )


def spent_epsilon(prepared: PreparedClient) -> float | None:
    """The ε this client's privacy ledger says it has spent (``None`` without ``dp``)."""
    if prepared.ledger is None:
        return None
    return _trainer_of(prepared.client).epsilon(prepared.client.client_id)


def _before_send(prepared: PreparedClient) -> Callable[[], None]:
    """What runs before each batch of replies leaves: the ledger to disk when it changed (after a
    round's training), then the fault hook."""
    fault = fault_from_environment()
    sent = 0
    written: bytes | None = None

    def before_send() -> None:
        nonlocal sent, written
        if prepared.ledger is not None:
            ledger = _trainer_of(prepared.client).export_ledger()
            if ledger != written:
                write_atomically(prepared.ledger, ledger)
                written = ledger
        sent += 1
        if fault is not None:
            fault.strike(sent)

    return before_send


def _load_ledger(trainer: DPSGDTrainer, client_id: int, path: Path) -> ClientMemory | None:
    """Load the ledger at ``path`` into ``trainer``; what the client remembers from it: the last
    round it trained (a replay of that round or an earlier one is refused before training)."""
    if not path.exists():
        log.info("client %d starts a new privacy ledger at %s", client_id, path)
        return None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the privacy ledger {path}: {error.strerror}") from None
    trainer.import_ledger(data)
    log.info("client %d continues its privacy ledger %s", client_id, path)
    rounds = trainer.privacy_ledger[client_id].rounds
    return ClientMemory(last_round=max(rounds), aggregation_guard=None) if rounds else None


def _trainer_of(client: FederatedClient) -> DPSGDTrainer:
    return _dp_trainer(client.trainer)


def _dp_trainer(trainer: object) -> DPSGDTrainer:
    from securefl.privacy import DPSGDTrainer  # Opacus only under DP

    if not isinstance(trainer, DPSGDTrainer):
        raise TypeError(f"a DP client trains with DPSGDTrainer, not {type(trainer).__name__}")
    return trainer


__all__ = ["DEFAULT_LEDGER_FILE", "PreparedClient", "prepare_client", "run_prepared_client", "spent_epsilon"]
