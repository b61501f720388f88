"""``securefl demo network``: a whole federation on this machine, one command.

It does what a federation operator and its data owners would do on separate machines: creates a
federation in a temporary folder (``securefl federation init --dp --secagg``: a CA, certificates,
the enrolment list, ``federation.toml``), gives each client its shard of ``mnist-sample`` -- the
simulation's partition, written as a ``.npz`` file the client reads like any local data -- then
starts ``securefl server`` and one ``securefl client`` process per client on 127.0.0.1 (a free
port), waits for them, and prints where the results went.  Every process it starts runs in its
own process group and is stopped on the way out, also on Ctrl-C or a failure: SIGTERM (the
server then keeps its checkpoint), then SIGKILL after a grace period.

:class:`Processes` and :func:`server_command` / :func:`client_command` are the commands as a
user types them; the deployment tests start their programs through them too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from securefl.cli.federation import init as federation_init
from securefl.data.local import save_shard_npz
from securefl.deploy.federation_file import FILE_NAME, FederationFile
from securefl.deploy.server_program import checkpoint_folder
from securefl.errors import OutputExistsError
from securefl.federation import build_federation
from securefl.fl.history import check_output_dir
from securefl.validation import require_at_least

demo_app = typer.Typer(help="One-command demonstrations on this machine.", no_args_is_help=True)

Opt = typer.Option

STEP_DEADLINE_SECONDS = 60.0
"""The demo's per-step deadline: only a client that failed ever waits for it."""
JOIN_TIMEOUT_SECONDS = 120.0
"""How long the demo's server waits for its clients to start."""
GRACE_SECONDS = 5.0
"""How long a process stopped with SIGTERM gets before SIGKILL."""
DEMO_BATCH_SIZE, DEMO_LR, DEMO_LOCAL_EPOCHS = 32, 0.25, 1
"""DP-SGD settings that train the CNN on mnist-sample quickly (``make demo`` uses B 32, lr 0.25)."""


@demo_app.command("network")
def network(
    clients: Annotated[int, Opt(help="Client processes N (at least 2: secure aggregation).")] = 5,
    rounds: Annotated[int, Opt(help="Rounds R.")] = 3,
    out: Annotated[Path, Opt(help="Run directory the server writes.")] = Path("runs/demo-network"),
    overwrite: Annotated[bool, Opt(help="Replace a non-empty --out directory.")] = False,
) -> None:
    """Run a server and N client processes on loopback with --dp --secagg, then say where the
    results went."""
    require_at_least(clients, 2, "clients", "clients")
    require_at_least(rounds, 1, "rounds", "rounds")
    check_output_dir(out, overwrite=overwrite)
    if checkpoint_folder(out).exists() and not overwrite:
        raise OutputExistsError(
            f"{checkpoint_folder(out)} holds the checkpoint of an interrupted run: set `overwrite` to "
            "start afresh, or choose another `out`"
        )
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="securefl-demo-network-"))
    console.print(f"federation, client data, ledgers and logs in [bold]{escape(str(work))}[/]")
    toml = create_federation(work, clients=clients, rounds=rounds)
    if overwrite:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(checkpoint_folder(out), ignore_errors=True)
    logs = work / "logs"
    logs.mkdir()
    try:
        server_code, client_codes = _run(toml, out=out, work=work, clients=clients, rounds=rounds)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]stopped:[/] every process the demo started is stopped")
        raise typer.Exit(code=130) from None
    failed = [i for i, code in enumerate(client_codes) if code != 0]
    if server_code != 0 or failed:
        server_text = "did not finish in time" if server_code is None else f"exited with {server_code}"
        Console(stderr=True).print(
            f"[bold red]error:[/] the server {server_text}, clients {failed} did not finish: see their "
            f"logs in {escape(str(logs))}",
            highlight=False,
        )
        raise typer.Exit(code=1)
    console.print(
        f"results: [bold]{escape(str(out))}[/] (metrics.jsonl, model.safetensors, privacy.json, curves.png); "
        f"each client's privacy ledger: {escape(str(work / 'federation'))}/client-<i>/privacy-ledger.json",
        highlight=False,
    )


def _run(
    toml: Path, *, out: Path, work: Path, clients: int, rounds: int
) -> tuple[int | None, list[int | None]]:
    """Start the server (its progress on this terminal) and the clients (logs in ``work/logs``),
    wait for them; their exit codes (``None``: still running at its time limit, then stopped).
    Everything started is stopped on the way out, whatever happens."""
    limit = JOIN_TIMEOUT_SECONDS + rounds * 5 * STEP_DEADLINE_SECONDS
    with Processes() as processes:
        server = processes.start(server_command(toml, out=out), log=None)
        members = [
            processes.start(
                client_command(toml, identity=work / "federation" / f"client-{i}", data=shard_path(work, i)),
                log=work / "logs" / f"client-{i}.log",
            )
            for i in range(clients)
        ]
        Console().print(f"started the server and {clients} clients on {escape(_address(toml))}")
        server_code = processes.wait(server, timeout=limit)
        return server_code, [processes.wait(member, timeout=GRACE_SECONDS * 6) for member in members]


def create_federation(work: Path, *, clients: int, rounds: int) -> Path:
    """``securefl federation init --dp --secagg`` in ``work/federation`` on a free loopback port,
    tuned to run quickly, and each client's shard in ``work/data``; the ``federation.toml``."""
    directory = work / "federation"
    with contextlib.redirect_stdout(io.StringIO()):  # init prints the next steps; the demo takes them
        federation_init(
            directory,
            clients=clients,
            address=f"127.0.0.1:{free_port()}",
            rounds=rounds,
            dp=True,
            secagg=True,
            step_deadline=STEP_DEADLINE_SECONDS,
            dataset=None,
            model=None,
            central_dp=False,
            min_clients=None,
        )
    toml = directory / FILE_NAME
    spec = FederationFile.load(toml)
    shards = build_federation(spec.run).shards  # the simulation's partition
    (work / "data").mkdir()
    for shard in shards:
        save_shard_npz(shard_path(work, shard.client_id), shard.x, shard.y)
    spec = dataclasses.replace(
        spec,
        run=dataclasses.replace(
            spec.run, batch_size=DEMO_BATCH_SIZE, lr=DEMO_LR, local_epochs=DEMO_LOCAL_EPOCHS
        ),
        join_timeout_seconds=JOIN_TIMEOUT_SECONDS,
        max_client_samples=max(len(shard) for shard in shards),
    )
    spec.write(toml)
    return toml


def shard_path(work: Path, client_id: int) -> Path:
    """Where the demo in ``work`` writes client ``client_id``'s shard."""
    return work / "data" / f"client-{client_id}.npz"


def _address(toml: Path) -> str:
    return FederationFile.load(toml).address


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def securefl_command(*args: str | Path) -> list[str]:
    """``securefl ARGS`` with this Python, as the console script runs it."""
    return [sys.executable, "-m", "securefl.cli.app", *map(str, args)]


def server_command(toml: Path, *, out: Path, resume: bool = False) -> list[str]:
    return securefl_command("server", "--federation", toml, "--out", out, *(["--resume"] if resume else []))


def client_command(toml: Path, *, identity: Path, data: Path, ledger: Path | None = None) -> list[str]:
    extra = ["--ledger", str(ledger)] if ledger is not None else []
    return securefl_command("client", "--federation", toml, "--identity", identity, "--data", data, *extra)


class Processes:
    """Child processes, each in its own process group (a terminal's Ctrl-C reaches only the
    parent, which decides), all stopped when the ``with`` block ends: SIGTERM to each group, then
    SIGKILL to those still running after :data:`GRACE_SECONDS`."""

    def __init__(self, *, grace: float = GRACE_SECONDS) -> None:
        self.grace = grace
        self.started: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def start(
        self, command: Sequence[str], *, log: Path | None, environment: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``command``; its output to ``log`` (``None``: this terminal); ``environment`` is
        added to this process's."""
        stream = None
        if log is not None:
            stream = log.open("wb")
            self._logs.append(stream)
        process = subprocess.Popen(
            list(command),
            stdout=stream,
            stderr=subprocess.STDOUT if stream is not None else None,
            env={**os.environ, **(environment or {})},
            start_new_session=True,
        )
        self.started.append(process)
        return process

    def wait(self, process: subprocess.Popen[bytes], *, timeout: float) -> int | None:
        """``process``'s exit code, or ``None`` if it still runs after ``timeout`` seconds (the
        ``with`` block then stops it)."""
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop_all(self) -> None:
        """SIGTERM to every group still running, SIGKILL after the grace period, then reap."""
        running = [p for p in self.started if p.poll() is None]
        for process in running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for process in running:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for stream in self._logs:
            stream.close()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop_all()


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


__all__ = [
    "Processes",
    "client_command",
    "create_federation",
    "demo_app",
    "free_port",
    "server_command",
    "shard_path",
]
