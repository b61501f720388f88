"""The server side of secure aggregation as a pure state machine (sans-IO).

Implements the server of Bonawitz et al. (CCS 2017, figure 4) with the SecAgg+ graphs of Bell et
al. (CCS 2020).  The server collects one message per client per step (:meth:`receive`); the
transport tells it when a step's deadline has passed (:meth:`close_step`), and it answers with the
next step's messages for the clients still present.  The server never sees an input: it adds each
masked input into one running sum as it arrives and keeps nothing else of it.  After unmasking,
:attr:`result` holds the only things that leave the server: the sum of the survivors' inputs in
Z_{2^bits} and the survivor set.

Dropout recovery: for every survivor ``u`` the server reconstructs the self-mask seed ``b_u`` from
``t`` shares (checked against ``u``'s commitment) and removes ``PRG(b_u)``; for every client ``v``
that shared keys but sent no masked input, it reconstructs ``s_v^SK`` (checked against ``v``'s
advertised public key) and removes ``v``'s pairwise masks from the survivors who masked with it.

Errors: an invalid, late, replayed or wrong-round message raises :class:`RemoteProtocolError` and
is ignored (state unchanged; the sender is treated as dropped if it sends nothing valid).  Fewer
than ``t`` clients (or share holders) at any step raises :class:`ThresholdNotMetError` and the
round is over: nothing is output.  So does, with SecAgg+, a survivor set whose induced graph is
disconnected, before any share is asked for: unmasking it would reveal each component's sum.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefl.errors import (
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
    ThresholdNotMetError,
)
from securefl.protocols.crypto import keys, prg, shamir
from securefl.protocols.crypto.keys import KeyPurpose
from securefl.protocols.secagg import ring
from securefl.protocols.secagg.graph import induces_connected_subgraph, neighbourhoods
from securefl.protocols.secagg.messages import (
    AdvertiseKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    Message,
    PeerKeys,
    RelayedShares,
    SealedShares,
    ServerMessage,
    ShareKeys,
    Step,
    SurvivorSignature,
    UnmaskingRequest,
    UnmaskingShares,
    advertise_signature_payload,
    advertised_keys_digest,
    self_mask_commitment,
    survivor_set_payload,
)
from securefl.protocols.secagg.params import RoundSetup, SecAggParams, session_hash

_Answer = TypeVar("_Answer", AdvertiseKeys, ShareKeys, ConsistencySignature, UnmaskingShares)


@dataclass(frozen=True)
class AggregationOutput:
    """Everything the server learns: the survivors' sum in Z_{2^bits} and who the survivors are."""

    sum: np.ndarray
    survivors: frozenset[int]


class ServerState(enum.Enum):
    """Whether the server is collecting a step, finished, or aborted."""

    COLLECTING = "collecting"
    FINISHED = "finished"
    ABORTED = "aborted"


class ServerProtocol:
    """The server's side of one secure-aggregation round.

    ``verify_keys`` (every participant's Ed25519 public key) is required in active-adversary mode.
    """

    def __init__(
        self,
        *,
        params: SecAggParams,
        setup: RoundSetup,
        verify_keys: Mapping[int, Ed25519PublicKey] | None = None,
    ) -> None:
        setup.check(params)
        if params.active_adversary and (verify_keys is None or set(setup.participants) - set(verify_keys)):
            raise ConfigError("active_adversary mode needs the verify_keys of every participant")
        self.params = params
        self.setup = setup
        self.state = ServerState.COLLECTING
        self.step = Step.ADVERTISE_KEYS
        self._steps = [s for s in Step if params.active_adversary or s is not Step.CONSISTENCY_CHECK]
        self._verify_keys = dict(verify_keys or {}) if params.active_adversary else {}
        self._neighbours = neighbourhoods(params, setup)
        self._session = session_hash(params, setup)
        self._keys_digest = b""
        self._eligible = frozenset(setup.participants)
        self._received: dict[int, ClientMessage] = {}
        self._advertised: dict[int, AdvertiseKeys] = {}
        self._shared: dict[int, ShareKeys] = {}
        self._with_keys: frozenset[int] = frozenset()  # U1
        self._with_shares: frozenset[int] = frozenset()  # U2
        self._survivors: frozenset[int] = frozenset()  # U3
        self._masked_sum = np.zeros(setup.vector_length, dtype=params.word_dtype)
        self._result: AggregationOutput | None = None

    # ------------------------------------------------------------------------------ public API

    @property
    def result(self) -> AggregationOutput:
        """The round's output; :class:`LocalProtocolError` before the round has finished."""
        if self._result is None:
            raise LocalProtocolError(
                f"the round has not finished (state {self.state.value}, step {self.step.label})"
            )
        return self._result

    def receive(self, message: Message) -> list[ServerMessage]:
        """Accept one client message for the current step (answers come from :meth:`close_step`).

        Any decoded message is accepted as input: one that is not a client message is rejected
        (:class:`RemoteProtocolError`), like every other message the server cannot take now.
        """
        if self.state is not ServerState.COLLECTING:
            raise RemoteProtocolError(
                f"{type(message).__name__} after the round {self.state.value}: rejected"
            )
        step = getattr(message, "step", None)
        if not isinstance(message, ClientMessage):
            raise RemoteProtocolError(
                f"server got a {type(message).__name__}, which is not a client message: rejected"
            )
        if message.round_id != self.setup.round_id:
            raise RemoteProtocolError(
                f"{type(message).__name__} from client {message.sender} is "
                f"for round {message.round_id}, this is round "
                f"{self.setup.round_id}: rejected"
            )
        if step is not self.step:
            raise RemoteProtocolError(
                f"{type(message).__name__} from client {message.sender} "
                f"arrived during {self.step.label}: rejected (late, "
                "replayed or out of order)"
            )
        if message.sender not in self._eligible:
            raise RemoteProtocolError(
                f"client {message.sender} is not expected at {self.step.label}: rejected"
            )
        if message.sender in self._received:
            raise RemoteProtocolError(
                f"second {type(message).__name__} from client {message.sender}: rejected as a replay"
            )
        match message:
            case AdvertiseKeys():
                self._check_advertise_keys(message)
            case ShareKeys():
                self._check_share_keys(message)
            case MaskedInput():
                self._add_masked_input(message)
                # Only the fact that it arrived is kept, never the masked vector itself.
                message = MaskedInput(message.round_id, message.sender, message.bits, 0, b"")
            case ConsistencySignature():
                self._check_consistency_signature(message)
            case UnmaskingShares():
                self._check_unmasking_shares(message)
        self._received[message.sender] = message
        return []

    def close_step(self) -> list[ServerMessage]:
        """The current step's deadline has passed: proceed with the clients that answered.

        Returns the next step's messages; raises :class:`ThresholdNotMetError` (and the round is
        over) if too few clients are left.
        """
        if self.state is not ServerState.COLLECTING:
            raise LocalProtocolError(f"cannot close a step: the round {self.state.value}")
        answered = frozenset(self._received)
        try:
            match self.step:
                case Step.ADVERTISE_KEYS:
                    outgoing = self._close_advertise_keys(answered)
                case Step.SHARE_KEYS:
                    outgoing = self._close_share_keys(answered)
                case Step.MASKED_INPUT:
                    outgoing = self._close_masked_input(answered)
                case Step.CONSISTENCY_CHECK:
                    outgoing = self._close_consistency_check(answered)
                case Step.UNMASKING:
                    outgoing = self._close_unmasking()
        except ThresholdNotMetError:
            self._abort()
            raise
        if self.state is ServerState.COLLECTING:
            self._eligible = answered
            self._received = {}
            self.step = self._steps[self._steps.index(self.step) + 1]
        return outgoing

    # ------------------------------------------------------------------------------ validation

    def _check_advertise_keys(self, message: AdvertiseKeys) -> None:
        keys.check_agreement_public_key(message.channel_public_key)
        keys.check_agreement_public_key(message.mask_public_key)
        if self._verify_keys and not keys.verify(
            self._verify_keys[message.sender],
            message.signature,
            advertise_signature_payload(
                self._session, message.sender, message.channel_public_key, message.mask_public_key
            ),
        ):
            raise RemoteProtocolError(
                f"advertised keys of client {message.sender} are not signed by it: rejected"
            )

    def _check_share_keys(self, message: ShareKeys) -> None:
        expected = sorted(self._neighbours[message.sender] & self._with_keys)
        recipients = [record.recipient for record in message.sealed_shares]
        if recipients != expected:
            raise RemoteProtocolError(
                f"client {message.sender} sealed shares for {recipients} "
                f"but its neighbours with keys are {expected}: rejected"
            )

    def _add_masked_input(self, message: MaskedInput) -> None:
        if message.bits != self.params.bits or message.length != self.setup.vector_length:
            raise RemoteProtocolError(
                f"masked input of client {message.sender} has {message.length} x {message.bits} "
                f"bits, expected {self.setup.vector_length} x {self.params.bits}: rejected"
            )
        masked = ring.unpack(message.packed, bits=message.bits, length=message.length)
        np.add(self._masked_sum, masked, out=self._masked_sum)

    def _check_consistency_signature(self, message: ConsistencySignature) -> None:
        payload = survivor_set_payload(self._session, self._keys_digest, tuple(sorted(self._survivors)))
        if not keys.verify(self._verify_keys[message.sender], message.signature, payload):
            raise RemoteProtocolError(
                f"client {message.sender}'s signature over the survivor set does not verify: rejected"
            )

    def _check_unmasking_shares(self, message: UnmaskingShares) -> None:
        holder_of = self._neighbours[message.sender] | {message.sender}
        dropped = self._with_shares - self._survivors
        for records, allowed, kind in (
            (message.self_mask_shares, self._survivors, "self-mask"),
            (message.mask_key_shares, dropped, "mask-key"),
        ):
            for record in records:
                if record.owner not in allowed or record.owner not in holder_of:
                    raise RemoteProtocolError(
                        f"client {message.sender} sent a {kind} share of client {record.owner}, "
                        "which was not asked for: rejected"
                    )
                if int.from_bytes(record.share, "big") >= shamir.PRIME_521:
                    raise RemoteProtocolError(
                        f"client {message.sender} sent a share that is not a field element: rejected"
                    )

    # ------------------------------------------------------------------------------ step closing

    def _require(self, alive: frozenset[int], owners: frozenset[int], minimum: int, what: str) -> None:
        if len(alive) < minimum:
            raise ThresholdNotMetError(
                f"only {len(alive)} clients {what}, fewer than {minimum}: round aborted, nothing revealed"
            )
        for owner in sorted(owners):
            holders = (self._neighbours[owner] | {owner}) & alive
            if len(holders) < self.params.threshold:
                raise ThresholdNotMetError(
                    f"only {len(holders)} share holders of client {owner} {what}, fewer than "
                    f"threshold {self.params.threshold}: round aborted, nothing revealed"
                )

    def _close_advertise_keys(self, answered: frozenset[int]) -> list[ServerMessage]:
        self._require(answered, answered, self.params.threshold, "advertised keys")
        self._advertised = self._answers(AdvertiseKeys, answered)
        self._with_keys = answered
        everyone = tuple(
            PeerKeys(
                v,
                self._advertised[v].channel_public_key,
                self._advertised[v].mask_public_key,
                self._advertised[v].signature,
            )
            for v in sorted(answered)
        )
        if self.params.active_adversary:  # everyone's keys, for the digest the clients sign
            self._keys_digest = advertised_keys_digest(
                self._session,
                {v: (a.channel_public_key, a.mask_public_key) for v, a in self._advertised.items()},
            )
        return [
            KeyDirectory(
                self.setup.round_id,
                u,
                tuple(
                    peer
                    for peer in everyone
                    if peer.client_id != u
                    and (self.params.active_adversary or peer.client_id in self._neighbours[u])
                ),
            )
            for u in sorted(answered)
        ]

    def _close_share_keys(self, answered: frozenset[int]) -> list[ServerMessage]:
        self._require(answered, answered, self.params.threshold, "shared keys")
        self._shared = self._answers(ShareKeys, answered)
        self._with_shares = answered
        addressed: dict[int, list[SealedShares]] = {v: [] for v in answered}
        for u in sorted(answered):
            for record in self._shared[u].sealed_shares:
                if record.recipient in addressed:
                    addressed[record.recipient].append(record)
        return [
            RelayedShares(self.setup.round_id, v, tuple(records)) for v, records in sorted(addressed.items())
        ]

    def _close_masked_input(self, answered: frozenset[int]) -> list[ServerMessage]:
        self._require(answered, self._with_shares, self.params.threshold, "sent masked inputs")
        if not induces_connected_subgraph(self._neighbours, answered):
            raise ThresholdNotMetError(
                f"the {len(answered)} survivors' graph is disconnected: unmasking would reveal the "
                "sum of each component; round aborted, nothing revealed (raise neighbors or "
                "expect fewer dropouts)"
            )
        self._survivors = answered
        survivors = tuple(sorted(answered))
        if self.params.active_adversary:
            return [ConsistencyRequest(self.setup.round_id, u, survivors) for u in survivors]
        dropped = tuple(sorted(self._with_shares - answered))
        return [UnmaskingRequest(self.setup.round_id, u, survivors, dropped) for u in survivors]

    def _close_consistency_check(self, answered: frozenset[int]) -> list[ServerMessage]:
        self._require(answered, self._with_shares, self.params.signature_threshold, "signed the survivor set")
        signed = self._answers(ConsistencySignature, answered)
        signatures = tuple(SurvivorSignature(u, signed[u].signature) for u in sorted(answered))
        survivors = tuple(sorted(self._survivors))
        dropped = tuple(sorted(self._with_shares - self._survivors))
        return [
            UnmaskingRequest(self.setup.round_id, u, survivors, dropped, signatures) for u in sorted(answered)
        ]

    def _close_unmasking(self) -> list[ServerMessage]:
        seed_shares: dict[int, dict[int, int]] = {u: {} for u in self._survivors}
        key_shares: dict[int, dict[int, int]] = {v: {} for v in self._with_shares - self._survivors}
        for sender, message in self._answers(UnmaskingShares, self._received).items():
            for record in message.self_mask_shares:
                seed_shares[record.owner][sender + 1] = int.from_bytes(record.share, "big")
            for record in message.mask_key_shares:
                key_shares[record.owner][sender + 1] = int.from_bytes(record.share, "big")
        round_id = self.setup.round_id
        masks: list[tuple[bytes, int]] = []
        for u in sorted(self._survivors):
            commitment = self._shared[u].self_mask_commitment
            seed = self._reconstruct(
                u,
                seed_shares[u],
                "self-mask seed",
                functools.partial(_opens_commitment, round_id, u, commitment),
            )
            masks.append(
                (keys.derive_key(seed, purpose=KeyPurpose.SELF_MASK, round_id=round_id, parties=(u,)), -1)
            )
        for v in sorted(key_shares):
            advertised = self._advertised[v].mask_public_key
            secret = self._reconstruct(
                v,
                key_shares[v],
                "mask private key",
                functools.partial(_is_private_key_of, advertised),
            )
            mask_key = X25519PrivateKey.from_private_bytes(secret)
            for w in sorted(self._neighbours[v] & self._survivors):
                agreed = keys.agree(mask_key, self._advertised[w].mask_public_key)
                pair_key = keys.derive_key(
                    agreed,
                    purpose=KeyPurpose.PAIRWISE_MASK,
                    round_id=round_id,
                    parties=tuple(sorted((v, w))),
                    session=self._session,
                )
                # Survivor w added +PRG if w < v and -PRG otherwise; remove exactly that.
                masks.append((pair_key, -1 if w < v else 1))
        total = self._masked_sum
        prg.apply_masks(total, masks)
        ring.reduce_in_place(total, self.params.bits)
        self._result = AggregationOutput(sum=total.astype(np.uint64), survivors=frozenset(self._survivors))
        self._forget()
        self.state = ServerState.FINISHED
        return []

    def _answers(self, kind: type[_Answer], senders: Iterable[int]) -> dict[int, _Answer]:
        """The messages of ``senders`` at this step, as the one type :meth:`receive` admits at it."""
        answers: dict[int, _Answer] = {}
        for sender in senders:
            message = self._received[sender]
            if not isinstance(message, kind):
                raise LocalProtocolError(
                    f"{type(message).__name__} from client {sender} kept during {self.step.label}"
                )
            answers[sender] = message
        return answers

    def _reconstruct(
        self, owner: int, shares: dict[int, int], what: str, check: Callable[[bytes], bool]
    ) -> bytes:
        """A secret from ``t`` of ``shares`` that passes ``check``; tries each cyclic window of
        ``t`` shares so a few corrupted shares cannot produce a wrong sum."""
        t = self.params.threshold
        xs = sorted(shares)
        if len(xs) < t:
            raise ThresholdNotMetError(
                f"only {len(xs)} shares of the {what} of client {owner}, fewer than threshold "
                f"{t}: round aborted, nothing revealed"
            )
        for start in range(len(xs)):
            window = [xs[(start + i) % len(xs)] for i in range(t)]
            value = shamir.reconstruct_secret({x: shares[x] for x in window})
            if value < 2**256:
                secret = value.to_bytes(32, "big")
                if check(secret):
                    return secret
            if len(xs) == t:
                break
        raise ThresholdNotMetError(
            f"no {t} consistent shares of the {what} of client {owner} (corrupted shares?): "
            "round aborted, nothing revealed"
        )

    def _forget(self) -> None:
        self._received = {}
        self._advertised = {}
        self._shared = {}
        self._masked_sum = np.zeros(0, dtype=self.params.word_dtype)

    def _abort(self) -> None:
        self._forget()
        self.state = ServerState.ABORTED


def _opens_commitment(round_id: int, client: int, commitment: bytes, seed: bytes) -> bool:
    """Whether ``seed`` is the self-mask seed ``client`` committed to in round ``round_id``."""
    return self_mask_commitment(round_id, client, seed) == commitment


def _is_private_key_of(public_key: bytes, private_key: bytes) -> bool:
    """Whether the X25519 ``private_key`` is the one behind the advertised ``public_key``."""
    return keys.public_bytes(X25519PrivateKey.from_private_bytes(private_key)) == public_key
