"""FedAvg through secure aggregation (issue 5): same model as plain FedAvg up to the quantization
bound, survivors-only rounds under dropout, unchanged model below threshold, and a server side
that never holds one client's update."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from securefl.config import RunConfig, SecAggConfig
from securefl.errors import ConfigError, ThresholdNotMetError
from securefl.federation import build_federation, run_simulation
from securefl.fl.fedavg import WeightedMean
from securefl.fl.record import RoundStatus
from securefl.fl.secure_channel import SecureAggregationChannel, SecureAggregationRound
from securefl.fl.types import Contribution
from securefl.fl.vectors import to_vector
from securefl.protocols.secagg import decode as decode_message
from securefl.protocols.secagg import ring
from securefl.protocols.secagg.messages import MaskedInput


def _contributions(count: int, size: int, seed: int = 0) -> list[Contribution]:
    generator = torch.Generator().manual_seed(seed)
    contributions = []
    for client in range(count):
        weight = float(torch.randint(5, 60, (1,), generator=generator))
        delta = (torch.rand(size, generator=generator) - 0.5) * 0.6
        contributions.append(Contribution(client, delta * weight, weight, float(client)))
    return contributions


def _exact_fedavg(contributions: list[Contribution], size: int) -> torch.Tensor:
    """FedAvg of ``contributions`` from a zero model, in float64: the independent reference."""
    total = sum(c.weighted_delta.double() for c in contributions)
    return total / sum(c.weight for c in contributions) if contributions else torch.zeros(size)


def _assert_within(got: torch.Tensor, exact: torch.Tensor, bound: float) -> None:
    """``got`` is ``exact`` up to the quantization bound plus float32 rounding of the result."""
    slack = bound + 4 * torch.finfo(torch.float32).eps * exact.abs()
    assert torch.all((got.double() - exact).abs() <= slack)


def _channel(size: int, clients: int, **secagg) -> SecureAggregationChannel:
    return SecureAggregationChannel(
        config=SecAggConfig(**secagg), num_params=size, weight_bound=60, clients_per_round=clients, seed=0
    )


@pytest.mark.parametrize("secagg", [{}, {"bits": 20}, {"neighbors": 4}, {"active_adversary": True}])
def test_secure_round_equals_plain_fedavg_within_the_quantization_bound(secagg):
    contributions = _contributions(8, 300)
    start = torch.zeros(300)
    aggregate = _channel(300, 8, **secagg).aggregate(contributions, round_index=1)
    secure = WeightedMean()(start, aggregate)
    bound = aggregate.details["quantization_error_bound"]
    assert 0 < bound < 1e-2
    _assert_within(secure, _exact_fedavg(contributions, 300), bound)
    assert aggregate.weight_sum == sum(c.weight for c in contributions)  # integers: exact
    loss_step = float(_channel(300, 8, **secagg).codec_for(8).step[301])
    expected_loss = sum(c.train_loss * c.weight for c in contributions)
    assert aggregate.train_loss_sum == pytest.approx(expected_loss, abs=8 * loss_step)


def test_dropouts_give_fedavg_over_the_survivors():
    contributions = _contributions(10, 200, seed=1)
    aggregate = _channel(200, 10, dropout_rate=0.3, threshold=0.5).aggregate(contributions, round_index=3)
    survivors = set(aggregate.survivors)
    assert 5 <= len(survivors) < 10  # the seeded plan for round 3 drops some, keeps a quorum
    assert sum(aggregate.details["dropouts"].values()) >= 10 - len(survivors)
    kept = [c for c in contributions if c.client_id in survivors]
    got = WeightedMean()(torch.zeros(200), aggregate)
    _assert_within(got, _exact_fedavg(kept, 200), aggregate.details["quantization_error_bound"])


def test_clip_binds_and_is_reported():
    contributions = _contributions(4, 100)
    aggregate = _channel(100, 4, clip=0.1).aggregate(contributions, round_index=1)
    clipped = [((c.weighted_delta / c.weight).abs() > 0.1).float().mean() for c in contributions]
    assert aggregate.details["secagg_clipped_fraction"] == pytest.approx(float(sum(clipped) / 4), abs=1e-3)
    assert torch.all(aggregate.weighted_delta_sum.abs() <= 0.1 * aggregate.weight_sum + 1e-3)


def test_run_matches_plain_fedavg_and_aborted_rounds_leave_the_model_unchanged():
    base = {"dataset": "digits", "model": "mlp", "clients": 6, "rounds": 2, "local_epochs": 1, "seed": 2}
    plain = run_simulation(RunConfig(**base))
    secure = run_simulation(RunConfig(**base, secagg=SecAggConfig()))
    assert torch.allclose(
        to_vector(plain.model.parameters()), to_vector(secure.model.parameters()), atol=1e-5
    )
    assert [r.survivors for r in secure.records] == [6, 6]

    config = RunConfig(**base, secagg=SecAggConfig(threshold=6, dropout_rate=0.6))
    initial = to_vector(build_federation(config).eval_model.parameters())
    history = run_simulation(config)
    assert [r.status for r in history.records] == [RoundStatus.ABORTED, RoundStatus.ABORTED]
    assert torch.equal(to_vector(history.model.parameters()), initial)
    assert all("abort_step" in r.aggregation and "abort_step" in r.to_json() for r in history.records)


def _vectors_held(obj, *, length: int, seen: set[int] | None = None, depth: int = 4) -> list[np.ndarray]:
    """Every vector of ``length`` values reachable from ``obj`` through securefl objects'
    attributes and the containers in them (what a server-side object keeps between messages)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth < 0:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray | torch.Tensor):
        flat = obj.detach().numpy() if isinstance(obj, torch.Tensor) else obj
        return [flat.reshape(-1).copy()] if flat.size == length else []
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set | frozenset):
        children = list(obj)
    elif type(obj).__module__.startswith("securefl."):
        children = list(getattr(obj, "__dict__", {}).values())
        children += [getattr(obj, name) for name in getattr(type(obj), "__slots__", ()) if hasattr(obj, name)]
    else:
        return []
    return [v for child in children for v in _vectors_held(child, length=length, seen=seen, depth=depth - 1)]


def test_server_side_never_holds_an_individual_update(monkeypatch):
    """What the server half (:class:`SecureAggregationRound`) is given is masked ring data: every
    masked input that reaches ``receive`` differs from every client's encoded input, no payload
    carries an input's packed bytes, and no vector the server-side objects (the round, its
    nested ServerProtocol) keep between messages equals one; the strategy is handed only the
    Aggregate (sums)."""
    contributions = _contributions(5, 64, seed=4)
    channel = _channel(64, 5)
    length = channel.vector_length
    assert length == 67
    inputs: dict[int, np.ndarray] = {}  # what each client half actually encoded
    original_encode = SecureAggregationChannel.encode_input

    def record_input(self, contribution, *, params, round_index):
        vector = original_encode(self, contribution, params=params, round_index=round_index)
        inputs[contribution.client_id] = vector.copy()
        return vector

    monkeypatch.setattr(SecureAggregationChannel, "encode_input", record_input)
    received: list[np.ndarray] = []
    held: list[np.ndarray] = []
    payloads: list[bytes] = []
    original_receive, original_close = SecureAggregationRound.receive, SecureAggregationRound.close_step

    def spy_receive(self, client_id, payload):
        payloads.append(payload)
        message = decode_message(payload)
        if isinstance(message, MaskedInput):
            received.append(ring.unpack(message.packed, bits=message.bits, length=message.length))
        original_receive(self, client_id, payload)
        held.extend(_vectors_held(self, length=length))

    def spy_close(self):
        outgoing = original_close(self)
        held.extend(_vectors_held(self, length=length))
        return outgoing

    monkeypatch.setattr(SecureAggregationRound, "receive", spy_receive)
    monkeypatch.setattr(SecureAggregationRound, "close_step", spy_close)
    aggregate = channel.aggregate(contributions, round_index=1)
    assert sorted(inputs) == [0, 1, 2, 3, 4] and len(received) == 5
    assert held  # the server keeps ring vectors (at least the sum): the check below is not vacuous
    bits = channel.config.bits
    for vector in [*received, *held]:
        for inp in inputs.values():
            assert not np.array_equal(vector.astype(np.uint64), inp)
            # a masked vector agrees with the input on about 2^-32 of coordinates, not more
            assert np.mean(vector.astype(np.uint64) == inp) < 0.1
    for payload in payloads:
        assert not any(ring.pack(inp, bits) in payload for inp in inputs.values())
    handed = []
    monkeypatch.setattr(WeightedMean, "__call__", lambda self, params, agg: handed.append(agg) or params)
    WeightedMean()(torch.zeros(64), aggregate)
    assert handed == [aggregate]
    assert {f for f in vars(aggregate)} == {
        "weighted_delta_sum",
        "weight_sum",
        "survivors",
        "train_loss_sum",
        "details",
    }


def test_a_round_too_small_for_the_protocol_aborts_instead_of_crashing():
    channel = SecureAggregationChannel(
        config=SecAggConfig(threshold=4),
        num_params=50,
        weight_bound=60,
        clients_per_round=5,
        max_clients=10,
        seed=0,
    )
    with pytest.raises(ThresholdNotMetError, match="`secagg.threshold` 4 exceeds a round of 3 clients"):
        channel.aggregate(_contributions(3, 50), round_index=1)


def test_protocol_parameter_errors_name_the_config_field_and_the_cli_shows_its_flag():
    """protocols/ names its own parameters (`threshold`); the channel, which knows SecAggConfig,
    names the field (`secagg.threshold`), and the CLI renders that as --secagg-threshold."""
    from securefl.cli.flags import render

    channel = SecureAggregationChannel(
        config=SecAggConfig(threshold=4), num_params=50, weight_bound=60, clients_per_round=5, seed=0
    )
    with pytest.raises(ConfigError, match="`secagg.threshold` 4 exceeds a round of 3 clients") as caught:
        channel.params_for(3, None)
    assert "lower `secagg.threshold`" in str(caught.value)
    assert "lower --secagg-threshold" in render(str(caught.value))


def test_dp_fedavg_updates_stay_within_the_clip_norm_after_rounding():
    """DP-FedAvg's sensitivity is the clip norm: stochastic rounding must not push past it, and
    the data-dependent clip count is not released."""
    clip_norm = 0.5
    channel = SecureAggregationChannel(
        config=SecAggConfig(bits=16),
        num_params=400,
        weight_bound=1,
        clients_per_round=2,
        dp_clip_norm=clip_norm,
        seed=0,
    )
    generator = torch.Generator().manual_seed(5)
    for round_index in range(1, 30):
        delta = torch.randn(400, generator=generator)
        delta = delta * (clip_norm / delta.norm())  # exactly at the clip, as ClipUpdate leaves it
        codec = channel.codec_for(2)
        params = channel.round_parameters(2)
        encoded = channel.encode_input(
            Contribution(0, delta, 1.0, 0.0), params=params, round_index=round_index
        )
        decoded = codec.decode_sum(encoded, count=1)[:400]
        assert float(decoded.norm()) <= clip_norm
    aggregate = channel.aggregate([Contribution(i, delta, 1.0, 0.0) for i in range(2)], round_index=1)
    assert "secagg_clipped_fraction" not in aggregate.details


def test_a_ring_too_small_for_the_dp_clip_is_refused():
    with pytest.raises(ConfigError, match="raise `secagg.bits`"):
        SecureAggregationChannel(
            config=SecAggConfig(bits=8, clip=1.0),
            num_params=10_000,
            weight_bound=1,
            clients_per_round=2,
            dp_clip_norm=0.1,
            seed=0,
        )


def test_a_non_finite_update_leaves_the_round_as_a_dropout():
    """A NaN or inf update is not aggregated as -weight·clip: its client does not take part, the
    others are averaged without it, and the round records the count (issue 9, point 7)."""
    contributions = _contributions(5, 80, seed=6)
    nan_delta = contributions[2].weighted_delta.clone()
    nan_delta[3] = float("nan")
    inf_delta = contributions[4].weighted_delta.clone()
    inf_delta[0] = float("inf")
    broken = [
        *contributions[:2],
        Contribution(2, nan_delta, contributions[2].weight, 0.0),
        contributions[3],
        Contribution(4, inf_delta, contributions[4].weight, 0.0),
    ]
    aggregate = _channel(80, 5).aggregate(broken, round_index=1)
    assert aggregate.survivors == (0, 1, 3)
    assert aggregate.details["non_finite_dropped"] == 2
    kept = [contributions[i] for i in (0, 1, 3)]
    assert aggregate.weight_sum == sum(c.weight for c in kept)
    got = WeightedMean()(torch.zeros(80), aggregate)
    _assert_within(got, _exact_fedavg(kept, 80), aggregate.details["quantization_error_bound"])


def test_a_round_left_with_one_finite_update_aborts():
    contributions = _contributions(2, 30, seed=7)
    nan_delta = torch.full((30,), float("nan"))
    broken = [contributions[0], Contribution(1, nan_delta, contributions[1].weight, 0.0)]
    with pytest.raises(ThresholdNotMetError) as raised:
        _channel(30, 2).aggregate(broken, round_index=1)
    details = raised.value.details
    assert (details["survivors"], details["non_finite_dropped"]) == (0, 1)
    # The non-finite client is a dropout of the planned round of 2 before it advertises keys.
    assert (details["abort_step"], details["dropouts"]) == ("advertise_keys", {"advertise_keys": 1})


def test_a_non_finite_client_is_a_dropout_of_the_planned_round_which_keeps_its_threshold(monkeypatch):
    """Leaving a client out must not shrink the round's parameters: with 5 planned and one NaN
    update, the protocol still runs for 5 clients at the threshold of 5 (3), not of 4, on the
    server half and on every client half, and the server sees the NaN client as a dropout of the
    first step (it never advertised keys)."""
    contributions = _contributions(5, 30, seed=3)
    broken = contributions[:4] + [Contribution(4, torch.full((30,), float("nan")), 1.0, 0.0)]
    channel = _channel(30, 5)
    opened: list[SecureAggregationRound] = []
    encoded_with = []
    original_init, original_encode = SecureAggregationRound.__init__, SecureAggregationChannel.encode_input

    def spy_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        opened.append(self)

    def spy_encode(self, contribution, *, params, round_index):
        encoded_with.append((contribution.client_id, params))
        return original_encode(self, contribution, params=params, round_index=round_index)

    monkeypatch.setattr(SecureAggregationRound, "__init__", spy_init)
    monkeypatch.setattr(SecureAggregationChannel, "encode_input", spy_encode)
    aggregate = channel.aggregate(broken, round_index=1)
    [server_round] = opened
    assert (server_round.params.num_clients, server_round.params.threshold) == (5, 3)
    assert server_round.setup.participants == (0, 1, 2, 3, 4)
    assert sorted(c for c, _ in encoded_with) == [0, 1, 2, 3, 4]  # the NaN client tried too
    assert all(params == server_round.params for _, params in encoded_with)
    assert aggregate.survivors == (0, 1, 2, 3)
    assert aggregate.details["dropouts"] == {"advertise_keys": 1}
    assert aggregate.details["non_finite_dropped"] == 1
    assert channel.round_params() == [server_round.params]


def test_probing_the_smallest_round_is_quiet(recwarn, caplog):
    """smallest_round asks every size whether it runs; passive SecAgg+ rule warnings belong to the
    rounds that run, not to the probe (35 repeated warnings before)."""
    channel = SecureAggregationChannel(
        config=SecAggConfig(neighbors=4), num_params=50, weight_bound=1, clients_per_round=10, seed=0
    )
    recwarn.clear()
    caplog.clear()
    assert channel.smallest_round(40) == 5
    assert len(recwarn) == 0 and caplog.records == []
    assert not logging.getLogger("securefl.protocols.secagg.params").disabled
