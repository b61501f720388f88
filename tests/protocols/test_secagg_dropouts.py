"""Dropouts injected before/after sending at every step: with at least t left the result is exactly
the survivors' sum, with fewer the round aborts; the server never holds both shares of a client."""

from __future__ import annotations

import numpy as np
import pytest
from secagg_helpers import DeterministicRandom, plain_sum, random_inputs

from securefl.errors import ThresholdNotMetError
from securefl.protocols.secagg import (
    Dropout,
    DropoutPlan,
    RoundAbortedError,
    RoundSetup,
    SecAggParams,
    Step,
    protocol_steps,
    run_secure_aggregation,
)
from securefl.protocols.secagg.graph import neighbourhoods
from securefl.protocols.secagg.messages import UnmaskingShares


def senders_at(step: Step, clients, plan: DropoutPlan) -> frozenset[int]:
    """Reference model: who sends its message of `step` under `plan`."""

    def sends(client):
        dropout = plan.dropouts.get(client)
        return dropout is None or dropout.step > step or (dropout.step == step and dropout.after_sending)

    return frozenset(c for c in clients if sends(c))


def expected_outcome(params, plan, clients, graph):
    """(survivors, None) if the round must succeed, (None, step) if it must abort at `step`."""
    steps = protocol_steps(params)
    shared = senders_at(Step.SHARE_KEYS, clients, plan)
    for step in steps:
        alive = senders_at(step, clients, plan)
        minimum = params.signature_threshold if step is Step.CONSISTENCY_CHECK else params.threshold
        owners = alive if step <= Step.SHARE_KEYS else shared
        if len(alive) < minimum or any(len((graph[o] | {o}) & alive) < params.threshold for o in owners):
            return None, step
    return senders_at(Step.MASKED_INPUT, clients, plan), None


def assert_never_both_shares(transcript):
    revealed = {}
    for entry in transcript:
        if isinstance(entry.message, UnmaskingShares):
            for record in entry.message.self_mask_shares:
                revealed.setdefault(record.owner, set()).add("self_mask")
            for record in entry.message.mask_key_shares:
                revealed.setdefault(record.owner, set()).add("mask_key")
    assert all(len(kinds) == 1 for kinds in revealed.values()), revealed
    return revealed


@pytest.mark.parametrize("after_sending", [False, True])
@pytest.mark.parametrize("step", list(Step))
def test_dropouts_at_every_step(step, after_sending):
    active = step is Step.CONSISTENCY_CHECK
    n = 7
    params = SecAggParams(num_clients=n, threshold=4, active_adversary=active)
    inputs = random_inputs(n, 31, 32, seed=int(step) * 2 + after_sending)
    # n - t dropouts: still enough (the signature threshold in active mode is max(t, n//2+1) = 4)
    plan = DropoutPlan({c: Dropout(step, after_sending) for c in (1, 3, 5)})
    survivors, abort_step = expected_outcome(params, plan, inputs, {c: set(inputs) - {c} for c in inputs})
    assert abort_step is None
    result = run_secure_aggregation(inputs, params=params, dropouts=plan)
    assert result.survivors == survivors
    assert np.array_equal(result.sum, plain_sum(inputs, survivors, 32))
    assert result.stats.dropouts[step] == (1, 3, 5)
    revealed = assert_never_both_shares(result.transcript)
    for owner, kinds in revealed.items():
        assert kinds == ({"self_mask"} if owner in survivors else {"mask_key"})

    # one more dropout at the same step: fewer than t remain for the step that needs them, the
    # round aborts there (the next step if they left after sending) and reveals nothing
    plan = DropoutPlan({c: Dropout(step, after_sending) for c in (0, 1, 3, 5)})
    survivors, abort_step = expected_outcome(params, plan, inputs, {c: set(inputs) - {c} for c in inputs})
    if step is Step.UNMASKING and after_sending:
        assert abort_step is None  # every share already arrived
        result = run_secure_aggregation(inputs, params=params, dropouts=plan)
        assert np.array_equal(result.sum, plain_sum(inputs, survivors, 32))
        return
    steps = protocol_steps(params)
    assert abort_step is (steps[steps.index(step) + 1] if after_sending else step)
    with pytest.raises(ThresholdNotMetError) as caught:
        run_secure_aggregation(inputs, params=params, dropouts=plan)
    assert isinstance(caught.value, RoundAbortedError)
    assert caught.value.step is abort_step


@pytest.mark.parametrize("active", [False, True])
def test_random_dropout_plans_complete_graph(active):
    n = 10
    params = SecAggParams(num_clients=n, threshold=6, active_adversary=active)
    generator = np.random.default_rng(7 + active)
    outcomes = set()
    for trial in range(14):
        inputs = random_inputs(n, 17, 32, seed=100 + trial)
        plan = DropoutPlan.random(inputs, rate=0.45, generator=generator, steps=protocol_steps(params))
        survivors, abort_step = expected_outcome(params, plan, inputs, {c: set(inputs) - {c} for c in inputs})
        if abort_step is None:
            result = run_secure_aggregation(inputs, params=params, dropouts=plan)
            assert result.survivors == survivors
            assert np.array_equal(result.sum, plain_sum(inputs, survivors, 32))
            assert_never_both_shares(result.transcript)
            outcomes.add("ok")
        else:
            with pytest.raises(RoundAbortedError) as caught:
                run_secure_aggregation(inputs, params=params, dropouts=plan)
            assert caught.value.step is abort_step
            outcomes.add("abort")
    assert outcomes == {"ok", "abort"}  # both branches exercised


def test_random_dropout_plans_secagg_plus():
    n, k, t = 20, 6, 4
    params = SecAggParams(num_clients=n, threshold=t, neighbors=k, bits=24)
    generator = np.random.default_rng(11)
    source = DeterministicRandom("secagg+ dropouts")
    outcomes = set()
    for trial in range(12):
        inputs = random_inputs(n, 9, 24, seed=200 + trial)
        seed = source(32)
        graph = neighbourhoods(params, RoundSetup(0, tuple(range(n)), 9, seed))
        plan = DropoutPlan.random(inputs, rate=0.3, generator=generator)
        survivors, abort_step = expected_outcome(params, plan, inputs, graph)
        if abort_step is None:
            result = run_secure_aggregation(inputs, params=params, dropouts=plan, graph_seed=seed)
            assert result.survivors == survivors
            assert np.array_equal(result.sum, plain_sum(inputs, survivors, 24))
            assert_never_both_shares(result.transcript)
            outcomes.add("ok")
        else:
            with pytest.raises(RoundAbortedError) as caught:
                run_secure_aggregation(inputs, params=params, dropouts=plan, graph_seed=seed)
            assert caught.value.step is abort_step
            outcomes.add("abort")
    assert outcomes == {"ok", "abort"}


def test_secagg_plus_client_only_talks_to_neighbours():
    n, k = 12, 4
    params = SecAggParams(num_clients=n, threshold=3, neighbors=k)
    inputs = random_inputs(n, 5, 32, seed=5)
    seed = bytes(range(32))
    graph = neighbourhoods(params, RoundSetup(0, tuple(range(n)), 5, seed))
    result = run_secure_aggregation(inputs, params=params, graph_seed=seed)
    for entry in result.transcript:
        if entry.step is Step.SHARE_KEYS:
            recipients = {r.recipient for r in entry.message.sealed_shares}
            assert recipients == graph[entry.message.sender]
    assert np.array_equal(result.sum, plain_sum(inputs, inputs, 32))
