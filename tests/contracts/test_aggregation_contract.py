"""The :class:`~securefl.fl.types.Aggregation` contract, run on every channel in the package.

In the style of dp_accounting's accountant test suite: one list of cases (:data:`CASES`) builds
each implementation (the secure channel in each of its modes), and every test runs on all of them.
A channel must:

- sum: ``aggregate`` over 3 to 6 clients equals the float64 sum of the contributions (torch, the
  independent reference) within the channel's documented error -- float32 rounding for a plain
  sum, the quantization bound ``details["quantization_error_bound"]`` (per unit of weight) for
  secure aggregation, the released noise (``details["released_noise_variance"]``, six standard
  deviations per coordinate, with a small noise multiplier on a wide ring) for distributed DP --
  with every participant a survivor when nobody drops out;
- be two programs: its server half and client halves, run by hand through
  :func:`securefl.fl.turns.run_turns`, give the sum ``aggregate`` gives, and the server half's
  ``result`` stays ``None`` until the last step closes;
- refuse (:class:`~securefl.errors.RemoteProtocolError`) a payload from a client that is not a
  participant, and a second payload from the same client;
- abort (:class:`~securefl.errors.RoundAbortedError`) and release nothing when fewer clients
  than the channel's minimum contribute: zero for a plain sum, one for secure aggregation, or when
  nobody answers at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch
from contract_helpers import implementations, is_aggregation, qualified_name
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.audit.observe import ObservedChannel
from securefl.config import SecAggConfig
from securefl.errors import RemoteProtocolError, RoundAbortedError
from securefl.fl.fedavg import PlainSum
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.fl.turns import NO_FAULTS, Faults, run_turns
from securefl.fl.types import Aggregate, Aggregation, AggregationClient, AggregationRound, Contribution
from securefl.privacy.distributed import DistributedDPChannel
from securefl.protocols.crypto import keys

NUM_PARAMS = 40
MAX_CLIENTS = 6
WEIGHT_BOUND = 20
CLIP = 1.0
"""Every update coordinate lies within the secure channel's clip (its default, 1.0); distributed DP
gets updates of L2 norm below its clip norm (1.0), with weight 1, as ClipUpdate sends them."""


@dataclass(frozen=True)
class ChannelCase:
    id: str
    implementation: type
    build: Callable[[], Aggregation]
    kind: str
    """``plain`` (float32 sum), ``secure`` (fixed point) or ``distributed`` (noised integers)."""
    min_clients: int
    """The fewest contributions a round releases a sum of: 1 for a plain sum, 2 for secure
    aggregation (one client's "sum" is its update), 3 for SecAgg+ with 2 neighbours (a round needs
    more clients than neighbours)."""
    signed: bool = False
    """Active adversary: each client half signs with its own key, which the server knows."""

    @property
    def deterministic(self) -> bool:
        return self.kind != "distributed"


MIN_PLANNED = 3
"""The planned round of the secure channels; with ``max_clients`` they run every size from the
smallest runnable one up to ``MAX_CLIENTS`` (Poisson-sampled rounds), and a client refuses any
other size (a server shrinking a round to isolate a client)."""


def secure(**config) -> Callable[[], SecureAggregationChannel]:
    def build() -> SecureAggregationChannel:
        return SecureAggregationChannel(
            config=SecAggConfig(**config),
            num_params=NUM_PARAMS,
            weight_bound=WEIGHT_BOUND,
            clients_per_round=MIN_PLANNED,
            max_clients=MAX_CLIENTS,  # rounds of every runnable size up to MAX_CLIENTS
            seed=3,
        )

    return build


def distributed() -> DistributedDPChannel:
    """A wide ring and a small noise multiplier: the noise is small, but still the one to allow for."""
    inner = SecureAggregationChannel(
        config=SecAggConfig(bits=40),
        num_params=NUM_PARAMS,
        weight_bound=1,
        clients_per_round=MIN_PLANNED,
        max_clients=MAX_CLIENTS,
        seed=3,
    )
    return DistributedDPChannel(
        secure=inner,
        num_params=NUM_PARAMS,
        clip_norm=CLIP,
        noise_multiplier=0.01,
        delta=1e-5,
        max_clients=MAX_CLIENTS,
        seed=3,
    )


CASES = [
    ChannelCase("plain-sum", PlainSum, PlainSum, "plain", min_clients=1),
    ChannelCase(
        "plain-sum-of-the-model-size", PlainSum, lambda: PlainSum(vector_length=NUM_PARAMS), "plain", 1
    ),
    ChannelCase("secagg-passive-complete-graph", SecureAggregationChannel, secure(), "secure", 2),
    ChannelCase(
        "secagg-plus-neighbours", SecureAggregationChannel, secure(neighbors=2, max_colluders=0), "secure", 3
    ),
    ChannelCase(
        "secagg-active-adversary",
        SecureAggregationChannel,
        secure(active_adversary=True),
        "secure",
        2,
        signed=True,
    ),
    ChannelCase("distributed-dp", DistributedDPChannel, distributed, "distributed", 2),
    ChannelCase(
        "audit-observed-plain-sum",
        ObservedChannel,
        lambda: ObservedChannel(PlainSum(vector_length=NUM_PARAMS), client_id=0, canaries=3),
        "plain",
        1,
    ),
]

case = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


def contributions_for(case: ChannelCase, clients: Sequence[int], *, seed: int = 0) -> list[Contribution]:
    generator = torch.Generator().manual_seed(seed)
    made = []
    for client_id in clients:
        delta = (torch.rand(NUM_PARAMS, generator=generator) * 2 - 1) * CLIP
        if case.kind == "distributed":
            norm = float(torch.rand((), generator=generator)) * 0.9 * CLIP
            made.append(Contribution(client_id, delta / delta.norm() * norm, 1.0, 0.0))
        else:
            weight = float(torch.randint(1, WEIGHT_BOUND + 1, (), generator=generator))
            loss = float(torch.rand((), generator=generator)) * 3
            made.append(Contribution(client_id, delta * weight, weight, loss))
    return made


def assert_is_the_sum(case: ChannelCase, aggregate: Aggregate, contributions: list[Contribution]) -> None:
    """``aggregate`` against the float64 sum of ``contributions``, within the channel's error."""
    count = len(contributions)
    reference = torch.stack([c.weighted_delta.double() for c in contributions]).sum(0)
    weight = sum(c.weight for c in contributions)
    got = aggregate.weighted_delta_sum
    assert got.shape == reference.shape and got.dtype == contributions[0].weighted_delta.dtype
    assert aggregate.survivors == tuple(sorted(c.client_id for c in contributions))
    float32 = 4 * torch.finfo(torch.float32).eps * reference.abs()
    if case.kind == "plain":
        error = (
            count
            * torch.finfo(torch.float32).eps
            * sum(c.weighted_delta.double().abs() for c in contributions)
        )
        assert aggregate.weight_sum == pytest.approx(weight, rel=1e-12)
        expected_loss = sum(c.train_loss * c.weight for c in contributions)
        assert aggregate.train_loss_sum == pytest.approx(expected_loss, rel=1e-6)
    elif case.kind == "secure":
        bound = aggregate.details["quantization_error_bound"]
        assert 0 < bound < 1e-4
        error = bound * aggregate.weight_sum
        assert aggregate.weight_sum == weight  # integer weights: exact
        assert aggregate.details["secagg_clipped_fraction"] == 0  # the inputs are within the clip
        expected_loss = sum(c.train_loss * c.weight for c in contributions)
        assert aggregate.train_loss_sum == pytest.approx(expected_loss, abs=1e-4)
    else:
        variance = aggregate.details["released_noise_variance"]
        assert variance > 0
        assert aggregate.weight_sum == count and aggregate.train_loss_sum == 0.0  # weight 1, no loss
        error = 6 * math.sqrt(variance)
    deviation = (got.double() - reference).abs()
    assert bool((deviation <= error + float32).all()), f"largest deviation {float(deviation.max()):.3g}"


# ---- the two halves by hand -------------------------------------------------------------------


class ServerSide:
    """An aggregation round as the server side of :func:`run_turns`, refusing nothing silently,
    and recording ``result`` after every step it closes."""

    def __init__(self, aggregation_round: AggregationRound) -> None:
        self.round = aggregation_round
        self.results: list[Aggregate | None] = []

    def receive(self, client_id: int, data: bytes) -> None:
        self.round.receive(client_id, data)

    def close_step(self) -> list[tuple[int, bytes]]:
        outgoing = self.round.close_step()
        self.results.append(self.round.result)
        return outgoing

    @property
    def finished(self) -> bool:
        return self.round.result is not None


def client_side(half: AggregationClient, contribution: Contribution, *, round_index: int):
    started = False

    def receive(data: bytes) -> list[bytes]:
        nonlocal started
        if not started:
            started = True
            return half.start(contribution, round_index=round_index, setup=data, context=b"")
        return half.receive(data)

    return receive


def prepare(
    case: ChannelCase, channel: Aggregation, clients: Sequence[int]
) -> tuple[Aggregation, Callable[[int], AggregationClient]]:
    """The channel the server runs, and a maker of client halves (in active mode each client
    signs with its own key, which the server's channel knows)."""
    if not case.signed:
        return channel, channel.client
    signing = {c: keys.generate_signing_key() for c in clients}
    channel = channel.with_verify_keys({c: k.public_key() for c, k in signing.items()})
    return channel, lambda c: channel.client(c, signing_key=signing[c])


def halves(
    case: ChannelCase, channel: Aggregation, clients: Sequence[int]
) -> tuple[Aggregation, dict[int, AggregationClient]]:
    """The channel the server runs and one client half per client."""
    channel, make = prepare(case, channel, clients)
    return channel, {c: make(c) for c in clients}


def by_hand(
    case: ChannelCase,
    channel: Aggregation,
    contributions: list[Contribution],
    *,
    round_index: int,
    faults: Faults = NO_FAULTS,
) -> ServerSide:
    participants = sorted(c.client_id for c in contributions)
    channel, client_halves = halves(case, channel, participants)
    aggregation_round = channel.open_round(round_index=round_index, participants=participants, context=b"")
    assert aggregation_round.result is None
    server = ServerSide(aggregation_round)
    clients = {
        c.client_id: client_side(client_halves[c.client_id], c, round_index=round_index)
        for c in contributions
    }
    run_turns(server, clients, [(c, aggregation_round.setup_for(c)) for c in participants], faults=faults)
    return server


# ---- the contract ------------------------------------------------------------------------------


def test_every_aggregation_in_the_package_is_in_the_contract():
    found = implementations(class_test=is_aggregation)
    listed = {qualified_name(c.implementation) for c in CASES}
    assert found == listed, (
        f"aggregations without a contract case: {sorted(found - listed)}; "
        f"cases naming no aggregation in the package: {sorted(listed - found)}"
    )


@case
@given(clients=st.integers(3, MAX_CLIENTS), seed=st.integers(0, 2**16), round_index=st.integers(0, 50))
@settings(max_examples=6, deadline=None)
def test_aggregate_is_the_sum_of_the_contributions(case, clients, seed, round_index):
    contributions = contributions_for(case, range(clients), seed=seed)
    aggregate = case.build().aggregate(contributions, round_index=round_index)
    assert_is_the_sum(case, aggregate, contributions)


@case
@pytest.mark.parametrize("clients", [3, MAX_CLIENTS])
def test_the_halves_run_by_hand_give_the_aggregate(case, clients):
    contributions = contributions_for(case, range(10, 10 + clients), seed=clients)
    server = by_hand(case, case.build(), contributions, round_index=4)
    result = server.round.result
    assert result is not None and server.results[-1] is result
    assert all(r is None for r in server.results[:-1]), "a result was set before the last step"
    assert_is_the_sum(case, result, contributions)
    aggregate = case.build().aggregate(contributions, round_index=4)
    assert_is_the_sum(case, aggregate, contributions)
    assert result.survivors == aggregate.survivors and result.weight_sum == aggregate.weight_sum
    if case.deterministic:
        assert torch.equal(result.weighted_delta_sum, aggregate.weighted_delta_sum)
        assert result.train_loss_sum == aggregate.train_loss_sum


@case
def test_the_server_half_refuses_a_payload_from_a_non_participant(case):
    participants, stranger = [0, 1, 2], 7
    contributions = contributions_for(case, [*participants, stranger], seed=1)
    channel, client_halves = halves(case, case.build(), [*participants, stranger])
    ours = channel.open_round(round_index=2, participants=participants, context=b"")
    theirs = channel.open_round(round_index=2, participants=[*participants, stranger], context=b"")
    payloads = client_halves[stranger].start(
        contributions[-1], round_index=2, setup=theirs.setup_for(stranger), context=b""
    )
    assert payloads
    with pytest.raises(RemoteProtocolError):
        ours.receive(stranger, payloads[0])
    # the refusal leaves the round intact: it completes with the participants alone
    server = ServerSide(ours)
    clients = {
        c.client_id: client_side(client_halves[c.client_id], c, round_index=2) for c in contributions[:-1]
    }
    run_turns(server, clients, [(c, ours.setup_for(c)) for c in participants])
    assert_is_the_sum(case, ours.result, contributions[:-1])


@case
def test_the_server_half_refuses_a_second_payload_from_the_same_client(case):
    participants = [0, 1, 2, 3]
    contributions = contributions_for(case, participants, seed=2)
    channel, make = prepare(case, case.build(), participants)
    aggregation_round = channel.open_round(round_index=3, participants=participants, context=b"")
    setup = aggregation_round.setup_for(0)
    first = make(0).start(contributions[0], round_index=3, setup=setup, context=b"")
    aggregation_round.receive(0, first[0])
    with pytest.raises(RemoteProtocolError):
        aggregation_round.receive(0, first[0])  # replayed
    other = make(0).start(contributions[0], round_index=3, setup=setup, context=b"")
    with pytest.raises(RemoteProtocolError):
        aggregation_round.receive(0, other[0])  # a second, different one
    assert aggregation_round.result is None


@case
def test_too_few_contributions_abort_the_round_and_release_nothing(case):
    channel = case.build()
    for count in range(case.min_clients):  # a plain sum of none; secure aggregation of one, ...
        with pytest.raises(RoundAbortedError):
            channel.aggregate(contributions_for(case, range(count)), round_index=1)
        if case.kind == "distributed":
            assert not channel.take_release().released
    enough = contributions_for(case, range(case.min_clients))  # one more client is enough
    assert_is_the_sum(case, channel.aggregate(enough, round_index=2), enough)


@case
def test_a_round_nobody_answers_aborts_and_releases_nothing(case):
    contributions = contributions_for(case, range(4))
    everyone = Faults(before={c.client_id: 0 for c in contributions})
    participants = [c.client_id for c in contributions]
    channel, client_halves = halves(case, case.build(), participants)
    aggregation_round = channel.open_round(round_index=5, participants=participants, context=b"")
    server = ServerSide(aggregation_round)
    silent = {c: client_side(client_halves[c], contributions[c], round_index=5) for c in participants}
    with pytest.raises(RoundAbortedError):
        run_turns(
            server, silent, [(c, aggregation_round.setup_for(c)) for c in participants], faults=everyone
        )
    assert aggregation_round.result is None and server.results == []
    if case.kind == "distributed":
        assert not channel.take_release().released
