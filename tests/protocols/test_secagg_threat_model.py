"""The attacks of the review (issue 9, points 1-6), run through the public sans-IO API.

Each attack is run by :class:`MaliciousServer`; where the protocol's assumptions are met it must
be refused with nothing revealed, and where the attack is run outside the declared bound (a
positive control) it must recover an honest input exactly, so the attack code is known to work.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from secagg_attacks import MaliciousServer, refused_locally
from secagg_helpers import DeterministicRandom, plain_sum, random_inputs

from securefl.errors import (
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
    ThresholdNotMetError,
)
from securefl.protocols.crypto import keys
from securefl.protocols.secagg import (
    ClientProtocol,
    DropoutPlan,
    RoundIdGuard,
    RoundSetup,
    SecAggParams,
    ServerProtocol,
    Step,
    assess_parameters,
    choose_parameters,
    decode,
    encode,
    enforce_parameter_rules,
    protocol_steps,
    run_secure_aggregation,
    session_hash,
)
from securefl.protocols.secagg.graph import neighbourhoods, random_permutation
from securefl.protocols.secagg.messages import (
    ConsistencySignature,
    KeyDirectory,
    PeerKeys,
    SurvivorSignature,
)

TARGET = 0


def split_view_attack(params, *, colluders, group_a, group_b, label):
    """Bonawitz et al.'s split view: show ``group_a`` all clients as survivors and ``group_b``
    the same set without the target, each view signed by its group and by the colluders (via
    their twins for the second view); collect the target's self-mask seed from group A and its
    mask key from group B.  Returns (server, the target's input or ``None``)."""
    n = params.num_clients
    inputs = random_inputs(n, 8, params.bits, seed=11)
    server = MaliciousServer(params, inputs, label=label, colluders=colluders)
    everyone = set(range(n))
    view_b = everyone - {TARGET}
    signatures_a = server.collect_signatures(everyone, set(group_a) | set(colluders))
    signatures_b = server.collect_signatures(view_b, set(group_b) | set(colluders), twins=colluders)
    seeds, _ = server.request_shares(everyone, (), set(group_a) | set(colluders), signatures=signatures_a)
    _, mask_keys = server.request_shares(
        view_b, {TARGET}, set(group_b) | set(colluders), signatures=signatures_b, twins=colluders
    )
    seed = server.reconstruct(seeds.get(TARGET, {}))
    mask_key = server.reconstruct(mask_keys.get(TARGET, {}))
    if seed is None or mask_key is None:
        return server, None
    recovered = server.unmask_sum({TARGET}, seeds={TARGET: seed}, mask_keys={TARGET: mask_key})
    assert np.array_equal(recovered, plain_sum(inputs, {TARGET}, params.bits))
    return server, recovered


# The review's two cases, one and two colluders.  Declared, they force 2t > n + c (t = 5 for
# n = 7, t = 6 for n = 8); the positive controls declare one colluder fewer and take the smallest
# threshold that allows (t = 4, t = 5), which the split view beats.
SPLIT_VIEW_CASES = [
    pytest.param(7, (6,), (0, 1, 2), (3, 4, 5), id="n7-one-colluder"),
    pytest.param(8, (6, 7), (0, 1, 2), (3, 4, 5), id="n8-two-colluders"),
]


def smallest_active_threshold(n, c):
    """The smallest t with 2t > n + c (and t > c)."""
    return min(t for t in range(2, n + 1) if 2 * t > n + c and t > c)


@pytest.mark.parametrize(("n", "colluders", "group_a", "group_b"), SPLIT_VIEW_CASES)
def test_split_view_with_colluders_is_refused_once_the_colluders_are_declared(n, colluders, group_a, group_b):
    params = SecAggParams(
        num_clients=n,
        threshold=smallest_active_threshold(n, len(colluders)),
        active_adversary=True,
        max_colluders=len(colluders),
    )
    server, recovered = split_view_attack(
        params, colluders=colluders, group_a=group_a, group_b=group_b, label=f"split {n}"
    )
    assert recovered is None
    assert refused_locally(server, set(group_a) | set(group_b))
    assert "valid signatures" in str(server.refusals[group_a[0]])


@pytest.mark.parametrize(("n", "colluders", "group_a", "group_b"), SPLIT_VIEW_CASES)
def test_split_view_recovers_an_input_when_colluders_exceed_the_declared_bound(
    n, colluders, group_a, group_b
):
    """Positive control: declaring fewer colluders than there are lets the attack through."""
    declared = len(colluders) - 1
    params = SecAggParams(
        num_clients=n,
        threshold=smallest_active_threshold(n, declared),
        active_adversary=True,
        max_colluders=declared,
    )
    _, recovered = split_view_attack(
        params, colluders=colluders, group_a=group_a, group_b=group_b, label=f"control {n}"
    )
    assert recovered is not None


def test_active_default_threshold_tolerates_a_third_of_the_clients():
    """The CLI's active-mode default t = floor(2n/3) + 1 (SecAggConfig) gives c = 3 for n = 10
    and stops the n = 8 two-colluder split view without declaring anything."""
    assert SecAggParams(num_clients=10, threshold=7, active_adversary=True).colluders_tolerated == 3
    params = SecAggParams(num_clients=8, threshold=8 * 2 // 3 + 1, active_adversary=True)
    assert params.colluders_tolerated >= 2
    server, recovered = split_view_attack(
        params, colluders=(6, 7), group_a=(0, 1, 2), group_b=(3, 4, 5), label="default 8"
    )
    assert recovered is None and refused_locally(server, (0, 1, 2, 3, 4, 5))


def brute_force_colluders(n, t):
    """Reference: the largest c <= n - 2 with t > c and 2t > n + c (Bonawitz et al.), or None
    when no c >= 0 qualifies."""
    return max([c for c in range(n - 1) if t > c and 2 * t > n + c], default=None)


@pytest.mark.parametrize("n", range(2, 13))
def test_collusion_bound_and_signature_threshold_against_brute_force(n):
    for t in range(2, n + 1):
        passive = SecAggParams(num_clients=n, threshold=t)
        assert passive.colluders_tolerated == min(t - 1, n - 2)
        if brute_force_colluders(n, t) is None:
            with pytest.raises(ConfigError, match="must exceed half the share holders"):
                SecAggParams(num_clients=n, threshold=t, active_adversary=True)
        else:
            active = SecAggParams(num_clients=n, threshold=t, active_adversary=True)
            assert active.colluders_tolerated == brute_force_colluders(n, t)
        for c in range(0, n - 1):
            if c >= t:
                with pytest.raises(ConfigError, match=f"raise `threshold` to at least {c + 1}"):
                    SecAggParams(num_clients=n, threshold=t, active_adversary=True, max_colluders=c)
                continue
            if 2 * t <= n + c:
                with pytest.raises(ConfigError, match=f"`threshold` >= {(n + c) // 2 + 1}, not {t}"):
                    SecAggParams(num_clients=n, threshold=t, active_adversary=True, max_colluders=c)
                continue
            s = SecAggParams(
                num_clients=n, threshold=t, active_adversary=True, max_colluders=c
            ).signature_threshold
            # the smallest s >= t with 2s > n + c, and never more than n
            assert s == min(x for x in range(t, n + 1) if 2 * x > n + c)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_clients": 7, "threshold": 4, "max_colluders": 4}, "raise `threshold` to at least 5"),
        ({"num_clients": 7, "threshold": 4, "max_colluders": 6}, "`max_colluders` 6 must be"),
        ({"num_clients": 7, "threshold": 4, "max_colluders": -1}, "`max_colluders` -1 must be"),
        (
            {"num_clients": 12, "threshold": 3, "neighbors": 4, "active_adversary": True, "max_colluders": 1},
            "use the complete graph \\(`neighbors` None\\)",
        ),
    ],
)
def test_insecure_collusion_bounds_are_refused(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SecAggParams(**kwargs)


# ------------------------------------------------------------------ point 2: cutting the ring


N_RING, K, T_RING = 12, 4, 3
T_RING_ACTIVE = K // 2 + 2  # active SecAgg+ needs 2t > k + 2


def ring_cut(graph_seed, threshold):
    """The ring order and the cut around the target: two bands of k/2 clients declared dropped,
    isolating a block of t clients that contains the target."""
    order = random_permutation(range(N_RING), seed=graph_seed, round_id=0)
    start = order.index(TARGET)
    ring = order[start:] + order[:start]
    block = ring[:threshold]
    bands = ring[threshold : threshold + K // 2] + ring[-(K // 2) :]
    return block, bands


def ring_cut_attack(params, graph_seed, label):
    inputs = random_inputs(N_RING, 8, 32, seed=12)
    server = MaliciousServer(params, inputs, label=label, graph_seed=graph_seed)
    block, bands = ring_cut(graph_seed, params.threshold)
    survivors = set(range(N_RING)) - set(bands)
    signatures = ()
    if params.active_adversary:
        signatures = server.collect_signatures(survivors, survivors)
    seeds, mask_keys = server.request_shares(survivors, bands, survivors, signatures=signatures)
    seed_of = {u: server.reconstruct(shares) for u, shares in seeds.items()}
    key_of = {v: server.reconstruct(shares) for v, shares in mask_keys.items()}
    block_sum = server.unmask_sum(
        block,
        seeds={u: s for u, s in seed_of.items() if s is not None},
        mask_keys={v: k for v, k in key_of.items() if k is not None},
    )
    if block_sum is not None:
        assert np.array_equal(block_sum, plain_sum(inputs, block, 32))
    return server, survivors, block_sum


@pytest.mark.parametrize("active", [True, False], ids=["active", "passive-client-check"])
def test_cutting_the_harary_ring_is_refused_by_every_survivor(active):
    params = SecAggParams(
        num_clients=N_RING,
        threshold=T_RING_ACTIVE if active else T_RING,
        neighbors=K,
        active_adversary=active,
    )
    server, survivors, block_sum = ring_cut_attack(params, bytes(range(32)), "cut")
    assert block_sum is None
    assert refused_locally(server, survivors)
    assert "disconnected" in str(server.refusals[TARGET])


def test_cutting_the_ring_leaks_the_block_sum_when_clients_do_not_check():
    """Positive control: a cut survivor set on a graph where the check has nothing to find (the
    complete graph) shows the attacker's unmasking works; on the ring, only the check stops it."""
    params = SecAggParams(num_clients=N_RING, threshold=T_RING, neighbors=K)
    inputs = random_inputs(N_RING, 8, 32, seed=12)
    server = MaliciousServer(params, inputs, label="control cut", graph_seed=bytes(range(32)))
    block, bands = ring_cut(bytes(range(32)), T_RING)
    seeds, mask_keys = server.request_shares(set(range(N_RING)), (), range(N_RING))
    seed_of = {u: server.reconstruct(s) for u, s in seeds.items()}
    assert server.unmask_sum(block, seeds=seed_of, mask_keys={}) is None  # edges leave the block
    everyone = server.unmask_sum(range(N_RING), seeds=seed_of, mask_keys={})
    assert np.array_equal(everyone, plain_sum(inputs, range(N_RING), 32))


def test_client_refuses_when_half_of_its_neighbours_are_declared_dropped():
    """The local rule (active SecAgg+): more than k/2 of a client's neighbours must survive,
    even when the survivors' graph is connected."""
    params = SecAggParams(num_clients=N_RING, threshold=T_RING_ACTIVE, neighbors=K, active_adversary=True)
    seed = bytes(range(32))
    graph = neighbourhoods(params, RoundSetup(0, tuple(range(N_RING)), 8, seed))
    dropped = set(sorted(graph[TARGET])[: K // 2])
    survivors = set(range(N_RING)) - dropped
    assert connected(graph, survivors)
    server = MaliciousServer(params, random_inputs(N_RING, 8, 32, seed=1), label="local", graph_seed=seed)
    server.collect_signatures(survivors, {TARGET})
    assert "not more than half" in str(server.refusals[TARGET])


def test_ground_graph_seed_gives_an_active_server_nothing():
    """Point 5: an active server grinds 200 seeds for the graph that isolates the target in the
    smallest block its t-requirement allows; every survivor still refuses the cut."""
    params = SecAggParams(num_clients=N_RING, threshold=T_RING_ACTIVE, neighbors=K, active_adversary=True)
    source = DeterministicRandom("grinding")
    best = None
    for _ in range(200):
        seed = source(32)
        graph = neighbourhoods(params, RoundSetup(0, tuple(range(N_RING)), 8, seed))
        block, bands = ring_cut(seed, params.threshold)
        survivors = set(range(N_RING)) - set(bands)
        # the attacker's objective: a disconnected survivor set with the target's block smallest
        if not connected(graph, survivors) and (best is None or len(block) < best[0]):
            best = (len(block), seed)
    assert best is not None
    server, survivors, block_sum = ring_cut_attack(params, best[1], "ground")
    assert block_sum is None and refused_locally(server, survivors)


# ------------------------------------------------------------------ point 3: session binding


def record_session_signatures(params, inputs, signing_keys, round_id):
    result = run_secure_aggregation(
        inputs,
        params=params,
        signing_keys=signing_keys,
        round_id=round_id,
        random_source=DeterministicRandom("s1"),
        round_guards={},
    )  # the earlier session's own guards
    return tuple(
        SurvivorSignature(e.message.sender, e.message.signature)
        for e in result.transcript
        if isinstance(e.message, ConsistencySignature)
    )


def test_signatures_replayed_from_an_earlier_session_with_the_same_round_id_are_refused():
    n, t = 7, 4
    params = SecAggParams(num_clients=n, threshold=t, active_adversary=True)
    assert params.signature_threshold == 4
    inputs = random_inputs(n, 8, 32, seed=13)
    server = MaliciousServer(params, inputs, label="replay", round_id=5)
    earlier = record_session_signatures(params, inputs, server.signing_keys, round_id=5)
    everyone, view_b = set(range(n)), set(range(1, n))
    group_a, group_b = {0, 1, 2}, {3, 4, 5, 6}
    fresh_a = server.collect_signatures(everyone, group_a)
    signatures_b = server.collect_signatures(view_b, group_b)
    replayed = tuple(s for s in earlier if s.client_id not in group_a)
    signatures_a = tuple(sorted(fresh_a + replayed, key=lambda s: s.client_id))
    seeds, _ = server.request_shares(everyone, (), group_a, signatures=signatures_a)
    _, mask_keys = server.request_shares(view_b, {0}, group_b, signatures=signatures_b)
    # view B is genuinely signed by 4 clients, so group B reveals the target's mask key ...
    assert server.reconstruct(mask_keys[0]) is not None
    # ... but group A refuses the replayed signatures: the target's self-mask seed stays hidden
    assert server.reconstruct(seeds.get(0, {})) is None
    assert refused_locally(server, group_a)
    assert "does not verify" in str(server.refusals[0])


def test_a_client_refuses_a_round_id_it_has_seen():
    n = 5
    params = SecAggParams(num_clients=n, threshold=3)
    inputs = random_inputs(n, 4, 32, seed=14)
    guards: dict[int, RoundIdGuard] = {}  # filled by the driver, kept by the caller
    run_secure_aggregation(inputs, params=params, round_id=9, round_guards=guards)
    assert all(guard.seen == {9} for guard in guards.values())
    with pytest.raises(LocalProtocolError, match="round id 9 was used before"):
        run_secure_aggregation(inputs, params=params, round_id=9, round_guards=guards)
    setup = RoundSetup.create(list(range(n)), vector_length=4, round_id=9)
    client = ClientProtocol(
        client_id=0,
        params=params,
        setup=setup,
        input_vector=inputs[0],
        round_guard=RoundIdGuard(guards[0].seen),
    )  # rebuilt from storage
    with pytest.raises(LocalProtocolError, match="used before"):
        client.start()
    run_secure_aggregation(inputs, params=params, round_id=10, round_guards=guards)


def test_active_mode_requires_round_guards_for_persistent_identities():
    """Second review, finding 2: without a guard, nothing stops a server from repeating a whole
    setup (the session hash holds only its own choices)."""
    params = SecAggParams(num_clients=5, threshold=4, active_adversary=True)
    setup = RoundSetup.create(range(5), vector_length=4, round_id=3)
    signing = {c: keys.generate_signing_key() for c in range(5)}
    verify = {c: k.public_key() for c, k in signing.items()}
    with pytest.raises(ConfigError, match="needs the client's round_guard"):
        ClientProtocol(
            client_id=0,
            params=params,
            setup=setup,
            input_vector=np.zeros(4, np.uint32),
            signing_key=signing[0],
            verify_keys=verify,
        )
    inputs = random_inputs(5, 4, 32, seed=19)
    with pytest.raises(ConfigError, match="caller-supplied signing_keys needs round_guards"):
        run_secure_aggregation(inputs, params=params, signing_keys=signing)
    run_secure_aggregation(inputs, params=params, signing_keys=signing, round_guards={})
    run_secure_aggregation(inputs, params=params)  # fresh keys: fresh guards are fine


def test_a_repeated_setup_replays_signed_keys_unless_the_client_keeps_its_guard():
    """/tmp/review/replay.py: a server reusing a whole RoundSetup shows client 0 client 1's
    signed keys from session 1 (whose mask key it may have reconstructed there)."""
    n = 5
    params = SecAggParams(num_clients=n, threshold=4, active_adversary=True)
    setup = RoundSetup.create(range(n), vector_length=4, round_id=3)
    signing = {c: keys.generate_signing_key() for c in range(n)}
    verify = {c: k.public_key() for c, k in signing.items()}
    guards = {c: RoundIdGuard() for c in range(n)}

    def session(guard_of):
        return {
            c: ClientProtocol(
                client_id=c,
                params=params,
                setup=setup,
                input_vector=np.zeros(4, np.uint32),
                signing_key=signing[c],
                verify_keys=verify,
                round_guard=guard_of(c),
            )
            for c in range(n)
        }

    first = session(guards.get)
    adverts_1 = {c: first[c].start()[0] for c in range(n)}
    # Positive control: fresh guards (a client that forgot its rounds) accept the replay.
    second = session(lambda c: RoundIdGuard())
    adverts_2 = {c: second[c].start()[0] for c in range(n)}
    shown = {**adverts_2, 1: adverts_1[1]}
    peers = tuple(
        PeerKeys(c, a.channel_public_key, a.mask_public_key, a.signature)
        for c, a in sorted(shown.items())
        if c != 0
    )
    second[0].receive(KeyDirectory(3, 0, peers))  # accepted: the signature still verifies
    # With its own guard, the client never starts the repeated session.
    with pytest.raises(LocalProtocolError, match="round id 3 was used before"):
        session(guards.get)[0].start()


def test_a_client_shown_other_advertised_keys_cannot_sign_the_others_view():
    """Active SecAgg+: the key directory lists everyone who advertised, and the survivor-set
    signature covers all those keys as the client saw them.  A client shown a directory without
    one non-neighbour signs a different digest: its signature does not verify for the others
    (here: the honest server rejects it), and the round finishes without it."""
    params = SecAggParams(num_clients=12, threshold=4, neighbors=4, active_adversary=True)
    inputs = random_inputs(12, 8, 32, seed=18)
    seed = bytes(range(32))
    graph = neighbourhoods(params, RoundSetup(0, tuple(range(12)), 8, seed))
    stranger = min(set(range(1, 12)) - graph[TARGET])

    def hide_stranger(packet):
        message = decode(packet.payload)
        if isinstance(message, KeyDirectory) and message.recipient == TARGET:
            assert stranger in {peer.client_id for peer in message.peers}
            peers = tuple(peer for peer in message.peers if peer.client_id != stranger)
            return [encode(dataclasses.replace(message, peers=peers))]
        return [packet.payload]

    result = run_secure_aggregation(inputs, params=params, network=hide_stranger, graph_seed=seed)
    [rejection] = [r for r in result.stats.rejections if r.party is None]
    assert rejection.peer == TARGET and "does not verify" in str(rejection.error)
    assert np.array_equal(result.sum, plain_sum(inputs, result.survivors, 32))


SETUP = RoundSetup(3, (0, 1, 2, 3, 4), 8, bytes(32))
PARAMS = SecAggParams(num_clients=5, threshold=4, active_adversary=True)


@pytest.mark.parametrize(
    "changed",
    [
        (PARAMS, dataclasses.replace(SETUP, context=b"model hash")),
        (PARAMS, dataclasses.replace(SETUP, round_id=4)),
        (PARAMS, dataclasses.replace(SETUP, graph_seed=bytes(31) + b"\x01")),
        (PARAMS, dataclasses.replace(SETUP, vector_length=9)),
        (PARAMS, dataclasses.replace(SETUP, participants=(0, 1, 2, 3, 5))),
        (dataclasses.replace(PARAMS, threshold=5), SETUP),
        (dataclasses.replace(PARAMS, max_colluders=1), SETUP),
        (dataclasses.replace(PARAMS, input_bound=0), SETUP),
        (dataclasses.replace(PARAMS, bits=31), SETUP),
    ],
    ids=["context", "round", "seed", "length", "participants", "threshold", "colluders", "bound", "bits"],
)
def test_session_hash_changes_with_every_field(changed):
    assert session_hash(*changed) != session_hash(PARAMS, SETUP)


def test_keys_signed_for_another_context_are_rejected_by_the_server():
    inputs = random_inputs(5, 8, 32, seed=15)
    signing = {c: keys.generate_signing_key() for c in range(5)}
    verify = {c: k.public_key() for c, k in signing.items()}
    server = ServerProtocol(params=PARAMS, setup=SETUP, verify_keys=verify)
    other = dataclasses.replace(SETUP, context=b"another model")
    client = ClientProtocol(
        client_id=0,
        params=PARAMS,
        setup=other,
        input_vector=inputs[0],
        signing_key=signing[0],
        verify_keys=verify,
        round_guard=RoundIdGuard(),
    )
    [advert] = client.start()
    with pytest.raises(RemoteProtocolError, match="not signed"):
        server.receive(advert)


# ------------------------------------------------------------------ point 4: honest server


def connected(graph, nodes) -> bool:
    """Reference connectivity of the induced subgraph: breadth-first search written here."""
    nodes = set(nodes)
    if not nodes:
        return True
    seen, queue = set(), [min(nodes)]
    while queue:
        v = queue.pop(0)
        if v in seen:
            continue
        seen.add(v)
        queue.extend(sorted((graph[v] & nodes) - seen))
    return seen == nodes


def test_honest_server_aborts_every_round_whose_survivors_graph_is_disconnected():
    """Monte Carlo of the review: n=20, k=4, t=3, dropout 10-20%.  Rounds whose survivors
    (clients whose masked input arrived) induce a disconnected graph must abort before any share
    is asked for; the others complete with the right sum."""
    n = 20
    params = SecAggParams(num_clients=n, threshold=3, neighbors=4)
    source = DeterministicRandom("monte carlo")
    generator = np.random.default_rng(20)
    inputs = random_inputs(n, 4, 32, seed=16)
    disconnected_tried = completed = 0
    for trial in range(400):
        seed = source(32)
        graph = neighbourhoods(params, RoundSetup(0, tuple(range(n)), 4, seed))
        plan = DropoutPlan.random(
            range(n), rate=0.1 + 0.1 * (trial % 2), generator=generator, steps=protocol_steps(params)
        )
        survivors = {
            c
            for c in range(n)
            if c not in plan.dropouts
            or plan.dropouts[c].step > Step.MASKED_INPUT
            or (plan.dropouts[c].step is Step.MASKED_INPUT and plan.dropouts[c].after_sending)
        }
        if connected(graph, survivors):
            if completed >= 15:
                continue
            try:
                result = run_secure_aggregation(
                    inputs, params=params, dropouts=plan, graph_seed=seed, record_transcript=False
                )
            except ThresholdNotMetError:
                continue
            completed += 1
            assert np.array_equal(result.sum, plain_sum(inputs, result.survivors, 32))
            continue
        disconnected_tried += 1
        with pytest.raises(ThresholdNotMetError) as aborted:
            run_secure_aggregation(
                inputs, params=params, dropouts=plan, graph_seed=seed, record_transcript=False
            )
        assert aborted.value.step <= Step.MASKED_INPUT  # before any share was asked for
    assert disconnected_tried >= 5 and completed >= 5


@pytest.mark.parametrize(
    ("n", "dropout", "corruption", "active"),
    [(100, 0.1, 0.05, False), (50, 0.05, 0.0, True), (60, 0.05, 0.1, True), (20, 0.1, 0.1, False)],
)
def test_chosen_parameters_pass_the_assessment_and_the_review_case_does_not(n, dropout, corruption, active):
    chosen = choose_parameters(n, dropout_rate=dropout, corruption_rate=corruption, active_adversary=active)
    assert assess_parameters(chosen, dropout_rate=dropout) == ()
    assert chosen.max_colluders == math.ceil(corruption * n)
    review = SecAggParams(num_clients=20, threshold=3, neighbors=4)
    assert any(rule.startswith("connectivity") for rule in assess_parameters(review, dropout_rate=0.1))


def test_rule_violations_warn_in_passive_mode_and_are_refused_in_active_mode():
    passive = SecAggParams(num_clients=20, threshold=4, neighbors=4, max_colluders=0)
    with pytest.warns(UserWarning, match="connectivity"):
        assert enforce_parameter_rules(passive, dropout_rate=0.1)
    active = dataclasses.replace(passive, active_adversary=True)
    with pytest.raises(ConfigError, match="refused against an active server: connectivity"):
        enforce_parameter_rules(active, dropout_rate=0.1)
    assert enforce_parameter_rules(active, dropout_rate=0.0) == ()


# ------------------------------------------------------------------ point 6: threshold 1


def test_threshold_one_is_refused_by_the_protocol_parameters():
    """With t = 1 each share is the secret: a lone survivor's input would come out in the clear
    and any single share holder could unmask a client with the server."""
    with pytest.raises(ConfigError, match="every share is the secret itself"):
        SecAggParams(num_clients=3, threshold=1)
    with pytest.raises(ConfigError, match="every share is the secret itself"):
        SecAggParams(num_clients=6, threshold=1, neighbors=2)
    with pytest.raises(ConfigError, match="every share is the secret itself"):
        run_secure_aggregation(
            random_inputs(3, 4, 32, seed=17), params=SecAggParams(num_clients=3, threshold=1)
        )
