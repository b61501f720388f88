"""``securefl federation init``: a new federation's certificates and its ``federation.toml``.

The command is the federation operator's first step: it creates the PKI
(:func:`securefl.deploy.pki.create_pki`: a CA, the server's certificate for the address clients
dial, one identity per client, the enrolment list) and a ``federation.toml``
(:class:`~securefl.deploy.federation_file.FederationFile`) naming them, then prints what to run
next.  Its flags are few on purpose: every run setting can be edited in the ``[run]`` table
afterwards, with the keys of ``securefl train --config``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from securefl.config import RunConfig
from securefl.data import DATASETS
from securefl.deploy.federation_file import FILE_NAME, FederationFile
from securefl.deploy.pki import DEFAULT_HOSTS, Enrolment, create_pki, revoke
from securefl.errors import ConfigError

federation_app = typer.Typer(
    help="Set up a federation of separate server and client programs.", no_args_is_help=True
)

Opt = typer.Option

INIT_FLAGS = {
    "federation.address": "--address",
    "federation.step_deadline_seconds": "--step-deadline",
    "federation.min_clients": "--min-clients",
}
"""``federation.toml`` keys that ``federation init`` sets by a flag: its errors name the flag."""

DEFAULT_ADDRESS = "127.0.0.1:50051"


@federation_app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="New folder for the certificates and federation.toml.")],
    clients: Annotated[int, Opt(help="Number of clients N (one identity each).")],
    address: Annotated[str, Opt(help="host:port the server listens on and clients dial.")] = DEFAULT_ADDRESS,
    dataset: Annotated[str | None, Opt(help="Data set the model is for. (default mnist-sample)")] = None,
    model: Annotated[str | None, Opt(help="cnn | resnet18 | mlp. (default cnn)")] = None,
    rounds: Annotated[int | None, Opt(help="Rounds R. (default 10)")] = None,
    dp: Annotated[bool, Opt("--dp/--no-dp", help="Sample-level DP-SGD on every client.")] = False,
    central_dp: Annotated[
        bool, Opt("--central-dp/--no-central-dp", help="User-level DP-FedAvg at the server.")
    ] = False,
    secagg: Annotated[bool, Opt("--secagg/--no-secagg", help="Sum updates by secure aggregation.")] = False,
    step_deadline: Annotated[
        float, Opt(help="Seconds a client has for each protocol step before it is a dropout.")
    ] = 60.0,
    min_clients: Annotated[
        int | None, Opt(help="Clients a round waits for. (default: the clients per round)")
    ] = None,
) -> None:
    """Create a federation: a CA, the server's and each client's certificate, an enrolment list
    and DIR/federation.toml."""
    flags = {"dataset": dataset, "model": model, "rounds": rounds, "clients": clients}
    switches = {"dp": dp, "central_dp": central_dp, "secagg": secagg}
    run = RunConfig.from_mapping({**flags, **{name: True for name, on in switches.items() if on}})
    try:
        planned = FederationFile(
            run=run,
            address=address,
            step_deadline_seconds=step_deadline,
            min_clients=min_clients,
            # any shard of the data set fits under this bound; lower it to what clients hold
            max_client_samples=DATASETS[run.dataset].train_samples,
            insecure=True,  # the certificate paths are filled in below, once they exist
        )
    except ConfigError as error:
        raise type(error)(_in_flags(str(error))) from None
    hosts = tuple(dict.fromkeys([planned.host, *DEFAULT_HOSTS]))
    pki = create_pki(directory, clients=clients, hosts=hosts)  # refuses a non-empty DIR
    try:
        federation = dataclasses.replace(
            planned,
            insecure=False,
            ca=str(pki.ca_certificate.relative_to(directory)),
            server_cert=str(pki.server.certificate.relative_to(directory)),
            server_key=str(pki.server.private_key.relative_to(directory)),
            enrolment=str(pki.enrolment.relative_to(directory)),
            directory=directory,
        )
        federation.write(directory / FILE_NAME)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # nothing half-made: no PKI without its file
        raise
    _report(federation, directory=directory, clients=clients)


@federation_app.command("revoke")
def revoke_client(
    federation: Annotated[Path, Opt(help="The federation's federation.toml.")],
    client: Annotated[int, Opt(help="The client id to remove from the enrolment list.")],
) -> None:
    """Revoke a client: remove it from the enrolment list.  A running server refuses it from its
    next connection and ends its stream between rounds; no restart needed."""
    path = FederationFile.load(federation).path("enrolment")
    revoke(path, client)  # atomic; an id not enrolled is a ConfigError (exit 2)
    left = sorted(Enrolment.load(path).ids)
    Console().print(
        f"client {client} revoked in [bold]{escape(str(path))}[/]; enrolled now: "
        f"{', '.join(map(str, left)) or 'nobody'}",
        highlight=False,
    )


def _in_flags(message: str) -> str:
    for key, flag in INIT_FLAGS.items():
        message = message.replace(f"`{key}`", flag)
    return message


def _report(federation: FederationFile, *, directory: Path, clients: int) -> None:
    console = Console()
    run = federation.run
    protections = [
        name for name, on in (("dp", run.dp), ("central-dp", run.central_dp), ("secagg", run.secagg)) if on
    ]
    toml = directory / FILE_NAME
    console.print(
        f"federation of {clients} client(s) written to [bold]{escape(str(directory))}[/]:\n"
        f"  {escape(str(toml))}  ({run.dataset}, {run.model}, {run.rounds} rounds, "
        f"{', '.join(protections) or 'no protection'}, server at {escape(federation.address)})\n"
        f"  {escape(str(federation.path('ca')))}  the federation's CA (its key beside it: keep it offline)\n"
        f"  {escape(str(federation.path('server_cert')))}  the server's certificate and key\n"
        f"  {escape(str(federation.path('enrolment')))}  the enrolled clients\n"
        f"  {escape(str(directory / 'client-0'))} .. client-{clients - 1}  one identity per client: "
        "give each to its owner",
        highlight=False,
    )
    console.print(
        "next:\n"
        f"  edit {escape(str(toml))} (its {escape('[run]')} table takes the keys of "
        "`securefl train --config`)\n"
        f"  securefl server --federation {escape(str(toml))}\n"
        f"  securefl client --federation {escape(str(toml))} --identity "
        f"{escape(str(directory / 'client-0'))} --data PATH   (on each client's machine)",
        highlight=False,
    )


__all__ = ["federation_app", "init", "revoke_client"]
