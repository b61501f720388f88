"""``securefl server`` and ``securefl client`` as separate processes on loopback, through the real
commands (``python -m securefl.cli.app``), with mutual TLS.

Three federations, each run once per module and examined by several tests:

- **plain** (FedAvg): four client processes, one of which freezes (SIGSTOP) before its first
  reply -- a straggler past every step deadline; a client revoked while the server runs, one never
  enrolled and one of another federation's CA, each refused with exit code 2.  Reference: the
  same federation in process, the straggler a dropout of each round.
- **secagg**: six clients, Shamir threshold 2; the server kills itself right after round 1's
  checkpoint and is restarted with ``--resume``; in round 2 four clients are killed, one at each
  secure-aggregation step.  Reference: an uninterrupted run in process with those dropouts.
- **dp+secagg** against an active server (signatures checked with the enrolled keys): four
  clients with their privacy ledgers on disk; the server killed after round 1 and resumed; two
  clients killed at step 1 of round 3, below the threshold of 3: the round aborts.  Reference:
  Opacus' RDP accountant for the rounds each client trained, and the same aborted round in
  process.

Crashes come from the programs' one fault hook (``SECUREFL_FAULT``, :mod:`securefl.deploy.faults`).
Every process is stopped by :class:`~securefl.cli.demo.Processes` when its fixture ends, also on
failure, and every wait is bounded (:data:`~deployment_helpers.PROCESS_TIMEOUT`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from deployment_helpers import (
    PROCESS_TIMEOUT,
    reference_run,
    run_directory,
    same_weights,
    shard_path,
    start_clients,
    start_server,
    wait_until_listening,
    write_federation,
)
from opacus.accountants import RDPAccountant

from securefl.cli.app import main
from securefl.cli.demo import Processes
from securefl.cli.demo import create_federation as create_demo_federation
from securefl.cli.demo import shard_path as demo_shard_path
from securefl.config import RunConfig
from securefl.data import DATASETS
from securefl.data.local import load_local_data
from securefl.deploy.checkpoint import ServerCheckpoints
from securefl.deploy.faults import FAULT_VARIABLE, fault_from_environment
from securefl.deploy.federation_file import FederationFile
from securefl.deploy.pki import Pki, create_pki, revoke
from securefl.deploy.server_program import checkpoint_folder
from securefl.errors import ConfigError
from securefl.federation import ClientFactory, build_federation
from securefl.fl.turns import Faults
from securefl.fl.types import ClientShard
from securefl.privacy import DPSGDTrainer

pytestmark = pytest.mark.slow

SECAGG_STEPS = 4
"""Messages a client answers in one passive secure-aggregation round (keys, shares, masked input,
unmasking); :data:`ACTIVE_SECAGG_STEPS` with the consistency check against an active server."""
ACTIVE_SECAGG_STEPS = 5


def kill_at(round_index: int, step: int, *, steps: int = SECAGG_STEPS) -> dict[str, str]:
    """The environment that kills a client in ``round_index`` at secure-aggregation ``step``
    (it computed its answer; nothing of it leaves), given it answered all ``steps`` of every
    round before."""
    return {FAULT_VARIABLE: f"SIGKILL@{steps * (round_index - 1) + step + 1}"}


@dataclass
class Outcome:
    """What a federation's processes left behind."""

    toml: Path
    out: Path
    run: RunConfig
    codes: dict[str, int | None]
    refusals: dict[str, tuple[int, str]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return create_pki(tmp_path_factory.mktemp("pki") / "federation", clients=6)


@pytest.fixture(scope="module")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another federation's CA and one client of it."""
    return create_pki(tmp_path_factory.mktemp("foreign") / "federation", clients=1)


# ---- plain FedAvg: a straggler and three refused clients ------------------------------------

PLAIN_DEADLINE = 5.0
STRAGGLER = 3


@pytest.fixture(scope="module")
def plain(pki: Pki, foreign_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    directory = tmp_path_factory.mktemp("plain") / "federation"
    run = RunConfig(dataset="digits", model="mlp", clients=6, rounds=2)
    toml = write_federation(
        directory, pki, run, enrolled=range(5), step_deadline=PLAIN_DEADLINE, min_clients=4
    )
    with Processes() as processes:
        server = start_server(processes, toml)
        stopped = {FAULT_VARIABLE: "SIGSTOP@1"}
        members = start_clients(
            processes, toml, pki, range(4), environment=lambda i: stopped if i == STRAGGLER else None
        )
        wait_until_listening(toml)
        revoke(directory / "enrolment.json", 4)  # while the server runs, before client 4 connects
        outsiders = {
            "revoked": (pki.clients[4], shard_path(directory, 4)),
            "unenrolled": (pki.clients[5], shard_path(directory, 5)),
            "another CA": (foreign_pki.clients[0], shard_path(directory, 0)),
        }
        refusals = {
            name: _run_client_here(toml, identity.certificate.parent, data)
            for name, (identity, data) in outsiders.items()
        }
        codes = {"server": processes.wait(server, timeout=PROCESS_TIMEOUT)}
        os.kill(members[STRAGGLER].pid, signal.SIGKILL)
        codes.update({f"client-{i}": processes.wait(members[i], timeout=PROCESS_TIMEOUT) for i in range(4)})
    return Outcome(toml=toml, out=directory.parent / "run", run=run, codes=codes, refusals=refusals)


def _run_client_here(toml: Path, identity: Path, data: Path) -> tuple[int, str]:
    """``securefl client`` through the CLI's own entry point in this process: (exit code, what it
    printed on stderr)."""
    return _main_exit(
        [
            "client",
            "--federation",
            str(toml),
            "--identity",
            str(identity),
            "--data",
            str(data),
            "--give-up-after",
            "60",
        ]
    )


def test_plain_run_matches_the_in_process_run_with_the_straggler_dropped(plain: Outcome) -> None:
    outcome = plain
    assert outcome.codes["server"] == 0
    assert [outcome.codes[f"client-{i}"] for i in range(3)] == [0, 0, 0]
    weights, rows = run_directory(outcome.out)
    straggler_dropped = Faults(before={STRAGGLER: 0})
    expected, records = reference_run(
        outcome.run, joined=range(4), faults={1: straggler_dropped, 2: straggler_dropped}
    )
    assert same_weights(weights, expected)
    assert [(r["round"], r["status"], r["clients"], r["survivors"]) for r in rows] == [
        (r.round, r.status.value, r.clients, r.survivors) for r in records
    ]
    assert [r["survivors"] for r in rows] == [3, 3]
    assert [r["test_accuracy"] for r in rows] == [r.evaluation.accuracy for r in records]
    # each round waited out the straggler's deadline (and no longer: the run finished)
    assert all(r["seconds"] >= PLAIN_DEADLINE for r in rows)


def test_plain_run_writes_the_train_run_directory_and_drops_its_checkpoint(plain: Outcome) -> None:
    outcome = plain
    names = {path.name for path in outcome.out.iterdir()}
    assert {"config.json", "metrics.jsonl", "model.safetensors", "curves.png", "status.json"} <= names
    assert json.loads((outcome.out / "status.json").read_text())["status"] == "finished"
    assert json.loads((outcome.out / "config.json").read_text()) == json.loads(outcome.run.to_json())
    assert not checkpoint_folder(outcome.out).exists()


@pytest.mark.parametrize(
    ("who", "says"),
    [
        ("revoked", "not enrolled"),
        ("unenrolled", "not enrolled"),
        ("another CA", "does not trust"),
    ],
)
def test_a_client_the_federation_does_not_know_is_refused_with_exit_2(
    plain: Outcome, who: str, says: str
) -> None:
    outcome = plain
    code, stderr = outcome.refusals[who]
    assert code == 2
    assert says in " ".join(stderr.split())
    assert outcome.codes["server"] == 0  # the server served the others to the end


# ---- secure aggregation: the server restarted, a client killed at every step -------------------

SECAGG_VICTIMS = {step: step for step in range(SECAGG_STEPS)}
"""Client killed (value) at each secure-aggregation step (key) of round 2."""


@pytest.fixture(scope="module")
def secagg(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    directory = tmp_path_factory.mktemp("secagg") / "federation"
    settings = {"dataset": "digits", "model": "mlp", "clients": 6, "rounds": 2, "secagg": True}
    run = RunConfig.from_mapping({**settings, "secagg_threshold": 2})
    toml = write_federation(directory, pki, run, enrolled=range(6), step_deadline=PROCESS_TIMEOUT)
    out = directory.parent / "run"
    victims = {client: step for step, client in SECAGG_VICTIMS.items()}
    with Processes() as processes:
        first = start_server(processes, toml, environment={FAULT_VARIABLE: "SIGKILL@1"})
        members = start_clients(
            processes,
            toml,
            pki,
            range(6),
            environment=lambda i: kill_at(2, victims[i]) if i in victims else None,
        )
        codes = {"first server": processes.wait(first, timeout=PROCESS_TIMEOUT)}
        fingerprint = FederationFile.load(toml).fingerprint()
        checkpoint = ServerCheckpoints(checkpoint_folder(out), fingerprint=fingerprint).load()
        codes["checkpointed round"] = None if checkpoint is None else checkpoint.round_index
        resumed = start_server(processes, toml, resume=True)
        codes["resumed server"] = processes.wait(resumed, timeout=PROCESS_TIMEOUT)
        codes.update({f"client-{i}": processes.wait(members[i], timeout=PROCESS_TIMEOUT) for i in range(6)})
    return Outcome(toml=toml, out=out, run=run, codes=codes, refusals={})


def test_a_killed_server_resumes_from_its_checkpoint(secagg: Outcome) -> None:
    assert secagg.codes["first server"] == -signal.SIGKILL
    assert secagg.codes["checkpointed round"] == 1
    assert secagg.codes["resumed server"] == 0


def test_secagg_round_survives_a_client_killed_at_every_step(secagg: Outcome) -> None:
    victims = set(SECAGG_VICTIMS.values())
    assert {secagg.codes[f"client-{i}"] for i in victims} == {-signal.SIGKILL}
    assert [secagg.codes[f"client-{i}"] for i in range(6) if i not in victims] == [0, 0]
    weights, rows = run_directory(secagg.out)
    killed = Faults(before={client: step for step, client in SECAGG_VICTIMS.items()})
    expected, records = reference_run(secagg.run, joined=range(6), faults={2: killed})
    assert same_weights(weights, expected)  # the same weights as an uninterrupted run in process
    assert rows[1]["dropouts"] == records[1].aggregation["dropouts"]
    assert sum(rows[1]["dropouts"].values()) == len(victims)
    assert [(r["status"], r["survivors"]) for r in rows] == [("ok", 6), ("ok", 3)]


# ---- DP-SGD under active secure aggregation: ledgers on the clients' disks --------------------

DP_ROUNDS = 3
DP_VICTIMS = (0, 1)


@pytest.fixture(scope="module")
def dp_secagg(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    directory = tmp_path_factory.mktemp("dp") / "federation"
    run = RunConfig.from_mapping(
        {
            "dataset": "digits",
            "model": "mlp",
            "clients": 4,
            "rounds": DP_ROUNDS,
            "local_epochs": 1,
            "dp": True,
            "noise_multiplier": 1.0,
            "secagg": True,
            "active_adversary": True,
        }
    )
    toml = write_federation(directory, pki, run, enrolled=range(4), step_deadline=PROCESS_TIMEOUT)
    with Processes() as processes:
        first = start_server(processes, toml, environment={FAULT_VARIABLE: "SIGKILL@1"})
        members = start_clients(
            processes,
            toml,
            pki,
            range(4),
            environment=lambda i: (
                kill_at(DP_ROUNDS, 1, steps=ACTIVE_SECAGG_STEPS) if i in DP_VICTIMS else None
            ),
            ledgers=True,
        )
        codes = {"first server": processes.wait(first, timeout=PROCESS_TIMEOUT)}
        resumed = start_server(processes, toml, resume=True)
        codes["resumed server"] = processes.wait(resumed, timeout=PROCESS_TIMEOUT)
        codes.update({f"client-{i}": processes.wait(members[i], timeout=PROCESS_TIMEOUT) for i in range(4)})
    return Outcome(toml=toml, out=directory.parent / "run", run=run, codes=codes, refusals={})


def test_dp_secagg_round_below_threshold_aborts_and_is_recorded(dp_secagg: Outcome) -> None:
    assert dp_secagg.codes["first server"] == -signal.SIGKILL
    assert dp_secagg.codes["resumed server"] == 0
    assert [dp_secagg.codes[f"client-{i}"] for i in range(4)] == [-signal.SIGKILL] * 2 + [0, 0]
    _, rows = run_directory(dp_secagg.out)
    # the same federation without DP noise aborts the same way in process
    killed = Faults(before={client: 1 for client in DP_VICTIMS})
    _, records = reference_run(
        dataclasses.replace(dp_secagg.run, dp=None), joined=range(4), faults={DP_ROUNDS: killed}
    )
    assert [r["status"] for r in rows] == [r.status.value for r in records] == ["ok", "ok", "aborted"]
    assert rows[-1]["abort_step"] == records[-1].aggregation["abort_step"]
    assert rows[-1]["dropouts"] == records[-1].aggregation["dropouts"]
    assert "train_loss" not in rows[0]  # under DP the loss stays on the client
    privacy = json.loads((dp_secagg.out / "privacy.json").read_text())
    assert "own disk" in privacy["sample_level"]["ledgers"]


@pytest.mark.parametrize("client_id", range(4))
def test_each_client_ledger_counts_every_round_it_trained_once(dp_secagg: Outcome, client_id: int) -> None:
    run = dp_secagg.run
    assert run.dp is not None and run.dp.noise_multiplier is not None
    ledger = (dp_secagg.out.parent / f"ledger-{client_id}.json").read_bytes()
    events = json.loads(ledger)["clients"][0]["events"]
    # rounds 1 and 2 around the server's restart, and round 3, trained before the kill or abort
    assert [event["round_index"] for event in events] == list(range(1, DP_ROUNDS + 1))
    info = DATASETS[run.dataset]
    x, y = load_local_data(
        shard_path(dp_secagg.toml.parent, client_id),
        input_shape=info.input_shape,
        num_outputs=info.num_outputs,
        task=info.task,
    )
    same_client = ClientFactory(run, info=info, max_client_samples=len(y)).client(
        ClientShard(client_id, x, y)
    )
    trainer = same_client.trainer
    assert isinstance(trainer, DPSGDTrainer)
    trainer.import_ledger(ledger)
    batch_size = run.training.batch_size
    steps = run.training.local_epochs * math.ceil(len(y) / batch_size)
    reference = RDPAccountant()
    for _ in range(DP_ROUNDS * steps):
        reference.step(noise_multiplier=run.dp.noise_multiplier, sample_rate=batch_size / len(y))
    assert trainer.epsilon(client_id) == pytest.approx(reference.get_epsilon(delta=run.dp.delta), rel=1e-9)


# ---- quick refusals, in this process ---------------------------------------------------------


def _main_exit(argv: list[str]) -> tuple[int, str]:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, " ".join(errors.getvalue().split())


def test_the_server_refuses_a_used_run_directory_and_an_unfinished_run_without_resume(
    pki: Pki, tmp_path: Path
) -> None:
    run = RunConfig(dataset="digits", model="mlp", clients=2, rounds=1)
    toml = write_federation(tmp_path / "federation", pki, run, enrolled=range(2), step_deadline=5.0)
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text("{}\n")
    code, stderr = _main_exit(["server", "--federation", str(toml), "--out", str(used)])
    assert (code, "--out" in stderr) == (2, True)
    stale = tmp_path / "stale"
    checkpoint_folder(stale).mkdir()
    code, stderr = _main_exit(["server", "--federation", str(toml), "--out", str(stale)])
    assert (code, "--resume" in stderr) == (2, True)
    code, stderr = _main_exit(
        ["server", "--federation", str(toml), "--out", str(tmp_path / "new"), "--resume"]
    )
    assert (code, "nothing to resume" in stderr) == (2, True)


def test_the_server_stops_when_too_few_clients_come_and_keeps_nothing_to_resume(
    pki: Pki, tmp_path: Path
) -> None:
    run = RunConfig(dataset="digits", model="mlp", clients=2, rounds=1)
    toml = write_federation(tmp_path / "federation", pki, run, enrolled=range(2), step_deadline=5.0)
    spec = FederationFile.load(toml)
    dataclasses.replace(spec, join_timeout_seconds=0.5).write(toml)
    out = tmp_path / "run"
    held_out = shard_path(toml.parent, 0)  # any data the model takes, read as the server's test set
    code, stderr = _main_exit(
        ["server", "--federation", str(toml), "--out", str(out), "--data", str(held_out)]
    )
    assert code == 1
    assert "2 enrolled client(s) are not connected" in stderr
    assert not out.exists() and not checkpoint_folder(out).exists()


@pytest.mark.parametrize("value", ["SIGKILL", "KILL@3", "SIGKILL@0", "SIGNOPE@2", "SIGKILL@3 "])
def test_a_malformed_fault_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=FAULT_VARIABLE):
        fault_from_environment({FAULT_VARIABLE: value})


def test_a_fault_names_a_signal_and_a_count() -> None:
    fault = fault_from_environment({FAULT_VARIABLE: "SIGSTOP@12"})
    assert fault is not None and (fault.signal, fault.at) == (signal.SIGSTOP, 12)
    assert fault_from_environment({}) is None and fault_from_environment({FAULT_VARIABLE: ""}) is None


def test_the_demo_federation_gives_each_client_its_simulation_shard(tmp_path: Path) -> None:
    toml = create_demo_federation(tmp_path, clients=3, rounds=2)
    spec = FederationFile.load(toml)
    assert spec.run.dp is not None and spec.run.secagg is not None and spec.run.rounds == 2
    assert spec.host == "127.0.0.1"
    info = DATASETS[spec.run.dataset]
    expected = build_federation(spec.run).shards
    for shard in expected:
        x, y = load_local_data(
            demo_shard_path(tmp_path, shard.client_id),
            input_shape=info.input_shape,
            num_outputs=info.num_outputs,
            task=info.task,
        )
        assert torch.equal(x, shard.x) and torch.equal(y, shard.y)
    assert spec.max_client_samples == max(len(shard) for shard in expected)
