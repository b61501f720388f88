"""Server checkpoints and --resume, without killing anything: a "kill" is dropping the server object
(its clients live on, as separate programs do), a resume is a freshly built server.

References: the uninterrupted simulation's final weights (run_simulation), Opacus' RDP accountant
for the user-level ε, the checkpoint file read back by safetensors itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant
from safetensors import safe_open

from securefl.config import CentralDPConfig, RunConfig, SecAggConfig
from securefl.deploy.checkpoint import CHECKPOINT_FILE, INTERRUPTED, ServerCheckpoints, check_resumable
from securefl.errors import CheckpointError, LedgerError
from securefl.federation import Programs, build_federation, build_programs, run_simulation
from securefl.fl.codec import decode
from securefl.fl.messages import Decline, DeclineReason
from securefl.fl.record import Evaluation, RoundRecord, RoundStatus
from securefl.fl.vectors import to_vector
from securefl.privacy import DPFedAvgServerUpdate
from securefl.transports.inprocess import InProcessTransport

PLAIN = RunConfig(dataset="digits", model="mlp", clients=4, rounds=4, local_epochs=1)
SECAGG = dataclasses.replace(PLAIN, secagg=SecAggConfig())
CENTRAL = dataclasses.replace(
    PLAIN, clients_per_round=2, central_dp=CentralDPConfig(noise_multiplier=1.3, clip_norm=0.5)
)


def programs(config: RunConfig) -> Programs:
    return build_programs(build_federation(config))


def run_rounds(programs: Programs, store: ServerCheckpoints, rounds: int) -> None:
    """The deployed server's loop: mark the round opened, run it, checkpoint it."""
    transport = InProcessTransport()
    for _ in range(rounds):
        store.open_round(programs.server.round_index + 1)
        transport.run_round(programs.server, programs.clients)
        store.save(programs.server)


def fresh_server_resumed(config: RunConfig, store: ServerCheckpoints, old: Programs) -> Programs:
    """A new server process: built anew, resumed from the store, rejoined by the living clients."""
    resumed = Programs(server=programs(config).server, clients=old.clients)
    store.resume(resumed.server)
    InProcessTransport().enrol(resumed.server, resumed.clients)
    return resumed


def started(config: RunConfig, tmp_path: Path) -> tuple[Programs, ServerCheckpoints]:
    first = programs(config)
    InProcessTransport().enrol(first.server, first.clients)
    return first, ServerCheckpoints(tmp_path, fingerprint=f"fingerprint of {config.to_json()}")


@pytest.mark.parametrize("config", [PLAIN, SECAGG], ids=["plain", "secagg"])
def test_resume_between_rounds_gives_the_uninterrupted_weights(tmp_path: Path, config: RunConfig) -> None:
    reference = to_vector(run_simulation(config).model.parameters())
    first, store = started(config, tmp_path)
    run_rounds(first, store, 2)
    uninterrupted_records = [r.to_json() for r in first.server.records]
    del first.server  # the server process is killed between rounds 2 and 3
    resumed = fresh_server_resumed(config, store, first)
    assert resumed.server.round_index == 2
    assert [r.to_json() for r in resumed.server.records] == uninterrupted_records
    run_rounds(resumed, store, 2)
    assert torch.equal(resumed.server.params, reference)
    assert [r.status for r in resumed.server.records] == [RoundStatus.OK] * 4
    assert store.load().round_index == 4


def test_checkpoint_file_holds_the_model_and_the_metrics_lines(tmp_path: Path) -> None:
    first, store = started(PLAIN, tmp_path)
    run_rounds(first, store, 2)
    with safe_open(str(tmp_path / CHECKPOINT_FILE), framework="pt") as stream:  # safetensors' own reader
        assert torch.equal(stream.get_tensor("params"), first.server.params)
        state = json.loads(stream.metadata()["securefl_checkpoint"])
    assert state["round_index"] == 2 and state["accountant_ledger"] is None and state["secagg"] == []
    loaded = store.load()
    assert [r.to_json() for r in loaded.records] == [r.to_json() for r in first.server.records]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE, "round-opened.json"]


def test_secagg_checkpoint_records_the_protocol_parameters(tmp_path: Path) -> None:
    first, store = started(SECAGG, tmp_path)
    run_rounds(first, store, 1)
    (params,) = store.load().secagg
    assert (params["num_clients"], params["threshold"], params["bits"]) == (4, 3, 32)  # majority of 4


def test_non_finite_figures_survive_the_checkpoint(tmp_path: Path) -> None:
    """A diverged round's NaN test loss and an infinite ε come back as they were (JSON has neither)."""
    first, store = started(PLAIN, tmp_path)
    run_rounds(first, store, 1)
    ok = first.server.records[0]
    diverged = RoundRecord(
        round=2,
        status=RoundStatus.DIVERGED,
        clients=4,
        excluded_clients=0,
        survivors=4,
        evaluation=Evaluation(loss=math.nan, accuracy=0.1),
        train_loss=math.inf,
        divergence="the test loss became NaN or infinite",
        aggregation={"bound": -math.inf, "per_step": [1, 2]},
        privacy={"epsilon_max": math.inf},
    )
    first.server.round_index = 2
    store.save(first.server, [ok, diverged])
    restored = store.load().records[1]
    assert math.isnan(restored.evaluation.loss) and restored.evaluation.accuracy == 0.1
    assert restored.train_loss == math.inf and restored.privacy == {"epsilon_max": math.inf}
    assert restored.aggregation == {"bound": -math.inf, "per_step": [1, 2]}
    assert restored.to_json() == diverged.to_json() and restored.status is RoundStatus.DIVERGED


def test_server_killed_during_a_round_records_it_aborted_and_goes_on(tmp_path: Path) -> None:
    first, store = started(PLAIN, tmp_path)
    run_rounds(first, store, 2)
    after_round_2 = first.server.params.clone()
    store.open_round(3)
    requests = first.server.start_round()
    for client_id, request in requests:  # the clients train round 3 ...
        first.clients[client_id].receive(request)
    del first.server  # ... and the server dies before it has their updates

    resumed = fresh_server_resumed(PLAIN, store, first)
    interrupted = resumed.server.records[2]
    assert (interrupted.round, interrupted.status, interrupted.abort_reason) == (
        3,
        RoundStatus.ABORTED,
        INTERRUPTED,
    )
    assert torch.equal(resumed.server.params, after_round_2)  # FedAvg: an empty round changes nothing
    assert store.load().round_index == 3  # the abort itself is checkpointed
    # Why round 3 is not replayed: a client that trained it refuses it again.
    client_id, request = requests[0]
    (reply,) = resumed.clients[client_id].receive(request)
    assert isinstance(decode(reply), Decline) and decode(reply).reason is DeclineReason.REFUSED

    run_rounds(resumed, store, 1)
    final = resumed.server.records[3]
    assert (final.round, final.status, final.clients, final.survivors) == (4, RoundStatus.OK, 4, 4)


def test_server_killed_in_its_first_round_resumes_without_a_checkpoint(tmp_path: Path) -> None:
    first, store = started(PLAIN, tmp_path)
    store.open_round(1)
    first.server.start_round()
    resumed = fresh_server_resumed(PLAIN, store, first)
    assert [(r.round, r.status) for r in resumed.server.records] == [(1, RoundStatus.ABORTED)]
    run_rounds(resumed, store, 1)
    assert resumed.server.records[-1].status is RoundStatus.OK


def opacus_epsilon(config: RunConfig, rounds: int) -> float:
    """User-level ε of ``rounds`` Poisson-sampled Gaussian rounds, from Opacus directly."""
    central = config.central_dp
    accountant = RDPAccountant()
    accountant.history = [(central.noise_multiplier, config.sampled_clients / config.clients, rounds)]
    return accountant.get_epsilon(delta=central.delta)


def test_dp_fedavg_counts_each_round_once_across_a_kill_during_a_round(tmp_path: Path) -> None:
    first, store = started(CENTRAL, tmp_path)
    run_rounds(first, store, 2)
    store.open_round(3)
    for client_id, request in first.server.start_round():
        first.clients[client_id].receive(request)
    del first.server

    resumed = fresh_server_resumed(CENTRAL, store, first)
    assert resumed.server.round_index == 3
    again = fresh_server_resumed(CENTRAL, store, resumed)  # killed again at once, resumed again
    assert again.server.round_index == 3 and len(again.server.records) == 3
    run_rounds(again, store, 1)

    (accountant,) = again.server.accountants
    ledger = accountant.ledger()["user_level"]
    assert ledger["rounds"] == 4  # rounds 1, 2, the interrupted 3 (counted once), 4
    assert ledger["epsilon"] == pytest.approx(opacus_epsilon(CENTRAL, 4), rel=1e-9)
    uninterrupted = DPFedAvgServerUpdate(
        noise_multiplier=1.3, clip_norm=0.5, delta=1e-5, clients=4, clients_per_round=2
    )
    expected = [uninterrupted.epsilon_after(r) for r in range(1, 5)]
    assert ledger["epsilon_after_each_round"] == pytest.approx(expected, rel=1e-12)
    assert [r.privacy["user_epsilon"] for r in again.server.records] == pytest.approx(expected, rel=1e-12)


def test_dp_fedavg_ledger_round_trip_and_refusals() -> None:
    def update(**changes) -> DPFedAvgServerUpdate:
        settings = {
            "noise_multiplier": 1.0,
            "clip_norm": 1.0,
            "delta": 1e-5,
            "clients": 10,
            "clients_per_round": 3,
        }
        return DPFedAvgServerUpdate(**{**settings, **changes}, seed=0)

    source = update()
    for _ in range(3):
        source(torch.zeros(2), _empty(2))
    taker = update()
    taker.import_ledger(source.export_ledger())
    assert taker.ledger() == source.ledger() and taker.rounds == 3

    with pytest.raises(LedgerError, match="noise_multiplier 1.0 \\(here 2.0\\)"):
        update(noise_multiplier=2.0).import_ledger(source.export_ledger())
    ahead = update()
    for _ in range(4):
        ahead(torch.zeros(2), _empty(2))
    with pytest.raises(LedgerError, match="never goes backwards"):
        ahead.import_ledger(source.export_ledger())
    assert ahead.rounds == 4  # refused: it keeps its own count
    with pytest.raises(LedgerError, match="not JSON"):
        ahead.import_ledger(b"\xff")


def _empty(size: int):
    from securefl.fl.types import Aggregate

    return Aggregate.empty(torch.zeros(size))


# --------------------------------------------------------------------------- refusals


def test_truncated_or_corrupt_checkpoint_is_refused_and_left_alone(tmp_path: Path) -> None:
    first, store = started(PLAIN, tmp_path)
    run_rounds(first, store, 1)
    path = tmp_path / CHECKPOINT_FILE
    whole = path.read_bytes()

    path.write_bytes(whole[:-7])
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        store.load()
    assert path.read_bytes() == whole[:-7]  # nothing deleted or rewritten

    flipped = bytearray(whole)
    flipped[-1] ^= 0x01  # a bit of the model's last float
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="digest does not match"):
        store.load()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        store.resume(programs(PLAIN).server)


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    first, store = started(PLAIN, tmp_path)
    run_rounds(first, store, 1)
    InProcessTransport().run_round(first.server, first.clients)

    def killed(source: str, target: str) -> None:
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(OSError, match="killed"):
        store.save(first.server)
    monkeypatch.undo()
    assert store.load().round_index == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE, "round-opened.json"]


def test_checkpoint_of_another_federation_is_refused(tmp_path: Path) -> None:
    first, store = started(PLAIN, tmp_path)
    run_rounds(first, store, 1)
    with pytest.raises(CheckpointError, match="another federation"):
        ServerCheckpoints(tmp_path, fingerprint="another").load()


def test_nothing_to_resume_and_a_marker_ahead_of_the_checkpoint(tmp_path: Path) -> None:
    first, store = started(PLAIN, tmp_path)
    with pytest.raises(CheckpointError, match="nothing to resume.*without resuming"):
        store.resume(first.server)
    run_rounds(first, store, 1)
    store.open_round(3)
    with pytest.raises(CheckpointError, match="round 3 was opened but .* holds round 1"):
        store.resume(programs(PLAIN).server)


def test_secagg_parameters_that_changed_are_refused(tmp_path: Path) -> None:
    first, store = started(SECAGG, tmp_path)
    run_rounds(first, store, 1)
    other = programs(dataclasses.replace(SECAGG, secagg=SecAggConfig(bits=40))).server
    with pytest.raises(CheckpointError, match="secure-aggregation parameters"):
        store.resume(other)


def test_distributed_dp_accounting_cannot_be_checkpointed_yet() -> None:
    config = dataclasses.replace(
        PLAIN,
        secagg=SecAggConfig(bits=20),
        central_dp=CentralDPConfig(distributed=True, client_sampling="fixed"),
    )
    with pytest.raises(CheckpointError, match="`central_dp.distributed`"):
        check_resumable(programs(config).server)
    check_resumable(programs(CENTRAL).server)  # DP-FedAvg's accountant can
