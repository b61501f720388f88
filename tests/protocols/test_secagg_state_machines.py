"""The sans-IO state machines on their own (h11 style): a two-party harness drives one client and
the server by hand; misuse, out-of-order and replayed events raise typed errors without changing
state, refusals abort; corrupted shares never yield a wrong sum."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secagg_helpers import DeterministicRandom, plain_sum, random_inputs

from securefl.errors import (
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
    ThresholdNotMetError,
)
from securefl.protocols.secagg import (
    ClientProtocol,
    ClientState,
    Dropout,
    DropoutPlan,
    RoundAbortedError,
    RoundSetup,
    SecAggParams,
    ServerProtocol,
    ServerState,
    Step,
    decode,
    encode,
    protocol_steps,
    run_secure_aggregation,
)
from securefl.protocols.secagg.graph import neighbourhoods
from securefl.protocols.secagg.messages import UnmaskingRequest, UnmaskingShares


def harness(n=4, t=3, length=6):
    params = SecAggParams(num_clients=n, threshold=t)
    setup = RoundSetup.create(
        list(range(n)), vector_length=length, random_source=DeterministicRandom("harness")
    )
    inputs = random_inputs(n, length, 32, seed=0)
    clients = {
        c: ClientProtocol(
            client_id=c,
            params=params,
            setup=setup,
            input_vector=inputs[c],
            random_source=DeterministicRandom(f"client {c}"),
        )
        for c in range(n)
    }
    server = ServerProtocol(params=params, setup=setup)
    return params, setup, inputs, clients, server


def step_all(clients, server, incoming):
    """Deliver `incoming` server messages, feed the answers to the server, close the step."""
    for message in incoming:
        for answer in clients[message.recipient].receive(message):
            server.receive(answer)
    return server.close_step()


def test_two_party_harness_reaches_the_sum_and_states_advance():
    params, setup, inputs, clients, server = harness()
    for client in clients.values():
        for message in client.start():
            server.receive(message)
    assert {c.state for c in clients.values()} == {ClientState.AWAITING_KEY_DIRECTORY}
    outgoing = server.close_step()
    for _ in range(3):
        outgoing = step_all(clients, server, outgoing)
    assert outgoing == [] and server.state is ServerState.FINISHED
    assert {c.state for c in clients.values()} == {ClientState.DONE}
    assert np.array_equal(server.result.sum, plain_sum(inputs, inputs, 32))


def test_misuse_and_out_of_order_events_raise_without_changing_state():
    params, setup, inputs, clients, server = harness()
    client = clients[0]
    [advert] = client.start()
    with pytest.raises(LocalProtocolError, match="already started"):
        client.start()
    with pytest.raises(LocalProtocolError, match="has not finished"):
        _ = server.result
    server.receive(advert)
    with pytest.raises(RemoteProtocolError, match="replay"):
        server.receive(advert)
    for other in (1, 2, 3):
        for message in clients[other].start():
            server.receive(message)
    directories = {m.recipient: m for m in server.close_step()}
    with pytest.raises(RemoteProtocolError, match="arrived during share_keys"):
        server.receive(advert)
    with pytest.raises(RemoteProtocolError, match="addressed to client 1"):
        client.receive(directories[1])
    with pytest.raises(RemoteProtocolError, match="round 5"):
        client.receive(dataclasses.replace(directories[0], round_id=5))
    assert client.state is ClientState.AWAITING_KEY_DIRECTORY
    [share_keys] = client.receive(directories[0])  # the valid message still works
    assert decode(encode(share_keys)) == share_keys
    with pytest.raises(RemoteProtocolError, match="not a client message"):
        server.receive(directories[0])


def test_refusal_aborts_the_client_and_reveals_nothing_afterwards():
    params, setup, inputs, clients, server = harness()
    for client in clients.values():
        for message in client.start():
            server.receive(message)
    outgoing = step_all(clients, server, server.close_step())
    requests = step_all(clients, server, outgoing)
    request = next(m for m in requests if m.recipient == 0)
    assert isinstance(request, UnmaskingRequest)
    bad = dataclasses.replace(request, dropped=(1,))
    with pytest.raises(LocalProtocolError, match="both as survivors and as dropped"):
        clients[0].receive(bad)
    assert clients[0].state is ClientState.ABORTED
    with pytest.raises(RemoteProtocolError):
        clients[0].receive(request)
    # the others still unmask, and the server finishes
    for message in requests:
        if message.recipient != 0:
            for answer in clients[message.recipient].receive(message):
                server.receive(answer)
    server.close_step()
    assert np.array_equal(server.result.sum, plain_sum(inputs, inputs, 32))


def test_constructors_validate_their_configuration():
    params = SecAggParams(num_clients=3, threshold=2)
    setup = RoundSetup.create([0, 1, 2], vector_length=4)
    with pytest.raises(ConfigError, match="not a participant"):
        ClientProtocol(client_id=9, params=params, setup=setup, input_vector=np.zeros(4, np.uint32))
    active = SecAggParams(num_clients=3, threshold=2, active_adversary=True)
    with pytest.raises(ConfigError, match="active_adversary"):
        ClientProtocol(client_id=0, params=active, setup=setup, input_vector=np.zeros(4, np.uint32))
    with pytest.raises(ConfigError, match="verify_keys"):
        ServerProtocol(params=active, setup=setup)


@pytest.mark.parametrize("corrupted_holders", [1, 7])
def test_corrupted_shares_never_yield_a_wrong_sum(corrupted_holders):
    """A share altered in flight to a valid field element: the server's checked reconstruction
    finds t good shares among the rest, or aborts; it never outputs a wrong sum."""
    n = 8
    params = SecAggParams(num_clients=n, threshold=4)
    inputs = random_inputs(n, 12, 32, seed=3)

    def network(packet):
        message = decode(packet.payload)
        if isinstance(message, UnmaskingShares) and message.sender < corrupted_holders:
            records = tuple(
                dataclasses.replace(r, share=(int.from_bytes(r.share, "big") + 1).to_bytes(66, "big"))
                if r.owner in (5, 6)
                else r
                for r in message.self_mask_shares
            )
            records_s = tuple(
                dataclasses.replace(r, share=(int.from_bytes(r.share, "big") + 1).to_bytes(66, "big"))
                if r.owner in (5, 6)
                else r
                for r in message.mask_key_shares
            )
            message = dataclasses.replace(message, self_mask_shares=records, mask_key_shares=records_s)
        return [encode(message)]

    plan = DropoutPlan({6: Dropout(Step.MASKED_INPUT)})
    if corrupted_holders == 1:
        result = run_secure_aggregation(inputs, params=params, dropouts=plan, network=network)
        assert np.array_equal(result.sum, plain_sum(inputs, result.survivors, 32))
    else:
        with pytest.raises(RoundAbortedError, match="consistent shares"):
            run_secure_aggregation(inputs, params=params, dropouts=plan, network=network)


def connected(graph, nodes) -> bool:
    """Reference: whether ``nodes`` induce a connected subgraph, by union-find over its edges."""
    parent = {v: v for v in nodes}

    def root(v):
        while parent[v] != v:
            v = parent[v]
        return v

    for v in nodes:
        for w in graph[v] & set(nodes):
            parent[root(v)] = root(w)
    return len({root(v) for v in nodes}) <= 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 9), data=st.data())
def test_any_graph_threshold_and_dropouts_match_the_reference_model(n, data):
    degree = data.draw(st.sampled_from([None] + list(range(2, n, 2))), label="neighbors")
    holders = n if degree is None else degree + 1
    t = data.draw(st.integers(2, holders), label="threshold")
    bits = data.draw(st.sampled_from([8, 13, 32, 44, 62]), label="bits")
    params = SecAggParams(num_clients=n, threshold=t, bits=bits, neighbors=degree)
    steps = protocol_steps(params)
    plan = DropoutPlan(
        {
            c: Dropout(data.draw(st.sampled_from(steps)), data.draw(st.booleans()))
            for c in range(n)
            if data.draw(st.booleans(), label=f"drops {c}")
        }
    )
    seed = data.draw(st.binary(min_size=32, max_size=32), label="graph seed")
    inputs = random_inputs(n, 5, bits, seed=n)
    graph = neighbourhoods(params, RoundSetup(0, tuple(range(n)), 5, seed))

    def senders(step):
        return frozenset(
            c
            for c in range(n)
            if c not in plan.dropouts
            or plan.dropouts[c].step > step
            or (plan.dropouts[c].step == step and plan.dropouts[c].after_sending)
        )

    shared = senders(Step.SHARE_KEYS)
    must_abort = any(
        len(senders(step)) < t
        or any(
            len((graph[o] | {o}) & senders(step)) < t
            for o in (senders(step) if step <= Step.SHARE_KEYS else shared)
        )
        for step in steps
    ) or not connected(graph, senders(Step.MASKED_INPUT))
    if must_abort:
        with pytest.raises(ThresholdNotMetError):
            run_secure_aggregation(inputs, params=params, dropouts=plan, graph_seed=seed)
    else:
        result = run_secure_aggregation(inputs, params=params, dropouts=plan, graph_seed=seed)
        assert result.survivors == senders(Step.MASKED_INPUT)
        assert np.array_equal(result.sum, plain_sum(inputs, result.survivors, bits))
