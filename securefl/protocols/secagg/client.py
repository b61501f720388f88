"""The client side of secure aggregation as a pure state machine (sans-IO).

Implements the client of Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
Machine Learning" (CCS 2017, figure 4), over the complete graph or a SecAgg+ random Harary graph
(Bell et al., CCS 2020).  Like h11, it does no I/O and keeps no clock: :meth:`ClientProtocol.start`
and :meth:`ClientProtocol.receive` take messages and return the messages to send.  All randomness
comes from the ``random_source`` passed in.

Error contract:

- :class:`RemoteProtocolError`: the incoming message is invalid (wrong round, wrong recipient,
  out of order or replayed, inconsistent keys).  The message is ignored and the state is
  unchanged, so the round can go on.
- :class:`LocalProtocolError`: answering would break the protocol's guarantee (a round id this
  client has seen before, a request for both shares of one client, overlapping survivor/dropped
  lists, lists that contradict earlier rounds, a SecAgg+ survivor set whose induced graph is
  disconnected, a survivor set other than the one this client signed, missing or invalid
  signatures in active mode).  The client refuses, reveals nothing, and aborts the round (state
  ``ABORTED``).
- :class:`ThresholdNotMetError`: fewer than ``t`` peers are left; the client aborts the round.

Sealed shares that fail authentication are not fatal: the client records the sender in
:attr:`ClientProtocol.rejected_shares`, treats that sender's shares as missing (it will reveal
nothing about it) and carries on.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefl.errors import (
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
    ThresholdNotMetError,
)
from securefl.protocols.crypto import aead, keys, prg, shamir
from securefl.protocols.crypto.keys import KEY_BYTES, KeyPurpose, RandomSource
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
    RevealedShare,
    SealedShares,
    ServerMessage,
    ShareKeys,
    UnmaskingRequest,
    UnmaskingShares,
    advertise_signature_payload,
    advertised_keys_digest,
    self_mask_commitment,
    share_associated_data,
    survivor_set_payload,
)
from securefl.protocols.secagg.params import RoundSetup, SecAggParams, session_hash


class ClientState(enum.Enum):
    """Where a client is in the round; the message it waits for next."""

    IDLE = "idle"
    AWAITING_KEY_DIRECTORY = "awaiting_key_directory"
    AWAITING_RELAYED_SHARES = "awaiting_relayed_shares"
    AWAITING_CONSISTENCY_REQUEST = "awaiting_consistency_request"
    AWAITING_UNMASKING_REQUEST = "awaiting_unmasking_request"
    DONE = "done"
    ABORTED = "aborted"


_EXPECTED: dict[type, ClientState] = {
    KeyDirectory: ClientState.AWAITING_KEY_DIRECTORY,
    RelayedShares: ClientState.AWAITING_RELAYED_SHARES,
    ConsistencyRequest: ClientState.AWAITING_CONSISTENCY_REQUEST,
    UnmaskingRequest: ClientState.AWAITING_UNMASKING_REQUEST,
}


def check_input_vector(vector: np.ndarray, *, params: SecAggParams, length: int, client_id: int) -> None:
    """Raise :class:`ConfigError` unless ``vector`` is a valid input in Z_{2^bits}."""
    if not isinstance(vector, np.ndarray) or vector.ndim != 1:
        raise ConfigError(f"input of client {client_id} must be a 1-D numpy array")
    if vector.shape[0] != length:
        raise ConfigError(
            f"input of client {client_id} has length {vector.shape[0]}, "
            f"expected {length}: all inputs must have the same length"
        )
    if vector.dtype.kind not in "ui":
        raise ConfigError(
            f"input of client {client_id} has dtype {vector.dtype}: inputs are "
            "ring elements (integers); quantize floats first"
        )
    if length == 0:
        return
    low, high = int(vector.min()), int(vector.max())
    if low < 0:
        raise ConfigError(
            f"input of client {client_id} has negative values: map them into Z_2^{params.bits} first"
        )
    if high >= params.modulus:
        raise ConfigError(
            f"input of client {client_id} has values >= 2^{params.bits}: raise bits or reduce the inputs"
        )
    if params.input_bound is not None and high > params.input_bound:
        raise ConfigError(
            f"input of client {client_id} exceeds input_bound "
            f"{params.input_bound} (max {high}): clip the input or raise the bound"
        )


class RoundIdGuard:
    """The round ids one client has started, so it never takes part in a round id twice.

    The server chooses round ids; a client that forgot which it had seen would accept a second
    session under an old id.  One guard belongs to one client and lives across its rounds (pass
    it to every :class:`ClientProtocol` of that client); ``seen`` lets a caller persist it and
    rebuild it with ``RoundIdGuard(seen)``.
    """

    def __init__(self, seen: frozenset[int] | set[int] = frozenset()) -> None:
        self._seen = set(seen)

    @property
    def seen(self) -> frozenset[int]:
        """Round ids already claimed."""
        return frozenset(self._seen)

    def claim(self, round_id: int) -> None:
        """Record ``round_id``; :class:`LocalProtocolError` if it was claimed before."""
        if round_id in self._seen:
            raise LocalProtocolError(
                f"refusing: round id {round_id} was used before; a server that reuses round ids "
                "could replay signatures from an earlier session (start a round with a fresh id)"
            )
        self._seen.add(round_id)


class ClientProtocol:
    """One client's side of one secure-aggregation round.

    ``signing_key`` (its own Ed25519 key) and ``verify_keys`` (every participant's Ed25519
    public key, known up front) are required in active-adversary mode and ignored otherwise.
    ``round_guard``, the client's :class:`RoundIdGuard` kept across rounds, makes :meth:`start`
    refuse a round id this client has seen; active mode requires it.

    Active mode signs, with the client's long-term key, the session hash
    (:func:`~securefl.protocols.secagg.params.session_hash`: parameters and round setup) with its
    advertised keys, and later the session hash, the digest of every advertised key it saw and
    the survivor set, so a signature does not verify under other parameters or another setup.
    The session hash holds only what the server chooses: a server repeating a whole setup gets
    the same hash and could replay this client's signed keys from the earlier session (whose
    mask key it reconstructed there by declaring the client dropped), which is why active mode
    needs the guard.  To compute that
    digest over the same set of clients everywhere, the active-mode key directory carries the
    advertised keys of every client that advertised, neighbours or not.

    ``expected_context`` is the context this client computed itself (e.g. the hash of the model
    and round settings it received, :func:`securefl.defences.consistency.model_context`): a setup
    binding any other context is refused before anything is sent.

    With SecAgg+, a client refuses a survivor set ``S`` whose induced graph is disconnected (the
    check that matters, proof in :mod:`securefl.protocols.secagg`), and in active mode also one
    that keeps at most ``k/2`` of its own neighbours (the local rule of issue 9).  The local rule
    alone already stops every cut of a Harary ring: ``G[S]`` disconnected means, going round the
    ring, a run of at least ``k/2`` consecutive clients outside ``S`` between two survivors, and the
    survivor next to that run has all ``k/2`` neighbours on that side outside ``S``.  Passive mode
    skips the local rule: the honest server's ``S`` is the true one, and the rule would make a
    client refuse in about 44% of honest rounds at n=20, k=4, 10% dropouts (1% are disconnected).
    """

    def __init__(
        self,
        *,
        client_id: int,
        params: SecAggParams,
        setup: RoundSetup,
        input_vector: np.ndarray,
        random_source: RandomSource = os.urandom,
        signing_key: Ed25519PrivateKey | None = None,
        verify_keys: Mapping[int, Ed25519PublicKey] | None = None,
        round_guard: RoundIdGuard | None = None,
        expected_context: bytes | None = None,
    ) -> None:
        setup.check(params)
        if expected_context is not None and setup.context != expected_context:
            raise LocalProtocolError(
                f"client {client_id}: the round setup binds another context than the one it "
                "computed (e.g. the hash of the model it received): refused, it would join "
                "another session than its model's"
            )
        if client_id not in setup.participants:
            raise ConfigError(f"client {client_id} is not a participant of round {setup.round_id}")
        check_input_vector(input_vector, params=params, length=setup.vector_length, client_id=client_id)
        if params.active_adversary and (signing_key is None or verify_keys is None):
            raise ConfigError(
                "active_adversary mode needs every client's signing_key and the participants' verify_keys"
            )
        if params.active_adversary and round_guard is None:
            raise ConfigError(
                "active_adversary mode needs the client's round_guard (its RoundIdGuard, kept "
                "across rounds): without it a server repeating a whole round setup could replay "
                "this client's signed keys from an earlier session"
            )
        if params.active_adversary and set(setup.participants) - set(verify_keys or {}):
            raise ConfigError("verify_keys must hold the public key of every participant")
        self.client_id = client_id
        self.params = params
        self.setup = setup
        self.state = ClientState.IDLE
        self.rejected_shares: dict[int, RemoteProtocolError] = {}
        self._graph = neighbourhoods(params, setup)
        self._neighbours = self._graph[client_id]
        self._session = session_hash(params, setup)
        self._keys_digest = b""
        self._round_guard = round_guard
        self._input: np.ndarray | None = input_vector
        self._random_source = random_source
        self._signing_key = signing_key if params.active_adversary else None
        self._verify_keys = dict(verify_keys or {}) if params.active_adversary else {}
        self._channel_key: X25519PrivateKey | None = None
        self._mask_key: X25519PrivateKey | None = None
        self._peer_keys: dict[int, PeerKeys] = {}
        self._held_shares: dict[int, tuple[int, int]] = {}  # owner -> (s share, b share)
        self._share_senders: frozenset[int] = frozenset()
        self._signed_survivors: tuple[int, ...] | None = None
        self._self_mask_seed = b""
        self._channel_secrets: dict[int, bytes] = {}
        self._mask_secrets: dict[int, bytes] = {}

    # ------------------------------------------------------------------------------ public API

    @property
    def neighbours(self) -> frozenset[int]:
        """The clients this client masks with (everyone else, or its SecAgg+ neighbours)."""
        return self._neighbours

    def start(self) -> list[ClientMessage]:
        """Begin the round: draw fresh key pairs and advertise their public halves."""
        if self.state is not ClientState.IDLE:
            raise LocalProtocolError(f"client {self.client_id} already started this round")
        if self._round_guard is not None:
            try:
                self._round_guard.claim(self.setup.round_id)
            except LocalProtocolError:
                self._abort()
                raise
        self._channel_key = channel_key = keys.generate_agreement_key(self._random_source)
        self._mask_key = mask_key = keys.generate_agreement_key(self._random_source)
        channel_public = keys.public_bytes(channel_key)
        mask_public = keys.public_bytes(mask_key)
        signature = b""
        if self._signing_key is not None:
            signature = keys.sign(
                self._signing_key,
                advertise_signature_payload(self._session, self.client_id, channel_public, mask_public),
            )
        self.state = ClientState.AWAITING_KEY_DIRECTORY
        return [AdvertiseKeys(self.setup.round_id, self.client_id, channel_public, mask_public, signature)]

    def receive(self, message: Message) -> list[ClientMessage]:
        """Process one message from the server; return the messages to send back.

        Any decoded message is accepted as input: one that is not a server message is rejected
        (:class:`RemoteProtocolError`), like every other message this client cannot take now.
        """
        expected = _EXPECTED.get(type(message))
        if expected is None or not isinstance(message, ServerMessage):
            raise RemoteProtocolError(
                f"client got a {type(message).__name__}, which is not a server message: rejected"
            )
        if message.round_id != self.setup.round_id:
            raise RemoteProtocolError(
                f"{type(message).__name__} for round {message.round_id} "
                f"but this is round {self.setup.round_id}: rejected"
            )
        if message.recipient != self.client_id:
            raise RemoteProtocolError(
                f"{type(message).__name__} addressed to client "
                f"{message.recipient}, not {self.client_id}: rejected"
            )
        if self.state is not expected:
            raise RemoteProtocolError(
                f"unexpected {type(message).__name__} in state "
                f"{self.state.value}: rejected (replayed or out of order)"
            )
        try:
            match message:
                case KeyDirectory():
                    return self._on_key_directory(message)
                case RelayedShares():
                    return self._on_relayed_shares(message)
                case ConsistencyRequest():
                    return self._on_consistency_request(message)
                case UnmaskingRequest():
                    return self._on_unmasking_request(message)
        except (LocalProtocolError, ThresholdNotMetError):
            self._abort()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------------------ steps

    def _on_key_directory(self, message: KeyDirectory) -> list[ClientMessage]:
        listed = {peer.client_id: peer for peer in message.peers}
        # Active mode lists everyone who advertised (for the keys digest), passive neighbours only.
        allowed = (
            (set(self.setup.participants) - {self.client_id})
            if self.params.active_adversary
            else self._neighbours
        )
        strangers = set(listed) - allowed
        if strangers:
            raise RemoteProtocolError(
                f"key directory lists {sorted(strangers)}, who may not be "
                f"in client {self.client_id}'s directory: rejected"
            )
        channel_key, mask_key = self._agreement_keys()
        own_keys = (keys.public_bytes(channel_key), keys.public_bytes(mask_key))
        public_keys = list(own_keys)
        for peer in message.peers:
            public_keys += [peer.channel_public_key, peer.mask_public_key]
        if len(set(public_keys)) != len(public_keys):
            raise RemoteProtocolError("key directory repeats a public key: rejected")
        peers = {v: peer for v, peer in listed.items() if v in self._neighbours}
        # Only keys this client uses need verifying: a non-neighbour's keys enter nothing but the
        # keys digest, which all unmasking clients agree on anyway (they hold a majority of
        # signatures over it), so a forged one cannot change what any client computes.
        for peer in peers.values():
            if self._verify_keys and not keys.verify(
                self._verify_keys[peer.client_id],
                peer.signature,
                advertise_signature_payload(
                    self._session, peer.client_id, peer.channel_public_key, peer.mask_public_key
                ),
            ):
                raise RemoteProtocolError(
                    f"advertised keys of client {peer.client_id} are not signed by it: rejected"
                )
        channel_secrets = {v: keys.agree(channel_key, peer.channel_public_key) for v, peer in peers.items()}
        mask_secrets = {v: keys.agree(mask_key, peer.mask_public_key) for v, peer in peers.items()}
        holders = sorted(set(peers) | {self.client_id})
        if len(holders) < self.params.threshold:
            raise ThresholdNotMetError(
                f"client {self.client_id}: only {len(holders)} of its share holders advertised "
                f"keys, fewer than threshold {self.params.threshold}: round aborted"
            )

        round_id = self.setup.round_id
        seed = keys.random_bytes(self._random_source, KEY_BYTES)
        xs = [holder + 1 for holder in holders]
        mask_secret = int.from_bytes(keys.private_bytes(mask_key), "big")
        mask_key_shares = shamir.split_secret(
            mask_secret, threshold=self.params.threshold, holders=xs, random_source=self._random_source
        )
        seed_shares = shamir.split_secret(
            int.from_bytes(seed, "big"),
            threshold=self.params.threshold,
            holders=xs,
            random_source=self._random_source,
        )
        sealed = []
        for v in sorted(peers):
            key = keys.derive_key(
                channel_secrets[v],
                purpose=KeyPurpose.SHARE_ENCRYPTION,
                round_id=round_id,
                parties=(self.client_id, v),
            )
            plaintext = shamir.share_to_bytes(mask_key_shares[v + 1]) + shamir.share_to_bytes(
                seed_shares[v + 1]
            )
            ciphertext = aead.seal(
                key,
                plaintext,
                associated_data=share_associated_data(round_id, self.client_id, v),
                random_source=self._random_source,
            )
            sealed.append(SealedShares(self.client_id, v, ciphertext))
        self._peer_keys = peers
        if self.params.active_adversary:
            advertised = {v: (peer.channel_public_key, peer.mask_public_key) for v, peer in listed.items()}
            self._keys_digest = advertised_keys_digest(
                self._session, {**advertised, self.client_id: own_keys}
            )
        self._channel_secrets = channel_secrets
        self._mask_secrets = mask_secrets
        self._self_mask_seed = seed
        me = self.client_id + 1
        self._held_shares = {self.client_id: (mask_key_shares[me], seed_shares[me])}
        self.state = ClientState.AWAITING_RELAYED_SHARES
        return [
            ShareKeys(
                round_id, self.client_id, self_mask_commitment(round_id, self.client_id, seed), tuple(sealed)
            )
        ]

    def _on_relayed_shares(self, message: RelayedShares) -> list[ClientMessage]:
        senders = [record.sender for record in message.sealed_shares]
        unknown = set(senders) - set(self._peer_keys)
        if unknown:
            raise RemoteProtocolError(
                f"relayed shares from {sorted(unknown)}, who are not in "
                f"client {self.client_id}'s key directory: rejected"
            )
        if len(senders) + 1 < self.params.threshold:
            raise ThresholdNotMetError(
                f"client {self.client_id}: only {len(senders) + 1} of its share holders shared "
                f"keys, fewer than threshold {self.params.threshold}: round aborted"
            )
        round_id = self.setup.round_id
        for record in message.sealed_shares:
            self._open(record, round_id)

        vector = self._input
        if vector is None:
            raise LocalProtocolError(f"client {self.client_id} already masked its input this round")
        if vector.dtype.kind != "u":  # validated non-negative: reinterpret as ring words
            vector = vector.astype(self.params.word_dtype)
        self_key = keys.derive_key(
            self._self_mask_seed, purpose=KeyPurpose.SELF_MASK, round_id=round_id, parties=(self.client_id,)
        )
        masks = [(self_key, 1)]
        for v in senders:
            pair_key = keys.derive_key(
                self._mask_secrets[v],
                purpose=KeyPurpose.PAIRWISE_MASK,
                round_id=round_id,
                parties=tuple(sorted((self.client_id, v))),
                session=self._session,
            )
            masks.append((pair_key, 1 if self.client_id < v else -1))
        masked = np.empty(self.setup.vector_length, dtype=self.params.word_dtype)
        prg.apply_masks(masked, masks, base=vector)
        ring.reduce_in_place(masked, self.params.bits)
        packed = ring.pack(masked, self.params.bits)
        # Masking done: the input, key-agreement secrets and seed are no longer needed.
        self._input = None
        self._mask_secrets = {}
        self._channel_secrets = {}
        self._mask_key = None
        self._channel_key = None
        self._self_mask_seed = b""
        self._share_senders = frozenset(senders)
        self.state = (
            ClientState.AWAITING_CONSISTENCY_REQUEST
            if self.params.active_adversary
            else ClientState.AWAITING_UNMASKING_REQUEST
        )
        return [MaskedInput(round_id, self.client_id, self.params.bits, self.setup.vector_length, packed)]

    def _open(self, record: SealedShares, round_id: int) -> None:
        sender = record.sender
        try:
            key = keys.derive_key(
                self._channel_secrets[sender],
                purpose=KeyPurpose.SHARE_ENCRYPTION,
                round_id=round_id,
                parties=(sender, self.client_id),
            )
            plaintext = aead.open_sealed(
                key,
                record.ciphertext,
                associated_data=share_associated_data(round_id, sender, self.client_id),
            )
            try:
                shares = (
                    shamir.share_from_bytes(plaintext[: shamir.SHARE_BYTES]),
                    shamir.share_from_bytes(plaintext[shamir.SHARE_BYTES :]),
                )
            except ValueError as error:
                raise RemoteProtocolError(
                    f"shares from client {sender} are not field elements: rejected"
                ) from error
        except RemoteProtocolError as error:
            self.rejected_shares[sender] = error
            return
        self._held_shares[sender] = shares

    def _on_consistency_request(self, message: ConsistencyRequest) -> list[ClientMessage]:
        self._check_survivors(message.survivors)
        if self._signing_key is None:
            raise LocalProtocolError(
                f"client {self.client_id} has no signing key: only active_adversary rounds sign survivors"
            )
        signature = keys.sign(
            self._signing_key, survivor_set_payload(self._session, self._keys_digest, message.survivors)
        )
        self._signed_survivors = message.survivors
        self.state = ClientState.AWAITING_UNMASKING_REQUEST
        return [ConsistencySignature(self.setup.round_id, self.client_id, signature)]

    def _agreement_keys(self) -> tuple[X25519PrivateKey, X25519PrivateKey]:
        """The channel and mask private keys: drawn by :meth:`start`, dropped once the input is masked."""
        if self._channel_key is None or self._mask_key is None:
            raise LocalProtocolError(f"client {self.client_id} holds no agreement keys at this step")
        return self._channel_key, self._mask_key

    def _check_survivors(self, survivors: tuple[int, ...]) -> None:
        survivor_set = set(survivors)
        if self.client_id not in survivor_set:
            raise LocalProtocolError(
                f"refusing: client {self.client_id} sent its masked input but is not in the "
                "survivor set (contradicts earlier rounds)"
            )
        outsiders = survivor_set - set(self.setup.participants)
        if outsiders:
            raise LocalProtocolError(
                f"refusing: survivors {sorted(outsiders)} are not participants of this round"
            )
        unknown = (survivor_set & self._neighbours) - self._share_senders
        if unknown:
            raise LocalProtocolError(
                f"refusing: neighbours {sorted(unknown)} are listed as survivors but never "
                f"shared keys with client {self.client_id} (contradicts earlier rounds)"
            )
        if len(survivor_set) < self.params.threshold:
            raise ThresholdNotMetError(
                f"client {self.client_id}: only {len(survivor_set)} survivors, fewer than "
                f"threshold {self.params.threshold}: round aborted"
            )
        if self.params.complete_graph:
            return
        if not induces_connected_subgraph(self._graph, survivor_set):
            raise LocalProtocolError(
                "refusing: the survivors' graph is disconnected, so unmasking would reveal the "
                "sum of each of its components, not only the sum of all survivors"
            )
        surviving = len(self._neighbours & survivor_set)
        if self.params.active_adversary and 2 * surviving <= self.params.degree:
            raise LocalProtocolError(
                f"refusing: only {surviving} of client {self.client_id}'s "
                f"{self.params.degree} neighbours are listed as survivors, not more than half "
                "(on a Harary ring a server cutting the graph must declare k/2 neighbours dropped)"
            )

    def _on_unmasking_request(self, message: UnmaskingRequest) -> list[ClientMessage]:
        survivors, dropped = set(message.survivors), set(message.dropped)
        both = survivors & dropped
        if both:
            raise LocalProtocolError(
                f"refusing: clients {sorted(both)} are listed both as survivors and as dropped; "
                "answering would reveal both of their shares"
            )
        self._check_survivors(message.survivors)
        outsiders = dropped - set(self.setup.participants)
        if outsiders:
            raise LocalProtocolError(
                f"refusing: dropped clients {sorted(outsiders)} are not participants of this round"
            )
        listed = (survivors | dropped) & self._neighbours
        if listed - self._share_senders:
            raise LocalProtocolError(
                f"refusing: neighbours {sorted(listed - self._share_senders)} never shared keys "
                f"with client {self.client_id} but are listed (contradicts earlier rounds)"
            )
        if self._share_senders - listed:
            raise LocalProtocolError(
                f"refusing: neighbours {sorted(self._share_senders - listed)} shared keys with "
                f"client {self.client_id} but are neither survivors nor dropped"
            )
        if self.params.active_adversary:
            self._check_signatures(message)

        self_mask_shares = tuple(
            RevealedShare(owner, shamir.share_to_bytes(self._held_shares[owner][1]))
            for owner in sorted(survivors & self._held_shares.keys())
        )
        mask_key_shares = tuple(
            RevealedShare(owner, shamir.share_to_bytes(self._held_shares[owner][0]))
            for owner in sorted(dropped & self._held_shares.keys())
        )
        self._forget_secrets()
        self.state = ClientState.DONE
        return [UnmaskingShares(self.setup.round_id, self.client_id, self_mask_shares, mask_key_shares)]

    def _check_signatures(self, message: UnmaskingRequest) -> None:
        if message.survivors != self._signed_survivors:
            raise LocalProtocolError(
                f"refusing: the survivor set to unmask differs from the one client "
                f"{self.client_id} signed in the consistency check"
            )
        payload = survivor_set_payload(self._session, self._keys_digest, message.survivors)
        signers = set()
        for record in message.signatures:
            if record.client_id not in self._signed_survivors:
                raise LocalProtocolError(
                    f"refusing: signature from client {record.client_id}, who is not a survivor"
                )
            if not keys.verify(self._verify_keys[record.client_id], record.signature, payload):
                raise LocalProtocolError(
                    f"refusing: client {record.client_id}'s signature over the survivor set does "
                    "not verify (the server may be showing different survivor sets)"
                )
            signers.add(record.client_id)
        if len(signers) < self.params.signature_threshold:
            raise LocalProtocolError(
                f"refusing: only {len(signers)} valid signatures over the survivor set, "
                f"{self.params.signature_threshold} needed"
            )

    def _forget_secrets(self) -> None:
        self._held_shares = {}
        self._channel_secrets = {}
        self._mask_secrets = {}
        self._self_mask_seed = b""
        self._channel_key = None
        self._mask_key = None
        self._input = None

    def _abort(self) -> None:
        self._forget_secrets()
        self.state = ClientState.ABORTED
