"""``securefl server``: a federation's server over gRPC with mutual TLS, with live progress.

A thin command over :func:`securefl.deploy.server_program.serve`: it loads ``federation.toml``,
shows the rounds, the connected clients and the current step's deadline as they happen, and
prints the summary and where the run directory went.  Ctrl-C (or SIGTERM) stops the server
cleanly: the streams are closed, the clients keep trying to reconnect, and the checkpoint of the
last completed round stays for ``--resume``.

Exit codes: 0 when the run directory is written; 2 for bad input (a message saying what to fix)
or a diverged run; 1 when too few clients came within the join timeout (the checkpoint stays);
130 when stopped.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from securefl.cli.flags import render
from securefl.cli.progress import rounds_bar
from securefl.cli.train import round_status, summary_table
from securefl.deploy.federation_file import FederationFile, in_run_terms
from securefl.deploy.server_program import (
    RoundRecorded,
    ServerEvent,
    WaitingForClients,
    checkpoint_folder,
    serve,
)
from securefl.errors import ClientsUnavailableError, ConfigError
from securefl.transports.grpc_server import ClientConnected, ClientDisconnected, StepStarted

Opt = typer.Option

RUN_FOLDER = "run"
"""The default run directory, beside ``federation.toml`` (so ``--resume`` finds it again)."""


def server(
    federation: Annotated[Path, Opt(help="The federation's federation.toml (`securefl federation init`).")],
    out: Annotated[Path | None, Opt(help="Run directory. (default: run/ beside federation.toml)")] = None,
    data: Annotated[
        Path | None,
        Opt(
            help="The server's held-out test data (folder, .npz, .csv). (default: the data set's test split)"
        ),
    ] = None,
    resume: Annotated[bool, Opt(help="Continue a stopped run from its checkpoint.")] = False,
    insecure: Annotated[
        bool, Opt(help="Plain-text gRPC without certificates: loopback tests only (warns).")
    ] = False,
) -> None:
    """Serve a federation: wait for its clients, run the rounds, write the run directory."""
    spec = FederationFile.load(federation)
    run_dir = out if out is not None else spec.directory / RUN_FOLDER
    console = Console()
    try:
        with _stopped_by_sigterm(), _progress(console, spec) as on_event:
            history = serve(spec, out=run_dir, data=data, resume=resume, insecure=insecure, on_event=on_event)
    except ConfigError as error:
        raise type(error)(in_run_terms(str(error))) from None
    except KeyboardInterrupt:
        Console(stderr=True).print(f"[yellow]stopped.[/] {escape(_how_to_go_on(federation, run_dir))}")
        raise typer.Exit(code=130) from None
    except ClientsUnavailableError as error:
        Console(stderr=True).print(
            f"[bold red]error:[/] {escape(render(in_run_terms(str(error))))}\n"
            f"{escape(_how_to_go_on(federation, run_dir))}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=1) from None
    console.print(summary_table(history, title="securefl server"))
    if history.stopped_early:
        console.print(f"[yellow]stopped early:[/] {escape(history.stopped_early)}")
    console.print(f"results written to [bold]{escape(str(run_dir))}[/]")
    if history.diverged:
        Console(stderr=True).print(
            f"[bold red]error:[/] {escape(in_run_terms(history.diverged))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(code=2)


def _how_to_go_on(federation: Path, run_dir: Path) -> str:
    checkpoints = checkpoint_folder(run_dir)
    if not checkpoints.exists():
        return "No round was completed: start the server again (without --resume)."
    return (
        f"The checkpoint of the last completed round is in {checkpoints}; continue with\n"
        f"  securefl server --federation {federation} --out {run_dir} --resume"
    )


@contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM stops the server like Ctrl-C (the checkpoint is kept)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _progress(console: Console, federation: FederationFile) -> Iterator[_ServerProgress]:
    with rounds_bar(console) as progress:
        yield _ServerProgress(progress, federation)


class _ServerProgress:
    """Renders :data:`ServerEvent` s on one bar: rounds done, clients connected, what the server
    is doing now (waiting for clients, or a step and its deadline) and the last round's result."""

    def __init__(self, progress: Progress, federation: FederationFile) -> None:
        self.progress = progress
        self.task = progress.add_task("rounds", total=federation.run.rounds, status="starting")
        self.address = federation.address
        self.connected = 0
        self.doing = f"listening on {federation.address}"
        self.last = ""

    def __call__(self, event: ServerEvent) -> None:
        match event:
            case ClientConnected() | ClientDisconnected():
                self.connected = event.connected
            case WaitingForClients():
                self.doing = (
                    f"round {event.round_index}: waiting for {event.needed} client(s) "
                    f"({event.ready} ready, up to {event.timeout_seconds:g}s)"
                )
            case StepStarted():
                self.doing = (
                    f"round {event.round_index} step {event.step}: {event.clients} client(s), "
                    f"deadline {event.deadline_seconds:g}s"
                )
            case RoundRecorded():
                self.progress.update(self.task, completed=event.record.round)
                self.last = round_status(event.record)
                self.doing = f"round {event.record.round} done"
        status = f"{self.connected} connected  {self.doing}"
        self.progress.update(self.task, status=f"{status}  {self.last}" if self.last else status)
