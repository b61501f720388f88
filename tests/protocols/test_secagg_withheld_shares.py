"""Isolation by withheld shares (issue 9, second review, finding 1), through the public API.

A malicious server relays to the target only the sealed shares of ``t - 1`` chosen partners
(colluders first, then honest clients), so the target masks with them alone; it declares the
honest partners dropped and asks everyone but the target to sign and unmask.  The target refuses,
but is not needed: the other survivors reveal its self-mask seed, the partners' mask keys are
reconstructed, the colluders hand over theirs, and the target's input comes out exactly.  It needs
``t`` signers other than the target and its dropped partners, so active mode requires
``2t > n + c`` (complete graph).  The same withholding against a band of SecAgg+ clients (the
band hears only from itself, everyone else hears from the band) leaks the band's sum unless
``2t > k + 2``.  Each attack has a positive control in which it recovers the secret exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from secagg_attacks import MaliciousServer, refused_locally
from secagg_helpers import plain_sum, random_inputs

from securefl.errors import ConfigError
from securefl.protocols.secagg import RoundSetup, SecAggParams, choose_parameters
from securefl.protocols.secagg.graph import neighbourhoods, random_permutation

TARGET = 0
SEED = bytes(range(32))


def isolation_attack(params, *, colluders=(), label):
    """Returns (server, the target's input recovered by the attacker, or ``None``)."""
    n, t = params.num_clients, params.threshold
    inputs = random_inputs(n, 8, params.bits, seed=21)
    graph = neighbourhoods(params, RoundSetup(0, tuple(range(n)), 8, SEED))
    assert set(colluders) <= graph[TARGET]
    honest_partners = sorted(graph[TARGET] - set(colluders))[: t - 1 - len(colluders)]
    partners = set(colluders) | set(honest_partners)
    server = MaliciousServer(
        params,
        inputs,
        label=label,
        colluders=tuple(colluders),
        graph_seed=SEED,
        withhold={TARGET: set(range(n)) - partners - {TARGET}},
    )
    assert server.partners[TARGET] == partners  # the target masked with t - 1 partners only
    survivors = set(range(n)) - set(honest_partners)
    signatures = server.collect_signatures(survivors, survivors) if params.active_adversary else ()
    seeds, mask_keys = server.request_shares(survivors, honest_partners, survivors, signatures=signatures)
    seed = server.reconstruct(seeds.get(TARGET, {}))
    dropped_keys = {v: server.reconstruct(mask_keys.get(v, {})) for v in honest_partners}
    if seed is None or None in dropped_keys.values():
        return server, None
    recovered = server.unmask_sum(
        {TARGET}, seeds={TARGET: seed}, mask_keys={**dropped_keys, **server.colluder_mask_keys}
    )
    assert np.array_equal(recovered, plain_sum(inputs, {TARGET}, params.bits))
    return server, recovered


def test_isolation_recovers_the_target_when_colluders_exceed_the_declared_bound():
    """Positive control: n=10, t=6 declares c=1; with three colluders the target comes out."""
    params = SecAggParams(num_clients=10, threshold=6, active_adversary=True, max_colluders=1)
    _, recovered = isolation_attack(params, colluders=(1, 2, 3), label="isolate control")
    assert recovered is not None


def test_isolation_is_refused_at_the_declared_bound():
    """n=10, t=6, c=1 (2t > n + c): only 5 clients besides the target and its 4 dropped
    partners can sign, fewer than t, so every survivor refuses to unmask."""
    params = SecAggParams(num_clients=10, threshold=6, active_adversary=True, max_colluders=1)
    server, recovered = isolation_attack(params, colluders=(1,), label="isolate bound")
    assert recovered is None
    survivors = set(range(10)) - {TARGET} - set(range(2, 6))
    assert refused_locally(server, survivors)
    assert "valid signatures" in str(server.refusals[min(survivors)])


# The review's configurations: each accepted before the fix, each broken by the attack.
REVIEW_CASES = [
    pytest.param({"num_clients": 10, "threshold": 5, "max_colluders": 4}, (1, 2, 3, 4), id="n10-t5-c4"),
    pytest.param({"num_clients": 10, "threshold": 7, "max_colluders": 5}, (1, 2, 3, 4, 5), id="n10-t7-c5"),
    pytest.param({"num_clients": 20, "threshold": 3, "neighbors": 6}, (), id="n20-t3-k6"),
]


@pytest.mark.parametrize(("kwargs", "colluders"), REVIEW_CASES)
def test_review_configurations_are_refused_in_active_mode(kwargs, colluders):
    with pytest.raises(ConfigError, match=r"2 \* threshold >"):
        SecAggParams(**kwargs, active_adversary=True)
    # Positive control: the same n, t, c, k without the active-mode requirement (the
    # honest-but-curious model, where no client counts signatures) falls to the attack.
    _, recovered = isolation_attack(SecAggParams(**kwargs), colluders=colluders, label=f"review {kwargs}")
    assert recovered is not None


def test_isolation_on_secagg_plus_fails_at_the_smallest_accepted_threshold():
    """n=20, k=6: active mode needs t >= 5; the target's holders outside its 4 dropped partners
    and itself are 2, fewer than t, so its self-mask seed stays hidden."""
    with pytest.raises(ConfigError, match="`threshold` >= 5, not 4"):
        SecAggParams(num_clients=20, threshold=4, neighbors=6, active_adversary=True)
    params = SecAggParams(num_clients=20, threshold=5, neighbors=6, active_adversary=True)
    _, recovered = isolation_attack(params, label="isolate sparse")
    assert recovered is None


def band_attack(params, *, band_size, label):
    """SecAgg+: the band (``band_size`` consecutive clients on the ring) hears only from itself,
    everyone else hears from everyone; nobody is declared dropped.  Returns the band's sum as
    the attacker recovers it, or ``None``."""
    n = params.num_clients
    inputs = random_inputs(n, 8, params.bits, seed=22)
    band = set(random_permutation(range(n), seed=SEED, round_id=0)[:band_size])
    server = MaliciousServer(
        params, inputs, label=label, graph_seed=SEED, withhold={u: set(range(n)) - band for u in band}
    )
    everyone = set(range(n))
    signatures = server.collect_signatures(everyone, everyone) if params.active_adversary else ()
    seeds, _ = server.request_shares(everyone, (), everyone, signatures=signatures)
    band_seeds = {u: server.reconstruct(seeds.get(u, {})) for u in band}
    if None in band_seeds.values():
        return None
    recovered = server.unmask_sum(band, seeds=band_seeds, mask_keys={})
    assert np.array_equal(recovered, plain_sum(inputs, band, params.bits))
    return recovered


def test_band_of_secagg_plus_clients_is_unmasked_unless_2t_exceeds_k_plus_2():
    """n=30, k=6: t=4 meets 2t > k + 1 but not 2t > k + 2.  Outside the band every client signs
    and reveals, and each band client's seed has exactly k/2 + 1 = 4 revealing holders, so the
    band's sum (10 of 30 clients) comes out; refused on construction.  At t=5 it fails."""
    with pytest.raises(ConfigError, match=r"2 \* threshold > k \+ 2"):
        SecAggParams(num_clients=30, threshold=4, neighbors=6, active_adversary=True)
    # Positive control: the attack works at t = 4 when nothing counts signatures.
    assert (
        band_attack(
            SecAggParams(num_clients=30, threshold=4, neighbors=6), band_size=10, label="band control"
        )
        is not None
    )
    secure = SecAggParams(num_clients=30, threshold=5, neighbors=6, active_adversary=True)
    assert band_attack(secure, band_size=10, label="band secure") is None


def active_bound_holds(params, c):
    """Independent statement of the active-mode requirement (not the library's code)."""
    t, n = params.threshold, params.num_clients
    if params.neighbors is None:
        return 2 * t > n + c and t > c
    return c == 0 and 2 * t > params.neighbors + 2


@pytest.mark.parametrize("n", [5, 10, 20, 50, 100])
@pytest.mark.parametrize("dropout", [0.0, 0.01, 0.05, 0.1])
@pytest.mark.parametrize("corruption", [0.0, 0.05, 0.1, 0.2])
def test_choose_parameters_active_outputs_meet_the_bound(n, dropout, corruption):
    try:
        params = choose_parameters(n, dropout_rate=dropout, corruption_rate=corruption, active_adversary=True)
    except ConfigError as error:
        assert "2t > n + c" in str(error)
        return
    assert active_bound_holds(params, math.ceil(corruption * n))
    assert params.signature_threshold == (
        params.threshold if params.complete_graph else max(params.threshold, n // 2 + 1)
    )


def test_choose_parameters_raises_t_for_the_review_cases():
    complete = choose_parameters(20, dropout_rate=0.01, corruption_rate=0.1, active_adversary=True)
    assert complete.complete_graph and complete.threshold == 12  # was 3 before the fix
    sparse = choose_parameters(100, dropout_rate=0.1, corruption_rate=0.0, active_adversary=True)
    assert 2 * sparse.threshold > sparse.neighbors + 2
    with pytest.raises(ConfigError, match="2t > n \\+ c"):
        choose_parameters(20, dropout_rate=0.05, corruption_rate=0.1, active_adversary=True)
