"""Clients in different contexts (shown different models) are in different sessions: their
pairwise masks do not cancel (passive mode) and their signatures do not verify (active mode), so
a server cannot sum a target together with clients it sent another model."""

from __future__ import annotations

import numpy as np
import pytest
from secagg_helpers import DeterministicRandom, plain_sum, random_inputs

from securefl.errors import ThresholdNotMetError
from securefl.protocols.crypto import keys
from securefl.protocols.secagg import SecAggParams, ServerProtocol, run_secure_aggregation
from securefl.protocols.secagg.messages import AdvertiseKeys

N, BITS, LENGTH = 6, 32, 64
MODEL_A, MODEL_B = b"A" * 32, b"B" * 32


def _run(params, inputs, contexts, label):
    return run_secure_aggregation(
        inputs,
        params=params,
        random_source=DeterministicRandom(label),
        context=MODEL_B,
        client_contexts=contexts,
    )


@pytest.mark.parametrize("active", [False, True])
def test_one_context_for_all_gives_the_exact_sum(active):
    params = SecAggParams(num_clients=N, threshold=4, bits=BITS, active_adversary=active)
    inputs = random_inputs(N, LENGTH, BITS, seed=1)
    result = _run(params, inputs, {c: MODEL_B for c in inputs}, "same")
    assert np.array_equal(result.sum, plain_sum(inputs, range(N), BITS))


def test_passive_mode_a_client_in_another_context_leaves_only_pseudorandom_words():
    params = SecAggParams(num_clients=N, threshold=4, bits=BITS)
    inputs = {c: np.zeros(LENGTH, dtype=np.uint32) for c in range(N)}
    inputs[0] = np.arange(LENGTH, dtype=np.uint32)  # the target's update; the others' are zero
    result = _run(params, inputs, {0: MODEL_A, **{c: MODEL_B for c in range(1, N)}}, "split")
    assert result.survivors == frozenset(range(N))  # the round "succeeds" ...
    target = plain_sum(inputs, range(N), BITS)
    assert np.count_nonzero(result.sum == target) <= 2  # ... but the target's masks never cancel
    assert 2**BITS / 4 < result.sum.astype(np.float64).mean() < 3 * 2**BITS / 4


def test_active_mode_the_server_code_rejects_the_other_sessions_signature():
    params = SecAggParams(num_clients=N, threshold=4, bits=BITS, active_adversary=True)
    inputs = random_inputs(N, LENGTH, BITS, seed=2)
    result = _run(params, inputs, {0: MODEL_A, **{c: MODEL_B for c in range(1, N)}}, "active")
    assert 0 not in result.survivors
    assert np.array_equal(result.sum, plain_sum(inputs, range(1, N), BITS))
    assert any(r.party is None and r.peer in (0, None) for r in result.stats.rejections)


def test_active_mode_clients_refuse_even_when_the_server_skips_its_own_signature_check(monkeypatch):
    """A malicious server forwards the target's keys signed in another session: every honest
    client that verifies them refuses, the round ends without a sum."""

    def forward_anything(self, message: AdvertiseKeys) -> None:
        keys.check_agreement_public_key(message.channel_public_key)
        keys.check_agreement_public_key(message.mask_public_key)

    monkeypatch.setattr(ServerProtocol, "_check_advertise_keys", forward_anything)
    params = SecAggParams(num_clients=N, threshold=4, bits=BITS, active_adversary=True)
    inputs = random_inputs(N, LENGTH, BITS, seed=3)
    same = _run(params, inputs, {c: MODEL_B for c in inputs}, "forward-same")
    assert np.array_equal(same.sum, plain_sum(inputs, range(N), BITS))  # the hook alone is harmless
    with pytest.raises(ThresholdNotMetError):
        _run(params, inputs, {0: MODEL_A, **{c: MODEL_B for c in range(1, N)}}, "forward-split")


def test_pairwise_mask_keys_are_hkdf_salted_with_the_session_hash():
    """Against an independent HKDF (RFC 5869 with the standard library's HMAC): the salt is the
    session hash, the info label is unchanged, and no salt is still the frozen vectors' derivation."""
    import hashlib
    import hmac

    from securefl.protocols.crypto.keys import KeyPurpose, derivation_label, derive_key

    def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
        prk = hmac.new(salt, ikm, hashlib.sha256).digest()
        return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()

    secret, session = bytes(range(32)), hashlib.sha256(b"session").digest()
    info = derivation_label(KeyPurpose.PAIRWISE_MASK, round_id=7, parties=(1, 2))
    salted = derive_key(secret, purpose=KeyPurpose.PAIRWISE_MASK, round_id=7, parties=(1, 2), session=session)
    plain = derive_key(secret, purpose=KeyPurpose.PAIRWISE_MASK, round_id=7, parties=(1, 2))
    assert salted == hkdf(secret, session, info)
    assert plain == hkdf(secret, b"\x00" * 32, info)  # RFC 5869: no salt = HashLen zero bytes
    assert salted != plain


def test_a_client_refuses_a_setup_binding_another_context_than_its_own():
    from securefl.errors import LocalProtocolError
    from securefl.protocols.secagg import ClientProtocol, RoundSetup

    params = SecAggParams(num_clients=3, threshold=2, bits=BITS)
    vector = np.zeros(LENGTH, dtype=np.uint32)

    def client(expected):
        setup = RoundSetup(0, (0, 1, 2), LENGTH, b"\x00" * 32, context=MODEL_B)
        return ClientProtocol(
            client_id=0, params=params, setup=setup, input_vector=vector, expected_context=expected
        )

    assert client(MODEL_B).start()  # its own model's context: it advertises keys
    with pytest.raises(LocalProtocolError, match="another context"):
        client(MODEL_A)
