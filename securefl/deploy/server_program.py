"""The server of a deployed federation, as ``securefl server`` runs it: ``federation.toml`` in, the
rounds over gRPC with mutual TLS, the run directory of ``securefl train`` out.

:func:`serve` builds the server program from the configuration and the server's own held-out data
(:func:`securefl.federation.build_server`: no client data exists here), listens
(:class:`~securefl.transports.grpc_server.NetworkServer`: TLS 1.3, client certificates checked
against the enrolment list, a deadline on every protocol step), and before every round waits up
to ``join_timeout_seconds`` for ``min_clients`` connected clients that can train.  After every
round it checkpoints (:class:`~securefl.deploy.checkpoint.ServerCheckpoints`: the model, the
records, the user-level accountant, written atomically; a marker before each round's train
requests go out), so ``resume=True`` continues where a stopped server left off without spending
privacy twice.  When the rounds are done it ends every client's stream with the finished marker
(the clients exit), writes the run directory (:func:`securefl.fl.history.write_run`:
``metrics.jsonl``, ``status.json``, ``model.safetensors``, ``curves.png``, ``privacy.json``)
and removes the checkpoints, which the run directory supersedes.

What this process sees: each client's certificate and the bytes it sends -- under ``secagg`` only
masked vectors, key advertisements and sealed shares (Bonawitz et al., CCS 2017), the sum of the
survivors' updates and nothing else; without it each sampled client's update in clear.  What it
stores: the global model, the round records (counts, test metrics, traffic, ε), the user-level
accountant's ledger.  Under ``dp`` each client's DP-SGD ledger stays on that client's disk: the
server neither holds nor needs it (``privacy.json`` says so).

A stop (Ctrl-C, ``KeyboardInterrupt``) closes the streams without the finished marker: the clients
keep trying to reconnect, and the last checkpoint is there for ``resume``.  The fault hook of
:mod:`securefl.deploy.faults` strikes right after a round's checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from securefl.data import DATASETS, load_dataset
from securefl.data.datasets import DatasetInfo
from securefl.data.local import load_local_data
from securefl.deploy.checkpoint import ServerCheckpoints, check_resumable
from securefl.deploy.faults import fault_from_environment
from securefl.deploy.federation_file import FederationFile
from securefl.deploy.limits import federation_message_limit, weight_bound
from securefl.deploy.pki import Enrolment, TlsFiles
from securefl.errors import ClientsUnavailableError, ConfigError, OutputExistsError
from securefl.federation import build_model_for, build_server, divergence_message, measured_record
from securefl.fl.history import History, write_run
from securefl.fl.record import RoundRecord, RoundStatus
from securefl.fl.server import FederatedServer
from securefl.fl.vectors import load_vector
from securefl.transports.grpc_server import NetworkEvent, NetworkServer

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".checkpoint"
"""The checkpoint folder is the run directory's path with this suffix (``runs/x.checkpoint``)."""

WAIT_SLICE_SECONDS = 1.0
"""How often a wait for clients checks whether every enrolled client is already connected."""


@dataclass(frozen=True)
class WaitingForClients:
    """The server waits for ``needed`` connected clients that can train (``ready`` so far), at
    most ``timeout_seconds``, before round ``round_index``."""

    round_index: int
    ready: int
    needed: int
    timeout_seconds: float


@dataclass(frozen=True)
class RoundRecorded:
    """Round ``record.round`` is over and checkpointed; its record as ``metrics.jsonl`` has it."""

    record: RoundRecord


ServerEvent = NetworkEvent | WaitingForClients | RoundRecorded
"""What :func:`serve` reports as it goes (from the thread that called it)."""


def checkpoint_folder(out: Path) -> Path:
    """Where the server run writing ``out`` keeps its checkpoints until ``out`` is complete."""
    return out.with_name(out.name + CHECKPOINT_SUFFIX)


def serve(
    federation: FederationFile,
    *,
    out: Path,
    data: Path | None = None,
    resume: bool = False,
    insecure: bool = False,
    on_event: Callable[[ServerEvent], None] | None = None,
) -> History:
    """Run the federation's rounds as its server and write the run directory ``out``.

    ``data`` is the server's held-out test data (any format of
    :func:`~securefl.data.local.load_local_data`; default: the registered data set's test split);
    ``insecure`` (the command line's ``--insecure``) serves plain text, on loopback only.  Bad input -- an
    ``out`` that is not empty, a checkpoint left by an unfinished run without ``resume`` (or none with
    it), unreadable certificates or data, a port in use -- raises a :class:`ConfigError` before any client
    is served.  When a round cannot run after the join timeout because enrolled clients are missing,
    :class:`~securefl.errors.ClientsUnavailableError` (the checkpoint stays); when every enrolled client
    is there and too few can train (their budgets are spent), the run stops early and its directory says
    so."""
    config = federation.run
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(
            f"{out} already holds a finished run: nothing to resume"
            if resume
            else f"{out} is not empty: choose another `out` for this run"
        )
    checkpoints = ServerCheckpoints(checkpoint_folder(out), fingerprint=federation.fingerprint())
    if not resume and checkpoints.directory.exists():
        raise ConfigError(
            f"{checkpoints.directory} holds the checkpoint of an unfinished run: continue it with "
            "`--resume`, or choose another `out`"
        )
    torch.set_num_threads(config.threads)
    info = DATASETS[config.dataset]
    test_x, test_y = _held_out(federation, info, data)
    enrolment = Enrolment.load(federation.path("enrolment"))
    active = config.secagg is not None and config.secagg.active_adversary
    server = build_server(
        config,
        info=info,
        test_x=test_x,
        test_y=test_y,
        max_client_samples=weight_bound(federation),
        verify_keys=enrolment.verify_keys() if active else None,
    )
    check_resumable(server)
    history = History(config=config, records=checkpoints.resume(server) if resume else [])
    plain_text = federation.plain_text(insecure)
    network = NetworkServer(
        federation.address,
        credentials=None
        if plain_text
        else TlsFiles(federation.path("server_cert"), federation.path("server_key"), federation.path("ca")),
        enrolment=enrolment,
        max_message_bytes=federation_message_limit(
            config, server.aggregation, num_params=server.params.numel()
        ),
        step_deadline=federation.step_deadline_seconds,
        on_event=on_event,
    )
    network.start()
    try:
        final = _run_rounds(network, server, federation, history, checkpoints, on_event or _ignore)
        network.finish()
    finally:
        network.close()
    _complete(history, server, final, info)
    write_run(history, out, overwrite=False)
    shutil.rmtree(checkpoints.directory, ignore_errors=True)  # the run directory supersedes it
    return history


def _ignore(event: ServerEvent) -> None:
    """No one listens to the server's events."""


def _run_rounds(
    network: NetworkServer,
    server: FederatedServer,
    federation: FederationFile,
    history: History,
    checkpoints: ServerCheckpoints,
    emit: Callable[[ServerEvent], None],
) -> torch.Tensor:
    """The rounds left, each checkpointed and appended to ``history``; the final model (the last
    finite one if the run diverged)."""
    config = federation.run
    fault = fault_from_environment()
    final = server.params
    while server.round_index < config.rounds:
        round_index = server.round_index + 1
        ready = _wait_for_clients(network, server, federation, round_index, emit)
        needed = server.aggregation.fewest_clients
        if ready < needed:
            missing = len(network.enrolment.ids - network.connected)
            if missing:  # an interruption: the checkpoint stays for --resume
                raise ClientsUnavailableError(
                    f"only {ready} connected client(s) could train in round {round_index} after "
                    f"waiting {federation.join_timeout_seconds:g}s (`federation.join_timeout_seconds`), "
                    f"a round needs {needed}, and {missing} enrolled client(s) are not connected: "
                    "start them, then resume the server"
                )
            history.stopped_early = (
                f"only {ready} client(s) can still train in round {round_index}, and a round of "
                f"this aggregation needs {needed}: every other client's privacy budget is spent"
            )
            log.info(history.stopped_early)
            return final
        checkpoints.open_round(round_index)
        started, before = time.perf_counter(), server.params
        traffic = network.run_round(server)
        record = measured_record(
            server.records[-1],
            traffic,
            seconds=time.perf_counter() - started,
            model_bytes=server.params.numel() * server.params.element_size(),
        )
        history.records.append(record)
        checkpoints.save(server, history.records)
        emit(RoundRecorded(record))
        if fault is not None:
            fault.strike(round_index)
        if record.status is RoundStatus.DIVERGED:
            history.diverged = divergence_message(record, config)
            log.info(history.diverged)
            return before  # the last finite model
        final = server.params
    return final


def _held_out(
    federation: FederationFile, info: DatasetInfo, data: Path | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's test data: from ``data``, or the registered data set's test split."""
    if data is not None:
        return load_local_data(
            data, input_shape=info.input_shape, num_outputs=info.num_outputs, task=info.task
        )
    config = federation.run
    dataset = load_dataset(
        config.dataset, data_dir=config.data_dir, download=config.download, seed=config.seed
    )
    return dataset.test_x, dataset.test_y


def _wait_for_clients(
    network: NetworkServer,
    server: FederatedServer,
    federation: FederationFile,
    round_index: int,
    emit: Callable[[ServerEvent], None],
) -> int:
    """Wait until ``min_clients`` connected clients can train, the join timeout passes, or every
    enrolled client is connected (nobody else can come); how many can train."""
    needed = federation.min_clients
    assert needed is not None  # FederationFile resolves it
    timeout = federation.join_timeout_seconds
    deadline = time.monotonic() + timeout
    ready = network.wait_for_clients(server, needed, 0)
    emit(WaitingForClients(round_index, ready, needed, timeout))
    while ready < needed:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or len(network.connected) >= len(network.enrolment.ids):
            break
        ready = network.wait_for_clients(server, needed, min(WAIT_SLICE_SECONDS, remaining))
    return ready


def _complete(history: History, server: FederatedServer, final: torch.Tensor, info: DatasetInfo) -> None:
    """The history's model (the last finite global model) and privacy report."""
    model = build_model_for(history.config, info)
    load_vector(model.parameters(), final)
    history.model = model
    privacy: dict = {}
    if history.config.dp is not None:
        privacy["sample_level"] = {
            "mechanism": "DP-SGD (Opacus) on every client, Poisson-sampled batches, per-example clipping",
            "ledgers": "each client keeps its own privacy ledger on its own disk (securefl client "
            "--ledger) and refuses to train past its budget; the server never holds them",
        }
    for accountant in server.accountants:
        privacy.update(accountant.ledger())
    history.privacy = privacy or None


__all__ = [
    "CHECKPOINT_SUFFIX",
    "RoundRecorded",
    "ServerEvent",
    "WaitingForClients",
    "checkpoint_folder",
    "serve",
]
