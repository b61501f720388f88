"""The server's checkpoints: what a deployed server keeps so ``securefl server --resume`` goes on
exactly where it stopped, without spending privacy twice or losing any of its accounting.

**What the server stores**, in its checkpoint folder, after every round:

- ``checkpoint.safetensors``, one file replaced whole (:func:`securefl.atomic.write_atomically`:
  a kill at any instant leaves the previous complete checkpoint): the global model after the
  round as a safetensors tensor (no pickle), and in the file's metadata a JSON state: the round
  index; every round's record so far (field by field, so each gives the same ``metrics.jsonl``
  line as :meth:`RoundRecord.to_json <securefl.fl.record.RoundRecord.to_json>`); the user-level
  accountant's ledger (:meth:`DPFedAvgServerUpdate.export_ledger
  <securefl.privacy.central.DPFedAvgServerUpdate.export_ledger>`: the rounds it counted and the
  settings they are counted under); the secure-aggregation parameters of every round size the
  channel can run; the federation's fingerprint
  (:meth:`FederationFile.fingerprint <securefl.deploy.federation_file.FederationFile.fingerprint>`)
  and a SHA-256 digest over the state and the model's bytes, so a truncated or corrupted file is
  refused, never half-read.
- ``round-opened.json``, written (atomically) before a round's train requests go out: "round k
  was opened".

Nothing in either file is one client's: the model is the released global model, the records are
what every round's record already releases (counts, test metrics, ε), the ledger counts rounds.
No client sample is stored (under central DP it must stay secret), nor any key, mask, seed or
noise: secure aggregation's round secrets are drawn afresh every round and die with it.

**Resuming** (:meth:`ServerCheckpoints.resume`) restores the model, the round index, the records
and the accountant, after checking that the checkpoint is of the same federation and that the
secure-aggregation parameters the server computes now are the ones it ran with.  A server killed
*during* round ``k + 1`` leaves the checkpoint of round ``k`` and the marker of round ``k + 1``:
clients that trained in round ``k + 1`` refuse a replay of its round id (and a DP-SGD client has
already counted it in its own ledger), so the resumed server records round ``k + 1`` as aborted --
"the server stopped during this round" -- through the server update like any aborted round, which
the user-level accountant counts once (whatever the lost round had released before the stop,
e.g. a test metric, is covered, and its replacement model is the noise alone), writes a
checkpoint of it, and goes on with round ``k + 2``.  A server killed between rounds resumes with
the next round and, without DP, computes exactly the weights an uninterrupted run computes
(plain and secure-aggregation rounds are functions of the seed and the round index).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from securefl.atomic import write_atomically
from securefl.errors import CheckpointError
from securefl.fl.record import Evaluation, RoundRecord, RoundStatus
from securefl.fl.server import FederatedServer

CHECKPOINT_FILE = "checkpoint.safetensors"
ROUND_OPENED_FILE = "round-opened.json"
FORMAT = "securefl/server-checkpoint/1"
INTERRUPTED = "the server stopped during this round"
"""The abort reason of a round the server was in when it stopped."""

_PARAMS = "params"
_STATE = "securefl_checkpoint"
_DIGEST = "sha256"


@runtime_checkable
class ResumableAccounting(Protocol):
    """An accountant whose count survives a restart (a server update that spends privacy)."""

    def export_ledger(self) -> bytes: ...

    def import_ledger(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: the state after round :attr:`round_index` (0: none completed yet)."""

    round_index: int
    params: torch.Tensor
    records: tuple[RoundRecord, ...]
    fingerprint: str
    accountant_ledger: bytes | None
    secagg: tuple[dict[str, Any], ...]


class ServerCheckpoints:
    """The checkpoint folder of one server of the federation whose fingerprint is ``fingerprint``.

    The server's loop calls :meth:`open_round` before each round's train requests go out and
    :meth:`save` after each round; ``--resume`` calls :meth:`resume` on a freshly built server.
    """

    def __init__(self, directory: Path, *, fingerprint: str) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    @property
    def checkpoint_path(self) -> Path:
        return self.directory / CHECKPOINT_FILE

    @property
    def marker_path(self) -> Path:
        return self.directory / ROUND_OPENED_FILE

    # ---- writing --------------------------------------------------------------------------------

    def open_round(self, round_index: int) -> None:
        """Note, durably, that round ``round_index`` is opened: call before its train requests go
        out (a resumed server then knows clients may have trained in it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        marker = {"format": FORMAT, "round": round_index, "fingerprint": self.fingerprint}
        write_atomically(self.marker_path, (json.dumps(marker, sort_keys=True) + "\n").encode())

    def save(self, server: FederatedServer, records: Sequence[RoundRecord] | None = None) -> Checkpoint:
        """Checkpoint ``server`` after its current round (atomically).  ``records`` are the rounds'
        records as the run directory writes them (with traffic and timing; default: the server's
        own)."""
        if not server.finished:
            raise RuntimeError(f"round {server.round_index} is still open: checkpoint after it")
        records = tuple(server.records if records is None else records)
        if [r.round for r in records] != list(range(1, server.round_index + 1)):
            raise ValueError(
                f"records of rounds {[r.round for r in records]} after round {server.round_index}"
            )
        checkpoint = Checkpoint(
            round_index=server.round_index,
            params=server.params.detach().clone(),
            records=records,
            fingerprint=self.fingerprint,
            accountant_ledger=_accountant(server).export_ledger() if server.accountants else None,
            secagg=secagg_parameters(server),
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self.checkpoint_path, _to_bytes(checkpoint))
        return checkpoint

    # ---- reading --------------------------------------------------------------------------------

    def load(self) -> Checkpoint | None:
        """The latest checkpoint, ``None`` when none was written yet; :class:`CheckpointError`
        for a truncated or corrupt file or one of another federation (the file is left as it is)."""
        path = self.checkpoint_path
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as stream:
                metadata = stream.metadata() or {}
                params = stream.get_tensor(_PARAMS)
        except (SafetensorError, OSError, ValueError) as error:
            raise self._corrupt(f"it cannot be read as safetensors ({error})") from None
        state_text, digest = metadata.get(_STATE), metadata.get(_DIGEST)
        if state_text is None or digest is None:
            raise self._corrupt("it lacks its state or its digest")
        if _digest(state_text, params) != digest:
            raise self._corrupt("its digest does not match its contents")
        try:
            checkpoint = _from_state(json.loads(state_text), params)
        except (ValueError, KeyError, TypeError) as error:
            raise self._corrupt(f"its state is not a checkpoint's ({error})") from None
        if checkpoint.fingerprint != self.fingerprint:
            raise CheckpointError(
                f"{path} is the checkpoint of another federation (another federation.toml, or its [run] "
                "settings, min_clients or max_client_samples changed): resume with the federation.toml "
                "it was written for, or start a new run in another folder"
            )
        return checkpoint

    def opened_round(self) -> int | None:
        """The round the last :meth:`open_round` named, ``None`` when there is no marker."""
        path = self.marker_path
        if not path.exists():
            return None
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
            if marker["format"] != FORMAT or not isinstance(marker["round"], int):
                raise ValueError(f"format {marker['format']!r}, round {marker['round']!r}")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{path} is not a round marker ({error}): it was not written by a securefl server"
            ) from None
        if marker.get("fingerprint") != self.fingerprint:
            raise CheckpointError(f"{path} is the round marker of another federation: resume with its own")
        return int(marker["round"])

    # ---- resuming -------------------------------------------------------------------------------

    def resume(self, server: FederatedServer) -> list[RoundRecord]:
        """Put a freshly built ``server`` where the stopped one was and return the records so far.

        A round that was opened and not checkpointed is recorded as aborted (:data:`INTERRUPTED`,
        :meth:`FederatedServer.abort_interrupted_round`) and checkpointed; the next
        :meth:`~FederatedServer.start_round` opens the round after it."""
        checkpoint = self.load()
        opened = self.opened_round()
        if checkpoint is None and opened is None:
            raise CheckpointError(
                f"nothing to resume in {self.directory}: no {CHECKPOINT_FILE} and no {ROUND_OPENED_FILE} "
                "(start the server without resuming)"
            )
        completed = 0 if checkpoint is None else checkpoint.round_index
        if opened is not None and opened > completed + 1:
            raise CheckpointError(
                f"{self.marker_path} says round {opened} was opened but {self.checkpoint_path} holds "
                f"round {completed}: the checkpoint of round {opened - 1} is missing; resume from a "
                "complete checkpoint folder"
            )
        if checkpoint is not None:
            _check_secagg(server, checkpoint, self.checkpoint_path)
            try:
                server.resume(round_index=completed, params=checkpoint.params, records=checkpoint.records)
            except ValueError as error:
                raise CheckpointError(
                    f"{self.checkpoint_path} does not fit this server ({error}): resume with the "
                    "federation it was written for"
                ) from None
            self._restore_accountant(server, checkpoint.accountant_ledger)
        if opened == completed + 1:
            server.abort_interrupted_round(INTERRUPTED)
            self.save(server)
        return list(server.records)

    def _restore_accountant(self, server: FederatedServer, ledger: bytes | None) -> None:
        if (ledger is None) != (not server.accountants):
            held, needed = ("no", "accounts one") if ledger is None else ("a", "has no accountant")
            raise CheckpointError(
                f"{self.checkpoint_path} holds {held} user-level privacy ledger, this server {needed}: "
                "resume with the federation it was written for"
            )
        if ledger is not None:
            _accountant(server).import_ledger(ledger)

    def _corrupt(self, problem: str) -> CheckpointError:
        return CheckpointError(
            f"{self.checkpoint_path} is not a complete checkpoint: {problem}.  It was left as it is; "
            "restore the folder from a backup, or start a new run in another folder"
        )


def check_resumable(server: FederatedServer) -> None:
    """Refuse, before the first round, a server whose accountants cannot be checkpointed."""
    if server.accountants:
        _accountant(server)


def _accountant(server: FederatedServer) -> ResumableAccounting:
    accountants = server.accountants
    if len(accountants) != 1 or not isinstance(accountants[0], ResumableAccounting):
        names = ", ".join(type(a).__name__ for a in accountants)
        raise CheckpointError(
            f"the server's privacy accounting ({names}) cannot be checkpointed yet, so a stopped run "
            "could not resume without losing its count: run this federation without `central_dp.distributed`"
        )
    return accountants[0]


def secagg_parameters(server: FederatedServer) -> tuple[dict[str, Any], ...]:
    """The secure-aggregation parameters of every round size the server's channel can run (none
    for a plain sum), as JSON values."""
    channel: Any = getattr(server.aggregation, "secure", server.aggregation)  # distributed DP wraps it
    if not hasattr(channel, "round_params"):
        return ()
    return tuple(dataclasses.asdict(params) for params in channel.round_params())


def _check_secagg(server: FederatedServer, checkpoint: Checkpoint, path: Path) -> None:
    now = secagg_parameters(server)
    if now != checkpoint.secagg:
        raise CheckpointError(
            f"{path} was written with secure-aggregation parameters {list(checkpoint.secagg)}, this server "
            f"computes {list(now)} (another securefl version?): resume with the version that wrote it"
        )


# --------------------------------------------------------------------------- the file


def _to_bytes(checkpoint: Checkpoint) -> bytes:
    state = {
        "format": FORMAT,
        "round_index": checkpoint.round_index,
        "fingerprint": checkpoint.fingerprint,
        "records": [_record_state(record) for record in checkpoint.records],
        "accountant_ledger": None
        if checkpoint.accountant_ledger is None
        else checkpoint.accountant_ledger.decode("utf-8"),
        "secagg": list(checkpoint.secagg),
    }
    text = json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False)
    params = checkpoint.params.contiguous()
    metadata = {_STATE: text, _DIGEST: _digest(text, params)}
    return safetensors_bytes({_PARAMS: params}, metadata=metadata)


def _digest(state_text: str, params: torch.Tensor) -> str:
    digest = hashlib.sha256(state_text.encode("utf-8"))
    digest.update(params.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _from_state(state: dict[str, Any], params: torch.Tensor) -> Checkpoint:
    if state["format"] != FORMAT:
        raise ValueError(f"format {state['format']!r}, expected {FORMAT!r}")
    ledger = state["accountant_ledger"]
    return Checkpoint(
        round_index=int(state["round_index"]),
        params=params,
        records=tuple(_record_from_state(r) for r in state["records"]),
        fingerprint=str(state["fingerprint"]),
        accountant_ledger=None if ledger is None else str(ledger).encode("utf-8"),
        secagg=tuple(state["secagg"]),
    )


# A record's floats may be NaN or infinite (a diverged round's test loss, an ε of infinity); JSON
# has neither, so such a float is written as {"float": "nan" | "inf" | "-inf"} and read back as it.
_FLOAT = "float"


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: repr(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(key): _encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_FLOAT}:
            return float(value[_FLOAT])
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def _record_state(record: RoundRecord) -> dict[str, Any]:
    state = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    if record.evaluation is not None:
        state["evaluation"] = dataclasses.asdict(record.evaluation)
    state["declined"] = dict(record.declined)
    state["aggregation"] = dict(record.aggregation)
    state["privacy"] = dict(record.privacy)
    encoded: dict[str, Any] = _encode(state)
    return encoded


def _record_from_state(state: dict[str, Any]) -> RoundRecord:
    values = _decode(state)
    evaluation = values.pop("evaluation")
    return RoundRecord(
        **{**values, "status": RoundStatus(values["status"])},
        evaluation=None if evaluation is None else Evaluation(**evaluation),
    )


__all__ = [
    "CHECKPOINT_FILE",
    "INTERRUPTED",
    "ROUND_OPENED_FILE",
    "Checkpoint",
    "ResumableAccounting",
    "ServerCheckpoints",
    "check_resumable",
    "secagg_parameters",
]
