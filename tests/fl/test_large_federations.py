"""Large federations (issue 12): ``secagg.neighbors`` auto and clients that are their shard rows
until they are sampled.

References: :func:`~securefl.protocols.secagg.choose_parameters` itself for the parameters auto
must choose, the same run with those parameters given explicitly, and the same rounds run by
client programs that are all built up front and kept alive (what ``build_programs`` did before
the pool) for the pool's results.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl import RunConfig, run_simulation
from securefl.cli.app import main
from securefl.config import CentralDPConfig, DPConfig, SecAggConfig
from securefl.errors import ConfigError, RemoteProtocolError
from securefl.federation import (
    Federation,
    build_aggregation,
    build_federation,
    build_programs,
    client_program,
)
from securefl.fl import codec
from securefl.fl.client import FederatedClient
from securefl.fl.client_pool import ClientPool
from securefl.fl.messages import Decline, DeclineReason, TrainRequest
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.protocols.secagg import RoundSetup, choose_parameters, encode_setup
from securefl.transports.inprocess import InProcessTransport

DIGITS = dict(dataset="digits", model="mlp", lr=0.1, batch_size=8, local_epochs=1, workers=1)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # run_simulation sets the process-wide count
    yield
    torch.set_num_threads(threads)


# ---- secagg.neighbors auto --------------------------------------------------------------------


def _secure_channel(config: RunConfig) -> SecureAggregationChannel:
    channel = build_aggregation(config, num_params=50, max_client_samples=20)
    assert isinstance(channel, SecureAggregationChannel)
    return channel


def _reference(clients: int, dropout: float, colluders: float, active: bool = False):
    """choose_parameters' choice, or None where it finds none."""
    try:
        return choose_parameters(
            clients, dropout_rate=dropout, corruption_rate=colluders, active_adversary=active
        )
    except ConfigError:
        return None


@settings(max_examples=40, deadline=None)
@given(
    clients=st.integers(min_value=4, max_value=400),
    dropout=st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.2]),
    colluders=st.sampled_from([0.0, 0.02, 0.1, 0.2]),
    active=st.booleans(),
)
def test_auto_takes_degree_threshold_and_colluders_from_choose_parameters(
    clients, dropout, colluders, active
):
    secagg = SecAggConfig(
        neighbors="auto",
        assumed_dropout_rate=dropout,
        assumed_colluder_rate=colluders,
        active_adversary=active,
        bits=48,
    )
    expected = _reference(clients, dropout, colluders, active)
    if expected is None:
        with pytest.raises(ConfigError, match="`secagg.assumed_dropout_rate`"):
            RunConfig(dataset="mnist-sample", clients=clients, secagg=secagg)
        return
    config = RunConfig(dataset="mnist-sample", clients=clients, secagg=secagg)
    server_side = _secure_channel(config).round_parameters(clients)
    client_side = _secure_channel(config).client(0)  # a client computes its own from the configuration
    setup = RoundSetup.create(list(range(clients)), vector_length=server_side_length(config), round_id=1)
    _, client_params = client_side.check_setup(round_index=1, setup=encode_setup(setup))
    for params in (server_side, client_params):
        assert (params.neighbors, params.threshold, params.max_colluders) == (
            expected.neighbors,
            expected.threshold,
            expected.max_colluders,
        )


def server_side_length(config: RunConfig) -> int:
    return _secure_channel(config).vector_length


def test_under_poisson_sampling_every_round_size_gets_its_own_choice():
    """A round's size varies under Poisson sampling: each size that can run has choose_parameters'
    k, t and c for that size, and the sizes that cannot run are those it finds nothing for."""
    config = RunConfig(
        dataset="mnist-sample",
        clients=60,
        clients_per_round=40,
        secagg=SecAggConfig(neighbors="auto", assumed_dropout_rate=0.05, assumed_colluder_rate=0.05),
        central_dp=CentralDPConfig(client_sampling="poisson"),
    )
    rounds = _secure_channel(config).round_params()
    assert [p.num_clients for p in rounds] == [
        n for n in range(2, 61) if _reference(n, 0.05, 0.05) is not None
    ]
    for params in rounds:
        expected = _reference(params.num_clients, 0.05, 0.05)
        assert (params.neighbors, params.threshold, params.max_colluders) == (
            expected.neighbors,
            expected.threshold,
            expected.max_colluders,
        )
    assert any(p.neighbors is not None for p in rounds) and any(p.neighbors is None for p in rounds)


def test_a_client_under_auto_still_refuses_a_round_of_another_size():
    config = RunConfig(**DIGITS, clients=40, secagg=SecAggConfig(neighbors="auto"))
    client = _secure_channel(config).client(0)
    smaller = RoundSetup.create(list(range(20)), vector_length=server_side_length(config), round_id=1)
    with pytest.raises(RemoteProtocolError, match="lists 20 clients"):
        client.check_setup(round_index=1, setup=encode_setup(smaller))


def test_an_auto_run_with_dropouts_at_the_assumed_rate_is_the_run_with_those_parameters_given():
    """60 clients, SecAgg+ chosen by auto at the default assumed rates (10% dropout, 10%
    colluders), 10% simulated dropout: every round completes over its survivors, bit for bit the
    run with choose_parameters' k, t and c given explicitly."""
    chosen = choose_parameters(60, dropout_rate=0.1, corruption_rate=0.1)
    assert chosen.neighbors is not None and chosen.neighbors < 59  # a sparse SecAgg+ graph
    base = dict(**DIGITS, clients=60, rounds=2, seed=3)
    auto = run_simulation(RunConfig(**base, secagg=SecAggConfig(neighbors="auto", dropout_rate=0.1)))
    given_ = run_simulation(
        RunConfig(
            **base,
            secagg=SecAggConfig(
                neighbors=chosen.neighbors,
                threshold=chosen.threshold,
                max_colluders=chosen.max_colluders,
                dropout_rate=0.1,
            ),
        )
    )
    assert all(record.status.value == "ok" for record in auto.records)
    dropped = sum(sum(r.aggregation["dropouts"].values()) for r in auto.records)
    assert dropped > 0 and all(r.survivors < 60 for r in auto.records)
    assert [r.survivors for r in auto.records] == [r.survivors for r in given_.records]
    for got, want in zip(auto.model.state_dict().values(), given_.model.state_dict().values(), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("secagg", "message"),
    [
        (dict(neighbors="auto", dropout_rate=0.2), "simulated `secagg.dropout_rate` 0.2 is above"),
        (
            dict(neighbors="auto", dropout_rate=0.2, assumed_dropout_rate=0.15),
            "`secagg.assumed_dropout_rate` 0.15",
        ),
        (dict(neighbors="auto", threshold=0.9), "but `secagg.threshold` 0.9 gives"),
        (dict(neighbors="auto", max_colluders=30), "but `secagg.max_colluders` is 30"),
        (
            dict(assumed_dropout_rate=0.1),
            "set `secagg.neighbors` auto, or drop `secagg.assumed_dropout_rate`",
        ),
        (dict(neighbors=6, assumed_colluder_rate=0.1), "drop `secagg.assumed_colluder_rate`"),
        (dict(neighbors="many"), "neither a count nor 'auto'"),
        (dict(neighbors="auto", assumed_dropout_rate=1.0), "assumed dropout rate 1.0 outside [0, 1)"),
        (dict(neighbors="auto", assumed_dropout_rate=0.5, assumed_colluder_rate=0.5), "no honest survivor"),
        (dict(neighbors="auto", assumed_colluder_rate=0.85), "finds no degree and threshold"),
    ],
)
def test_auto_refuses_what_contradicts_it(secagg, message):
    with pytest.raises(ConfigError) as error:
        RunConfig(dataset="mnist-sample", clients=100, secagg=SecAggConfig(**secagg))
    assert message in str(error.value)


def test_an_explicit_threshold_and_colluders_that_agree_with_auto_are_accepted():
    chosen = choose_parameters(100, dropout_rate=0.1, corruption_rate=0.1)
    secagg = SecAggConfig(neighbors="auto", threshold=chosen.threshold, max_colluders=chosen.max_colluders)
    config = RunConfig(dataset="mnist-sample", clients=100, secagg=secagg)
    assert _secure_channel(config).round_parameters(100).threshold == chosen.threshold


def test_cli_auto_prints_the_chosen_graph_and_refuses_a_simulation_above_the_assumption(tmp_path, capsys):
    chosen = choose_parameters(40, dropout_rate=0.1, corruption_rate=0.1)
    flags = ["train", "--dataset", "digits", "--model", "mlp", "--clients", "40", "--rounds", "1"]
    flags += ["--workers", "1", "--secagg", "--secagg-neighbors", "auto", "--dropout-rate", "0.1"]
    assert main([*flags, "--out", str(tmp_path / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"SecAgg+ with {chosen.neighbors} neighbours, threshold {chosen.threshold} for 40 clients" in out
    assert f"colluding with up to {chosen.max_colluders} client(s)" in out

    refused = tmp_path / "refused"
    assert main([*flags, "--dropout-rate", "0.3", "--out", str(refused)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--dropout-rate 0.3 is above the --secagg-assumed-dropout-rate 0.1" in err
    assert not refused.exists()


# ---- clients that are their shard rows until sampled -------------------------------------------


def _eager_clients(fed: Federation) -> dict[int, FederatedClient]:
    """Every client program built up front and kept: the reference the pool must equal."""
    architecture = copy.deepcopy(fed.eval_model)
    return {
        c: client_program(
            fed.config,
            shard=fed.shards[c],
            trainer=fed.trainers[c],
            transform=fed.transform,
            aggregation=fed.channel,
            architecture=architecture,
            signing_key=None if fed.signing_keys is None else fed.signing_keys[c],
        )
        for c in range(len(fed.shards))
    }


def _run(fed: Federation, clients, rounds: int) -> tuple[torch.Tensor, list]:
    programs = build_programs(fed)
    transport = InProcessTransport(faults_for=getattr(fed.channel, "simulated_dropouts", None))
    transport.enrol(programs.server, clients if clients is not None else programs.clients)
    pool = programs.clients
    for _ in range(rounds):
        transport.run_round(programs.server, clients if clients is not None else pool)
        if clients is None:
            assert isinstance(pool, ClientPool) and pool.built == 0  # every program parked
    return programs.server.params, programs.server.records


LAZY_RUNS = {
    "plain": dict(),
    "secagg+ with dropouts": dict(secagg=SecAggConfig(neighbors=4, threshold=2, dropout_rate=0.15, bits=40)),
    "active secagg": dict(secagg=SecAggConfig(active_adversary=True, bits=40)),
}


@pytest.mark.filterwarnings("ignore:secure-aggregation parameters break a rule")
@pytest.mark.parametrize("name", LAZY_RUNS)
def test_a_pool_of_parked_clients_gives_the_run_of_clients_kept_alive(name):
    """Clients sampled again and again (fraction 0.4 of 20 over 3 rounds) are rebuilt from their
    shard rows and memory each time: the model and every record equal those of programs built
    once and kept, bit for bit.  (At seed 1 no round drops more than 3 of its 8 clients, so SecAgg+
    with 4 neighbours and threshold 2 never aborts, whichever graph the round draws.)"""
    config = RunConfig(**DIGITS, clients=20, fraction=0.4, rounds=3, seed=1, **LAZY_RUNS[name])
    fed = build_federation(config)
    # No trainer keeps state across rounds: both runs share them, each server with its own model.
    eager_fed = dataclasses.replace(fed, eval_model=copy.deepcopy(fed.eval_model))
    lazy_params, lazy_records = _run(fed, None, config.rounds)
    eager_params, eager_records = _run(eager_fed, _eager_clients(eager_fed), config.rounds)
    assert torch.equal(lazy_params, eager_params)
    assert [_comparable(r) for r in lazy_records] == [_comparable(r) for r in eager_records]
    assert all(r.status.value == "ok" for r in lazy_records)


def _comparable(record) -> dict:
    """A round's record without its timings."""
    return {k: v for k, v in record.to_json().items() if "seconds" not in k}


def test_parked_dp_sgd_clients_keep_their_ledgers():
    """DP-SGD's noise is secret, so the models differ; what each client spent does not: every
    client's ledger after three rounds is the one a client kept alive holds."""
    config = RunConfig(**DIGITS, clients=8, fraction=0.5, rounds=3, dp=DPConfig(noise_multiplier=1.0))
    lazy_fed, eager_fed = build_federation(config), build_federation(config)
    _run(lazy_fed, None, config.rounds)
    _run(eager_fed, _eager_clients(eager_fed), config.rounds)
    for client_id in range(8):
        lazy, eager = lazy_fed.trainers[client_id], eager_fed.trainers[client_id]
        assert lazy.export_ledger() == eager.export_ledger()  # type: ignore[attr-defined]
    events = sum(len(r.events) for t in lazy_fed.trainers.values() for r in t.privacy_ledger.clients.values())
    assert events == config.rounds * config.sampled_clients  # every sampled client recorded its round


def test_a_rebuilt_client_remembers_its_rounds_and_round_id_guard():
    """After a round a client exists only as its memory; rebuilt, it refuses to train that round
    again (a replay) and its secure-aggregation half holds the guard of the rounds it took part in."""
    config = RunConfig(**DIGITS, clients=6, rounds=1, secagg=SecAggConfig(bits=40))
    fed = build_federation(config)
    programs = build_programs(fed)
    pool = programs.clients
    assert isinstance(pool, ClientPool)
    transport = InProcessTransport()
    transport.enrol(programs.server, pool)
    built = weakref.ref(pool[2])  # a program built outside a round
    pool.park()
    transport.run_round(programs.server, pool)
    gc.collect()
    assert built() is None and pool.built == 0  # nothing of the programs is left

    client = pool[2]
    assert client.aggregation.guard.seen == {1}  # type: ignore[attr-defined]
    setup = RoundSetup.create(list(range(6)), vector_length=fed.channel.vector_length, round_id=1)
    replay = TrainRequest(1, 2, programs.server.params, (), encode_setup(setup))
    (reply,) = client.receive(codec.encode(replay))
    declined = codec.decode(reply)
    assert isinstance(declined, Decline) and declined.reason is DeclineReason.REFUSED
    assert "already trained" in declined.detail


def test_shard_rows_are_the_partitions_rows_copied_when_asked():
    fed = build_federation(RunConfig(**DIGITS, clients=7))
    for client_id, rows in enumerate(fed.parts):
        shard = fed.shards[client_id]
        assert shard.client_id == client_id and len(shard) == len(rows)
        assert torch.equal(shard.x, fed.dataset.train_x[rows]) and torch.equal(
            shard.y, fed.dataset.train_y[rows]
        )
        assert shard.x.untyped_storage().data_ptr() != fed.dataset.train_x.untyped_storage().data_ptr()
    assert [s.client_id for s in fed.shards[-2:]] == [5, 6]
    with pytest.raises(IndexError):
        fed.shards[7]
