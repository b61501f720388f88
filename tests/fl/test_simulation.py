"""The simulation end to end through the Python API: determinism, learning, weighting."""

from __future__ import annotations

import dataclasses

import torch
from torch.nn.utils import parameters_to_vector

from securefl.config import RunConfig
from securefl.data import load_dataset
from securefl.federation import build_federation, client_generator, run_simulation


def _params(history) -> torch.Tensor:
    return parameters_to_vector(history.model.parameters()).detach()


def test_same_seed_gives_bit_identical_weights_and_other_seed_does_not():
    config = RunConfig(
        dataset="digits",
        model="cnn",
        clients=4,
        clients_per_round=3,
        rounds=2,
        local_epochs=1,
        batch_size=32,
        seed=3,
    )
    first, second = run_simulation(config), run_simulation(config)
    assert torch.equal(_params(first), _params(second))
    assert first.records[-1].evaluation == second.records[-1].evaluation
    assert first.metric("test_loss") == second.metric("test_loss")
    other = run_simulation(dataclasses.replace(config, seed=4))
    assert not torch.equal(_params(first), _params(other))


def test_round_records_carry_the_documented_fields():
    history = run_simulation(RunConfig(dataset="digits", model="mlp", clients=5, rounds=2, local_epochs=1))
    assert [r.round for r in history.records] == [1, 2]
    assert history.status == "finished" and history.diverged is None
    for record in history.records:
        row = record.to_json()  # the line written to metrics.jsonl
        assert {
            "round",
            "status",
            "train_loss",
            "test_loss",
            "test_accuracy",
            "clients",
            "survivors",
            "seconds",
            "bytes_up",
            "bytes_down",
        } <= row.keys()
        assert record.clients == row["clients"] == 5
        assert record.status == row["status"] == "ok"
        assert record.evaluation is not None and row["test_loss"] == record.evaluation.loss
        assert record.bytes_up > 0 and record.bytes_down > 0 and record.seconds > 0
    assert sum(row["n"] for row in history.partition) == 1438


def test_federated_round_equals_hand_weighted_average_of_client_runs():
    """One round through run_simulation equals the sample-weighted mean of each client's own run."""
    config = RunConfig(
        dataset="digits",
        model="mlp",
        clients=3,
        rounds=1,
        local_epochs=1,
        batch_size=50,
        partition="dirichlet",
        alpha=0.3,
        seed=1,
    )
    federation = build_federation(config)
    start = parameters_to_vector(federation.eval_model.parameters()).detach().clone()
    deltas, counts = [], []
    for shard in federation.shards:
        update = federation.trainers[shard.client_id].train(
            global_params=start,
            shard=shard,
            round_index=1,
            generator=client_generator(config.seed, 1, shard.client_id),
        )
        deltas.append(update.delta.double())
        counts.append(len(shard))
    assert len(set(counts)) > 1  # unequal shards, so weighting matters
    expected = start.double() + sum(n * d for n, d in zip(counts, deltas, strict=False)) / sum(counts)
    history = run_simulation(config, federation=build_federation(config))
    assert torch.allclose(_params(history).double(), expected, atol=1e-6)


def test_learns_under_label_skew():
    dataset = load_dataset("digits")
    config = RunConfig(
        dataset="digits",
        model="mlp",
        clients=10,
        rounds=8,
        local_epochs=2,
        batch_size=16,
        lr=0.1,
        partition="dirichlet",
        alpha=0.5,
    )
    history = run_simulation(config, federation=build_federation(config, dataset=dataset))
    chance = 1 / dataset.num_outputs
    assert history.final.evaluation.accuracy > 0.8 > 5 * chance


def test_regression_reports_mse_and_r2():
    history = run_simulation(
        RunConfig(
            dataset="boston",
            model="mlp",
            clients=4,
            rounds=8,
            local_epochs=2,
            batch_size=16,
            lr=0.003,
            momentum=0.5,
        )
    )
    last = history.records[-1].to_json()
    assert {"test_mse", "test_r2"} <= last.keys() and "test_accuracy" not in last
    assert last["test_r2"] > 0.5
    assert history.records[0].to_json()["test_mse"] > last["test_mse"]
    assert history.final.evaluation.r2 == last["test_r2"]
