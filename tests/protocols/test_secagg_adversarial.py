"""Tampered, redirected and replayed ciphertexts and messages, wrong-round messages and
malicious-server requests: each is rejected with a typed error, honest clients reveal nothing they
must not, and the round still finishes with the offender treated as dropped."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from secagg_helpers import plain_sum, random_inputs

from securefl.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from securefl.protocols.crypto import keys
from securefl.protocols.secagg import (
    Dropout,
    DropoutPlan,
    SecAggParams,
    Step,
    decode,
    encode,
    run_secure_aggregation,
)
from securefl.protocols.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    KeyDirectory,
    MaskedInput,
    RelayedShares,
    ShareKeys,
    SurvivorSignature,
    UnmaskingRequest,
    UnmaskingShares,
    survivor_set_payload,
)

N, T = 7, 4
PARAMS = SecAggParams(num_clients=N, threshold=T)


class Adversary:
    """A network that rewrites packets: `rewrite(message, packet)` returns messages to deliver."""

    def __init__(self, rewrite):
        self.rewrite = rewrite

    def __call__(self, packet):
        message = decode(packet.payload)
        out = self.rewrite(message, packet)
        if out is None:
            return [packet.payload]
        return [m if isinstance(m, bytes) else encode(m) for m in out]


def rejections_of(result, party, error_type):
    return [r for r in result.stats.rejections if r.party == party and isinstance(r.error, error_type)]


def unmasking_from(result, sender):
    return [
        e.message
        for e in result.transcript
        if isinstance(e.message, UnmaskingShares) and e.message.sender == sender
    ]


def flip_share(message: RelayedShares, sender: int) -> RelayedShares:
    records = []
    for record in message.sealed_shares:
        if record.sender == sender:
            tampered = bytearray(record.ciphertext)
            tampered[40] ^= 0x01
            record = dataclasses.replace(record, ciphertext=bytes(tampered))
        records.append(record)
    return dataclasses.replace(message, sealed_shares=tuple(records))


@pytest.mark.parametrize("owner_drops", [False, True])
def test_tampered_sealed_share_is_rejected_and_the_round_finishes(owner_drops):
    inputs = random_inputs(N, 40, 32, seed=1)

    def rewrite(message, packet):
        if isinstance(message, RelayedShares) and message.recipient == 2:
            return [flip_share(message, sender=4)]
        return None

    plan = DropoutPlan({4: Dropout(Step.MASKED_INPUT)} if owner_drops else {})
    result = run_secure_aggregation(inputs, params=PARAMS, dropouts=plan, network=Adversary(rewrite))
    expected = frozenset(inputs) - ({4} if owner_drops else set())
    assert result.survivors == expected
    assert np.array_equal(result.sum, plain_sum(inputs, expected, 32))
    [rejection] = rejections_of(result, 2, RemoteProtocolError)
    assert rejection.peer == 4 and rejection.step is Step.MASKED_INPUT
    assert "failed authentication" in str(rejection.error)
    [answer] = unmasking_from(result, 2)
    owners = {r.owner for r in answer.self_mask_shares + answer.mask_key_shares}
    assert 4 not in owners and owners == set(inputs) - {4}


def test_redirected_sealed_share_is_rejected():
    inputs = random_inputs(N, 10, 32, seed=2)
    sent_by_4 = {}

    def rewrite(message, packet):
        if isinstance(message, ShareKeys) and message.sender == 4:
            sent_by_4.update({r.recipient: r.ciphertext for r in message.sealed_shares})
        if isinstance(message, RelayedShares) and message.recipient == 2:
            records = tuple(
                dataclasses.replace(r, ciphertext=sent_by_4[3]) if r.sender == 4 else r
                for r in message.sealed_shares
            )
            return [dataclasses.replace(message, sealed_shares=records)]
        return None

    result = run_secure_aggregation(inputs, params=PARAMS, network=Adversary(rewrite))
    [rejection] = rejections_of(result, 2, RemoteProtocolError)
    assert rejection.peer == 4
    assert np.array_equal(result.sum, plain_sum(inputs, inputs, 32))


def test_sealed_share_replayed_from_an_earlier_round_is_rejected():
    inputs = random_inputs(N, 10, 32, seed=3)
    earlier = {}

    def record(message, packet):
        if isinstance(message, RelayedShares) and message.recipient == 2:
            earlier.update({r.sender: r.ciphertext for r in message.sealed_shares})
        return None

    run_secure_aggregation(inputs, params=PARAMS, round_id=0, network=Adversary(record))

    def replay(message, packet):
        if isinstance(message, RelayedShares) and message.recipient == 2:
            records = tuple(
                dataclasses.replace(r, ciphertext=earlier[r.sender]) if r.sender == 5 else r
                for r in message.sealed_shares
            )
            return [dataclasses.replace(message, sealed_shares=records)]
        return None

    result = run_secure_aggregation(inputs, params=PARAMS, round_id=1, network=Adversary(replay))
    assert [r.peer for r in rejections_of(result, 2, RemoteProtocolError)] == [5]
    assert np.array_equal(result.sum, plain_sum(inputs, inputs, 32))


def test_replayed_client_message_is_rejected_once_and_changes_nothing():
    inputs = random_inputs(N, 10, 32, seed=4)

    def duplicate(message, packet):
        if isinstance(message, ShareKeys | MaskedInput) and message.sender == 3:
            return [message, message]
        return None

    result = run_secure_aggregation(inputs, params=PARAMS, network=Adversary(duplicate))
    server_rejections = rejections_of(result, None, RemoteProtocolError)
    assert len(server_rejections) == 2 and all(r.peer == 3 for r in server_rejections)
    assert all("replay" in str(r.error) for r in server_rejections)
    assert result.survivors == frozenset(inputs)
    assert np.array_equal(result.sum, plain_sum(inputs, inputs, 32))


@pytest.mark.parametrize("message_type", [AdvertiseKeys, ShareKeys, MaskedInput])
def test_message_from_the_wrong_round_is_rejected_and_its_sender_dropped(message_type):
    inputs = random_inputs(N, 10, 32, seed=5)

    def wrong_round(message, packet):
        if isinstance(message, message_type) and message.sender == 5:
            return [dataclasses.replace(message, round_id=message.round_id + 1)]
        return None

    result = run_secure_aggregation(inputs, params=PARAMS, network=Adversary(wrong_round))
    [rejection] = rejections_of(result, None, RemoteProtocolError)
    assert rejection.peer == 5 and "round" in str(rejection.error)
    assert result.survivors == frozenset(inputs) - {5}
    assert np.array_equal(result.sum, plain_sum(inputs, result.survivors, 32))


def test_replayed_server_message_is_rejected_by_the_client():
    inputs = random_inputs(N, 10, 32, seed=6)

    def duplicate(message, packet):
        if isinstance(message, RelayedShares | KeyDirectory) and message.recipient == 1:
            return [message, message]
        return None

    result = run_secure_aggregation(inputs, params=PARAMS, network=Adversary(duplicate))
    errors = rejections_of(result, 1, RemoteProtocolError)
    assert len(errors) == 2 and all("replayed or out of order" in str(r.error) for r in errors)
    assert result.survivors == frozenset(inputs)
    assert np.array_equal(result.sum, plain_sum(inputs, inputs, 32))


def test_truncated_message_raises_decode_error_and_its_sender_is_dropped():
    inputs = random_inputs(N, 10, 32, seed=7)

    def network(packet):
        if packet.sender == 6 and packet.step is Step.ADVERTISE_KEYS:
            return [packet.payload[:-5]]
        return [packet.payload]

    result = run_secure_aggregation(inputs, params=PARAMS, network=network)
    [rejection] = rejections_of(result, None, DecodeError)
    assert rejection.peer == 6
    assert result.survivors == frozenset(inputs) - {6}
    assert np.array_equal(result.sum, plain_sum(inputs, result.survivors, 32))


ACTIVE = SecAggParams(num_clients=N, threshold=5, active_adversary=True)


def test_active_mode_rejects_substituted_keys_at_the_server_and_the_client():
    inputs = random_inputs(N, 10, 32, seed=8)
    intruder = keys.public_bytes(keys.generate_agreement_key())

    def substitute(message, packet):
        if isinstance(message, AdvertiseKeys) and message.sender == 6:
            return [dataclasses.replace(message, channel_public_key=intruder)]
        if isinstance(message, KeyDirectory) and message.recipient == 2:
            peers = tuple(
                dataclasses.replace(p, mask_public_key=intruder) if p.client_id == 4 else p
                for p in message.peers
            )
            return [dataclasses.replace(message, peers=peers)]
        return None

    result = run_secure_aggregation(inputs, params=ACTIVE, network=Adversary(substitute))
    assert "not signed" in str(rejections_of(result, None, RemoteProtocolError)[0].error)
    assert "not signed" in str(rejections_of(result, 2, RemoteProtocolError)[0].error)
    assert result.survivors == frozenset(inputs) - {2, 6}
    assert np.array_equal(result.sum, plain_sum(inputs, result.survivors, 32))


# ------------------------------------------------------------------ malicious-server requests


def run_with_malicious_request(params, tamper, *, recipient=0, dropouts=None, signing_keys=None, seed=9):
    inputs = random_inputs(N, 12, 32, seed=seed)

    def rewrite(message, packet):
        if isinstance(message, UnmaskingRequest) and message.recipient == recipient:
            return tamper(message)
        return None

    result = run_secure_aggregation(
        inputs,
        params=params,
        network=Adversary(rewrite),
        dropouts=dropouts,
        signing_keys=signing_keys,
        round_guards={} if signing_keys else None,
    )
    # the round still finishes without the refusing client's shares, and correctly
    assert np.array_equal(result.sum, plain_sum(inputs, result.survivors, 32))
    return result


def assert_refused(result, client, fragment):
    [rejection] = rejections_of(result, client, LocalProtocolError)
    assert fragment in str(rejection.error)
    assert unmasking_from(result, client) == []


def test_client_refuses_overlapping_survivor_and_dropped_lists():
    def overlap(message):
        return [dataclasses.replace(message, dropped=tuple(sorted(message.dropped + (3,))))]

    result = run_with_malicious_request(PARAMS, overlap)
    assert_refused(result, 0, "both as survivors and as dropped")


def test_client_reveals_only_one_share_kind_across_two_requests():
    def second_request_flips_client_3(message):
        flipped = dataclasses.replace(
            message,
            survivors=tuple(c for c in message.survivors if c != 3),
            dropped=tuple(sorted(message.dropped + (3,))),
        )
        return [message, flipped]

    result = run_with_malicious_request(PARAMS, second_request_flips_client_3)
    [error] = rejections_of(result, 0, RemoteProtocolError)
    assert "replayed or out of order" in str(error.error)
    [answer] = unmasking_from(result, 0)
    assert 3 in {r.owner for r in answer.self_mask_shares}
    assert 3 not in {r.owner for r in answer.mask_key_shares}


@pytest.mark.parametrize(
    ("tamper", "fragment"),
    [
        (lambda m: [dataclasses.replace(m, dropped=tuple(sorted(m.dropped + (6,))))], "never shared keys"),
        (
            lambda m: [dataclasses.replace(m, survivors=tuple(c for c in m.survivors if c != 3))],
            "neither survivors nor dropped",
        ),
        (
            lambda m: [
                dataclasses.replace(m, survivors=m.survivors[1:], dropped=tuple(sorted(m.dropped + (0,))))
            ],
            "not in the survivor set",
        ),
    ],
    ids=["never-shared-listed", "sharer-omitted", "self-listed-dropped"],
)
def test_client_refuses_lists_that_contradict_earlier_rounds(tamper, fragment):
    plan = DropoutPlan({6: Dropout(Step.ADVERTISE_KEYS)})
    result = run_with_malicious_request(PARAMS, tamper, dropouts=plan)
    assert_refused(result, 0, fragment)


def signing_keys_for(n):
    return {c: keys.generate_signing_key() for c in range(n)}


def test_active_client_refuses_a_survivor_set_other_than_the_one_it_signed():
    def different_set(message):
        return [
            dataclasses.replace(
                message,
                survivors=message.survivors[:-1],
                dropped=tuple(sorted(message.dropped + message.survivors[-1:])),
            )
        ]

    result = run_with_malicious_request(ACTIVE, different_set)
    assert_refused(result, 0, "differs from the one client 0 signed")


def test_active_client_refuses_signatures_over_a_different_survivor_set():
    """Split view: the server showed client 3 another survivor set and got it signed."""
    signing = signing_keys_for(N)

    def split_view(message):
        other_set = message.survivors[:-1]
        # client 3's genuine signature, over another set (session and keys digest made up)
        forged = keys.sign(signing[3], survivor_set_payload(bytes(32), bytes(32), other_set))
        signatures = tuple(
            SurvivorSignature(s.client_id, forged) if s.client_id == 3 else s for s in message.signatures
        )
        return [dataclasses.replace(message, signatures=signatures)]

    result = run_with_malicious_request(ACTIVE, split_view, signing_keys=signing)
    assert_refused(result, 0, "does not verify")


def test_active_client_refuses_too_few_signatures():
    def strip(message):
        return [dataclasses.replace(message, signatures=message.signatures[:4])]

    result = run_with_malicious_request(ACTIVE, strip)
    assert_refused(result, 0, "only 4 valid signatures")


def test_active_consistency_request_for_a_different_set_gets_a_signature_the_server_rejects():
    inputs = random_inputs(N, 12, 32, seed=10)

    def other_set(message, packet):
        if isinstance(message, ConsistencyRequest) and message.recipient == 1:
            return [dataclasses.replace(message, survivors=message.survivors[:-1])]
        return None

    result = run_secure_aggregation(inputs, params=ACTIVE, network=Adversary(other_set))
    [rejection] = rejections_of(result, None, RemoteProtocolError)
    assert rejection.peer == 1 and "does not verify" in str(rejection.error)
    assert unmasking_from(result, 1) == []
    assert np.array_equal(result.sum, plain_sum(inputs, inputs, 32))
