"""A run whose model or loss becomes non-finite stops at that round, keeps the rounds before it,
and says which round and what to try; the CLI exits 2 and marks the run directory as diverged."""

from __future__ import annotations

import dataclasses
import json
import math

import torch

from securefl.cli.app import main
from securefl.config import RunConfig
from securefl.federation import build_federation, run_simulation
from securefl.fl.fedavg import WeightedMean
from securefl.fl.record import RoundStatus

BASE = dict(dataset="digits", model="mlp", clients=3, rounds=5, lr=0.05, batch_size=16, local_epochs=1)


class _PoisonedFrom:
    """FedAvg's server update, except that from round ``round`` on one weight becomes NaN."""

    def __init__(self, round: int) -> None:
        self.round = round
        self.calls = 0

    def __call__(self, global_params: torch.Tensor, aggregate) -> torch.Tensor:
        self.calls += 1
        params = WeightedMean()(global_params, aggregate)
        if self.calls >= self.round:
            params = params.clone()
            params[0] = math.nan
        return params


def test_a_non_finite_model_stops_the_run_at_that_round_and_keeps_the_rounds_before():
    config = RunConfig(**BASE)
    fed = dataclasses.replace(build_federation(config), server_update=_PoisonedFrom(3))
    history = run_simulation(config, federation=fed)
    assert [r.status for r in history.records] == [RoundStatus.OK, RoundStatus.OK, RoundStatus.DIVERGED]
    assert all(r.evaluation is not None and r.evaluation.finite for r in history.records[:2])
    assert history.status == "diverged"
    assert "round 3" in history.diverged and "weights became NaN" in history.diverged
    assert "`lr`" in history.diverged  # what to try, in the library's own terms
    # The model kept is the last finite one: the model after round 2, which round 3 started from.
    kept = torch.cat([p.detach().reshape(-1) for p in history.model.parameters()])
    assert bool(torch.isfinite(kept).all())
    two_rounds = dataclasses.replace(build_federation(config), server_update=_PoisonedFrom(99))
    reference = run_simulation(dataclasses.replace(config, rounds=2), federation=two_rounds)
    expected = torch.cat([p.detach().reshape(-1) for p in reference.model.parameters()])
    assert torch.equal(kept, expected)


def test_a_finite_run_is_finished():
    history = run_simulation(RunConfig(**{**BASE, "rounds": 2}))
    assert history.status == "finished" and history.diverged is None
    assert all(r.status is RoundStatus.OK for r in history.records)


def test_the_cli_exits_2_with_one_line_and_marks_the_run_as_diverged(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", "--dataset", "boston", "--model", "mlp", "--clients", "2", "--rounds", "4"]
        + ["--lr", "1", "--out", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "diverged in round 1" in err and "--lr" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert json.loads((out / "status.json").read_text())["status"] == "diverged"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["status"] for row in rows] == ["diverged"]
    assert (out / "model.safetensors").exists()


def test_an_audit_of_a_diverged_run_exits_2_instead_of_a_verdict(tmp_path, capsys):
    out = tmp_path / "audit"
    code = main(
        ["audit", "--dp", "--dataset", "boston", "--model", "mlp", "--clients", "2", "--rounds", "2"]
        + ["--canaries", "20", "--lr", "1e30", "--out", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "diverged in round 1" in err and "--lr" in err and "Traceback" not in err


def test_a_round_diverges_when_every_client_that_answered_sent_nan_even_if_others_were_silent():
    from securefl.config import SecAggConfig

    config = RunConfig(
        **{**BASE, "clients": 6, "rounds": 3, "lr": 1e6},
        secagg=SecAggConfig(bits=40, threshold=2, dropout_rate=0.6),
    )
    fed = build_federation(config)
    silent = fed.channel.simulated_dropouts(1, list(range(6))).before  # crash before the request
    assert 0 in silent.values()  # this seed has a client that never hears of round 1
    history = run_simulation(config, federation=fed)
    first = history.records[0]
    assert first.status is RoundStatus.DIVERGED and first.survivors == 0
    assert 0 < first.declined["non_finite_update"] < 6
    assert len(history.records) == 1


def test_a_run_stops_early_when_too_few_clients_can_still_train_for_a_secure_round():
    from securefl.config import DPConfig, SecAggConfig

    config = RunConfig(
        **{**BASE, "dataset": "boston", "model": "mlp", "clients": 4, "rounds": 8, "lr": 0.001}
        | {"batch_size": 8, "clients_per_round": 3},
        dp=DPConfig(noise_multiplier=1.0, target_epsilon=6.0),
        secagg=SecAggConfig(bits=40),
    )
    history = run_simulation(config)
    assert history.status == "stopped_early"
    assert "can still train" in history.stopped_early
    assert all(r.status is not RoundStatus.ABORTED for r in history.records)
