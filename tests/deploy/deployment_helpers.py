"""Set-up and references for the tests of the deployed programs (``test_programs.py``).

A test's federation: a ``federation.toml`` naming the module's PKI (absolute paths) and its own
copy of the enrolment list, each client's shard of the simulation's partition as a ``.npz``, and a
free loopback port.  The reference is the same federation in this process
(:class:`~securefl.transports.inprocess.InProcessTransport`), with the same clients joined and
the same dropouts as :class:`~securefl.fl.turns.Faults`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from securefl.cli.demo import Processes, client_command, free_port, server_command
from securefl.config import RunConfig
from securefl.data.local import save_shard_npz
from securefl.deploy.federation_file import FILE_NAME, FederationFile
from securefl.deploy.pki import Enrolment, Pki, write_enrolment
from securefl.federation import build_federation, build_programs
from securefl.fl.record import RoundRecord
from securefl.fl.turns import NO_FAULTS, Faults
from securefl.fl.vectors import load_vector
from securefl.transports.inprocess import InProcessTransport

PROCESS_TIMEOUT = 300.0
"""Seconds a server or client process may take (start-up of several processes on 2 busy cores)."""


def write_federation(
    directory: Path,
    pki: Pki,
    run: RunConfig,
    *,
    enrolled: Collection[int],
    step_deadline: float,
    min_clients: int | None = None,
) -> Path:
    """A federation of ``run`` in ``directory`` (new): the PKI's certificates, an enrolment list
    of ``enrolled`` only, one ``client-<i>.npz`` shard per client; its ``federation.toml``."""
    directory.mkdir()
    entries = Enrolment.load(pki.enrolment).clients
    write_enrolment(directory / "enrolment.json", {c: e for c, e in entries.items() if c in enrolled})
    shards = build_federation(run).shards
    for shard in shards:
        save_shard_npz(shard_path(directory, shard.client_id), shard.x, shard.y)
    spec = FederationFile(
        run=run,
        address=f"127.0.0.1:{free_port()}",
        step_deadline_seconds=step_deadline,
        join_timeout_seconds=PROCESS_TIMEOUT,
        min_clients=min_clients,
        max_client_samples=max(len(shard) for shard in shards),
        ca=str(pki.ca_certificate),
        server_cert=str(pki.server.certificate),
        server_key=str(pki.server.private_key),
        enrolment="enrolment.json",
        directory=directory,
    )
    spec.write(directory / FILE_NAME)
    return directory / FILE_NAME


def shard_path(directory: Path, client_id: int) -> Path:
    return directory / f"client-{client_id}.npz"


def start_server(
    processes: Processes, toml: Path, *, resume: bool = False, environment: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``securefl server`` of ``toml``, writing ``run/`` beside its folder (log: ``server.log``,
    ``resumed.log``)."""
    log = toml.parent.parent / ("resumed.log" if resume else "server.log")
    command = server_command(toml, out=toml.parent.parent / "run", resume=resume)
    return processes.start(command, log=log, environment=environment)


def start_clients(
    processes: Processes,
    toml: Path,
    pki: Pki,
    clients: Collection[int],
    *,
    environment: Callable[[int], Mapping[str, str] | None] = lambda client_id: None,
    ledgers: bool = False,
) -> dict[int, subprocess.Popen[bytes]]:
    """``securefl client`` for each of ``clients``, with its PKI identity and its shard (and its
    ledger ``ledger-<i>.json`` beside the federation's folder)."""
    where = toml.parent
    return {
        i: processes.start(
            client_command(
                toml,
                identity=pki.clients[i].certificate.parent,
                data=shard_path(where, i),
                ledger=where.parent / f"ledger-{i}.json" if ledgers else None,
            ),
            log=where.parent / f"client-{i}.log",
            environment=environment(i),
        )
        for i in clients
    }


def wait_until_listening(toml: Path, timeout: float = PROCESS_TIMEOUT) -> None:
    """Return once something accepts TCP connections at the federation's address."""
    spec = FederationFile.load(toml)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((spec.host, spec.port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {spec.address} after {timeout:g}s") from None
            time.sleep(0.2)


def reference_run(
    run: RunConfig, *, joined: Collection[int], faults: Mapping[int, Faults]
) -> tuple[dict[str, torch.Tensor], list[RoundRecord]]:
    """The final weights and the records of ``run`` in this process, with only ``joined``
    clients enrolled and ``faults[round]`` the crashes of that round; with ``run.threads`` torch
    threads, as the programs train and evaluate (other counts round differently)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(run.threads)
    try:
        return _reference_run(run, joined=joined, faults=faults)
    finally:
        torch.set_num_threads(threads)


def _reference_run(
    run: RunConfig, *, joined: Collection[int], faults: Mapping[int, Faults]
) -> tuple[dict[str, torch.Tensor], list[RoundRecord]]:
    federation = build_federation(run)
    programs = build_programs(federation)
    server = programs.server
    for client_id in sorted(joined):
        server.receive(client_id, programs.clients[client_id].join())
    transport = InProcessTransport(faults_for=lambda round_index, _: faults.get(round_index, NO_FAULTS))
    for _ in range(run.rounds):
        transport.run_round(server, programs.clients)
    load_vector(federation.eval_model.parameters(), server.params)
    return federation.eval_model.state_dict(), list(server.records)


def run_directory(out: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The weights and the ``metrics.jsonl`` rows a server wrote to ``out``."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return load_file(str(out / "model.safetensors")), rows


def same_weights(got: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> bool:
    """Bit for bit, tensor by tensor."""
    return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
