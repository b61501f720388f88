"""The two programs of a round, driven message by message: what each accepts, what each refuses,
and that a peer's bad message drops that peer, never the other program."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from securefl.config import RunConfig, SecAggConfig
from securefl.defences.consistency import model_context
from securefl.federation import build_federation, build_programs
from securefl.fl import codec
from securefl.fl.messages import AggregationMessage, Availability, PlainContribution, TrainRequest
from securefl.fl.record import RoundStatus
from securefl.fl.turns import run_turns
from securefl.fl.vectors import to_vector
from securefl.protocols.secagg import RoundSetup, encode_setup

BASE = dict(dataset="digits", model="mlp", clients=4, rounds=1, lr=0.05, batch_size=16, local_epochs=1)


def _programs(**overrides):
    fed = build_federation(RunConfig(**{**BASE, **overrides}))
    programs = build_programs(fed)
    for client_id, client in sorted(programs.clients.items()):
        programs.server.receive(client_id, client.join())
    return fed, programs


def _reference_mean(fed, programs, start: torch.Tensor, honest: list[int]) -> torch.Tensor:
    """FedAvg of the honest clients computed directly from their trainers (independent of messages)."""
    from securefl.federation import client_generator

    total, weight = torch.zeros_like(start), 0.0
    for client_id in honest:
        update = fed.trainers[client_id].train(
            global_params=start,
            shard=fed.shards[client_id],
            round_index=1,
            generator=client_generator(fed.config.seed, 1, client_id),
        )
        total += update.delta * update.num_samples
        weight += update.num_samples
    return start + total / weight


def test_hostile_client_messages_drop_that_client_and_the_round_sums_the_others():
    """Junk first, then a valid contribution: the client is out of the round after the junk."""
    fed, programs = _programs()
    server, clients = programs.server, programs.clients
    start = server.params.clone()
    hostile = 3
    length = start.numel()
    junk = [
        b"not a message",
        codec.encode(Availability(1, True)),  # claims to be client 1
        codec.encode(AggregationMessage(1, hostile, b"\x00" * 7)),  # a payload that does not decode
        codec.encode(
            AggregationMessage(
                1,
                hostile,
                codec.encode(PlainContribution(torch.ones(length + 1), 1.0, 0.0)),  # wrong length
            )
        ),
        codec.encode(TrainRequest(1, hostile, start, (), b"")),  # the server accepts no train request
        codec.encode(AggregationMessage(7, hostile, b"")),  # another round
    ]

    def hostile_client(data: bytes) -> list[bytes]:
        return junk + clients[hostile].receive(data)  # its real contribution comes too late: dropped

    sides = {c: clients[c].receive for c in (0, 1, 2)} | {hostile: hostile_client}
    first = server.start_round()
    run_turns(server, sides, first)
    record = server.records[-1]
    assert record.status is RoundStatus.OK
    assert record.survivors == 3
    expected = _reference_mean(fed, programs, start, [0, 1, 2])
    assert torch.allclose(server.params, expected, atol=1e-6)


def test_a_duplicate_contribution_is_refused_and_the_first_one_counts():
    fed, programs = _programs()
    server, clients = programs.server, programs.clients
    start = server.params.clone()

    def twice(client_id: int):
        def receive(data: bytes) -> list[bytes]:
            replies = clients[client_id].receive(data)
            return replies + replies

        return receive

    run_turns(server, {c: twice(c) for c in clients}, server.start_round())
    assert server.records[-1].survivors == 4
    assert torch.allclose(server.params, _reference_mean(fed, programs, start, [0, 1, 2, 3]), atol=1e-6)


def test_hostile_server_messages_are_refused_by_the_client_without_a_crash():
    fed, programs = _programs(secagg=SecAggConfig(bits=40))
    client = programs.clients[0]
    params = to_vector(fed.eval_model.parameters())
    others = RoundSetup.create([1, 2, 3], vector_length=params.numel() + 3, round_id=1)
    settings = tuple(sorted({"round": 1, **fed.round_settings}.items()))
    hostile = [
        b"\x00" * 40,
        codec.encode(TrainRequest(1, 2, params, settings, b"")),  # addressed to client 2
        codec.encode(TrainRequest(1, 0, params, settings, b"garbage setup")),
        codec.encode(TrainRequest(1, 0, params, settings, encode_setup(others))),  # does not list 0
        codec.encode(AggregationMessage(1, 0, b"no round is open")),
    ]
    for data in hostile:
        replies = [codec.decode(reply) for reply in client.receive(data)]
        assert all(not isinstance(reply, AggregationMessage) for reply in replies), data[:40]


@pytest.mark.parametrize("overrides", [{}, {"secagg": SecAggConfig(bits=40)}], ids=["plain", "secagg"])
def test_traffic_is_the_encoded_messages(overrides):
    fed, programs = _programs(**overrides)
    server, clients = programs.server, programs.clients
    first = server.start_round()
    traffic = run_turns(server, {c: clients[c].receive for c in clients}, first)
    model_bytes = server.params.numel() * 4
    assert traffic.total_down >= len(clients) * model_bytes  # every client got the whole model
    assert sum(len(data) for _, data in first) <= traffic.total_down
    assert traffic.total_up >= len(clients) * model_bytes  # every update came back, masked or not


def _request(fed, client_id: int, round_index: int, aggregation: bytes, params=None) -> bytes:
    params = to_vector(fed.eval_model.parameters()) if params is None else params
    settings = tuple(sorted({"round": round_index, **fed.round_settings}.items()))
    return codec.encode(TrainRequest(round_index, client_id, params, settings, aggregation))


def _replies(client, data: bytes) -> list:
    return [codec.decode(reply) for reply in client.receive(data)]


@pytest.mark.parametrize("active", [False, True], ids=["passive", "active"])
def test_a_client_refuses_a_round_shrunk_below_the_configured_size_before_training(active):
    """A server listing [victim, accomplice] would learn the victim's update from a 2-client sum."""
    fed, programs = _programs(clients=6, secagg=SecAggConfig(bits=40, active_adversary=active))
    client = programs.clients[0]
    length = to_vector(fed.eval_model.parameters()).numel() + 3
    shrunk = RoundSetup.create([0, 1], vector_length=length, round_id=1)
    replies = _replies(client, _request(fed, 0, 1, encode_setup(shrunk)))
    assert [type(r).__name__ for r in replies] == ["Decline"]
    assert replies[0].reason.value == "refused" and "lists 2 clients" in replies[0].detail
    # ... and the planned size is accepted: the refusal is about the size, not the client.
    context = model_context(
        model=fed.eval_model,
        settings={"round": 1, **fed.round_settings},
        params=to_vector(fed.eval_model.parameters()),
    )
    planned = RoundSetup.create(list(range(6)), vector_length=length, round_id=1, context=context)
    accepted = _replies(client, _request(fed, 0, 1, encode_setup(planned)))
    assert any(isinstance(r, AggregationMessage) for r in accepted)


def test_an_active_client_refuses_a_participant_without_an_enrolled_key():
    fed, programs = _programs(clients=6, secagg=SecAggConfig(bits=40, active_adversary=True))
    length = to_vector(fed.eval_model.parameters()).numel() + 3
    stranger = RoundSetup.create([0, 1, 2, 3, 4, 99], vector_length=length, round_id=1)
    replies = _replies(programs.clients[0], _request(fed, 0, 1, encode_setup(stranger)))
    assert [type(r).__name__ for r in replies] == ["Decline"]


def test_a_dp_client_refuses_a_replayed_round_and_a_model_of_another_size_without_spending_budget():
    from securefl.config import DPConfig

    fed, programs = _programs(dp=DPConfig(noise_multiplier=1.0))
    client = programs.clients[0]
    trainer = fed.trainers[0]
    assert any(isinstance(r, AggregationMessage) for r in _replies(client, _request(fed, 0, 3, b"")))
    spent = trainer.epsilon(0)
    assert spent > 0
    params = to_vector(fed.eval_model.parameters())
    for data in (
        _request(fed, 0, 3, b""),  # the same round again
        _request(fed, 0, 2, b""),  # an earlier one
        _request(fed, 0, 4, b"", params=params[:-1]),  # a model of another size
    ):
        replies = _replies(client, data)
        assert [type(r).__name__ for r in replies] == ["Decline"]
        assert trainer.epsilon(0) == spent  # refused before training: nothing recorded


def test_a_decline_is_binding_and_counted_once():
    fed, programs = _programs()
    server, clients = programs.server, programs.clients
    from securefl.fl.messages import Decline, DeclineReason

    def declines_then_contributes(data: bytes) -> list[bytes]:
        decline = codec.encode(Decline(1, 3, DeclineReason.REFUSED, "no"))
        return [decline, decline] + clients[3].receive(data)

    sides = {c: clients[c].receive for c in (0, 1, 2)} | {3: declines_then_contributes}
    run_turns(server, sides, server.start_round())
    record = server.records[-1]
    assert record.declined == {"refused": 1}
    assert record.survivors == 3


def test_a_plain_client_with_a_non_finite_update_declines_and_the_others_are_summed():
    fed, programs = _programs()
    server, clients = programs.server, programs.clients
    start = server.params.clone()
    poisoned = fed.trainers[0]

    class _Diverging:
        def can_train(self, client_id: int) -> bool:
            return True

        def train(self, **kwargs):
            update = poisoned.train(**kwargs)
            if kwargs["shard"].client_id == 2:
                update = dataclasses.replace(update, delta=torch.full_like(update.delta, math.nan))
            return update

    clients[2].trainer = _Diverging()
    run_turns(server, {c: clients[c].receive for c in clients}, server.start_round())
    record = server.records[-1]
    assert record.status is RoundStatus.OK and record.declined == {"non_finite_update": 1}
    assert torch.allclose(server.params, _reference_mean(fed, programs, start, [0, 1, 3]), atol=1e-6)
