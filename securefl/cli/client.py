"""``securefl client``: one client of a federation, on its owner's machine and its own data.

A thin command over :mod:`securefl.deploy.client_program`.  Exit codes: 0 once the federation has
finished; 2 with a message saying what to fix when the client is refused (a certificate from
another CA, not enrolled or revoked, a server it does not trust) or its input is bad (data,
identity, ledger); 1 when the server stayed unreachable longer than ``--give-up-after``; 130
when stopped by Ctrl-C or SIGTERM (its ledger is on disk: start it again to rejoin).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from securefl.deploy.client_program import (
    DEFAULT_LEDGER_FILE,
    prepare_client,
    run_prepared_client,
    spent_epsilon,
)
from securefl.deploy.federation_file import FederationFile, in_run_terms
from securefl.errors import ConfigError, ServerUnreachableError
from securefl.transports.grpc_client import Backoff
from securefl.validation import require_non_negative

Opt = typer.Option


def client(
    federation: Annotated[
        Path, Opt(help="The federation's federation.toml (with enrolment.json beside it).")
    ],
    identity: Annotated[
        Path, Opt(help="This client's identity directory (client-<i>/ from federation init).")
    ],
    data: Annotated[
        Path, Opt(help="This client's own data: an image folder, a torchvision directory, a .npz or a .csv.")
    ],
    ledger: Annotated[
        Path | None, Opt(help=f"Privacy ledger file under dp. (default: IDENTITY/{DEFAULT_LEDGER_FILE})")
    ] = None,
    insecure: Annotated[
        bool, Opt(help="Plain-text gRPC without certificates: loopback tests only (warns).")
    ] = False,
    give_up_after: Annotated[
        float, Opt(help="Seconds without reaching the server before giving up.")
    ] = 3600.0,
) -> None:
    """Join a federation as one client: train on local data, protect and send each round."""
    require_non_negative(give_up_after, "give up after", "--give-up-after")
    spec = FederationFile.load(federation)
    try:
        prepared = prepare_client(spec, identity=identity, data=data, ledger=ledger, insecure=insecure)
    except ConfigError as error:
        raise type(error)(in_run_terms(str(error))) from None
    console = Console()
    me = prepared.client
    console.print(
        f"client {me.client_id}: {len(me.shard)} local examples, joining the federation at "
        f"{escape(spec.address)}"
        + (f"; privacy ledger {escape(str(prepared.ledger))}" if prepared.ledger else ""),
        highlight=False,
    )
    stop = threading.Event()
    with _stopped_by_signals(stop):
        try:
            run_prepared_client(prepared, backoff=Backoff(give_up_after=give_up_after), stop=stop)
        except ServerUnreachableError as error:
            Console(stderr=True).print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(code=1) from None
    if stop.is_set():
        console.print(f"client {me.client_id}: stopped; start it again to rejoin the federation")
        raise typer.Exit(code=130)
    epsilon = spent_epsilon(prepared)
    spent = "" if epsilon is None else f"; its privacy ledger says ε = {epsilon:.3f}"
    console.print(f"client {me.client_id}: the federation has finished{spent}")


@contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop``: the client leaves its session and returns."""

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler_before in previous.items():
            signal.signal(s, handler_before)
