"""Privacy ledgers carried home: how a transport whose client programs run elsewhere (worker
processes, Ray actors) keeps this process's copies of their DP-SGD ledgers current.

A client's DP-SGD ledger (Abadi et al. 2016's accountant history: per round its noise, sample rate
and steps) lives with the trainer that trains it.  The host of a client program reports the
client's ledger with a reply whenever it changed since its last report
(:class:`LedgerReports`, :meth:`~securefl.privacy.dp_client.DPSGDTrainer.export_ledger`'s canonical
JSON bytes), and this process's copy of that client takes it over (:func:`take_over_ledger`,
``import_ledger``) before the server sees the reply: what the simulation reports (each round's ε,
``privacy.json``) is what the hosts' trainers hold, and a ledger travels with the update it
accounts for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from securefl.errors import LedgerError
from securefl.fl.client import FederatedClient


@runtime_checkable
class LedgerHolder(Protocol):
    """A client's trainer whose privacy ledger travels as bytes
    (:class:`~securefl.privacy.dp_client.DPSGDTrainer`)."""

    def export_ledger(self) -> bytes: ...

    def import_ledger(self, data: bytes, *, clients: Iterable[int] | None = None) -> None: ...


class LedgerReports:
    """The host's side: each hosted client's ledger when it changed since the last one reported."""

    def __init__(self) -> None:
        self._reported: dict[int, bytes] = {}

    def changed(self, client: FederatedClient) -> bytes:
        """``client``'s ledger if it changed since the last call for it, else empty bytes (also
        for a client whose trainer keeps no ledger)."""
        trainer = client.trainer
        ledger = trainer.export_ledger() if isinstance(trainer, LedgerHolder) else b""
        if ledger == self._reported.get(client.client_id, b""):
            return b""
        self._reported[client.client_id] = ledger
        return ledger


def take_over_ledger(client: FederatedClient, ledger: bytes, *, host: str) -> None:
    """This process's copy of ``client`` takes over the ``ledger`` its ``host`` (e.g. "worker 1")
    reported: ``client``'s record only (a trainer shared by clients of several hosts holds, in
    each host, only its own clients' records current).  A ledger for a client that keeps none, or
    one its trainer refuses (another client's, one that went backwards), is the host's error:
    :class:`RuntimeError` naming both."""
    trainer = client.trainer
    if not isinstance(trainer, LedgerHolder):
        raise RuntimeError(f"{host} sent a ledger for client {client.client_id}, whose trainer keeps none")
    try:
        trainer.import_ledger(ledger, clients=(client.client_id,))
    except LedgerError as error:
        raise RuntimeError(
            f"{host} sent client {client.client_id}'s ledger, which was refused: {error}"
        ) from None
