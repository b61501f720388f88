"""A malicious secure-aggregation server, driven by hand through the public sans-IO API.

Not a test module.  :class:`MaliciousServer` runs the first three steps honestly through a real
:class:`ServerProtocol` (so the clients see well-formed, correctly signed traffic), then deviates
at will: it sends each client whatever ConsistencyRequest / UnmaskingRequest it likes, collects
what the clients answer, and tries to reconstruct secrets and unmask partial sums with its own
code (:meth:`MaliciousServer.unmask_sum`), independent of the server's unmasking.

A client colluding with the server is modelled by two client objects fed the same random bytes
(:class:`DeterministicRandom` with the same label): they hold identical keys, shares and seeds,
so the coalition can answer two different requests with that client's genuine state, exactly
as a colluder running the code twice would.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from secagg_helpers import DeterministicRandom

from securefl.errors import LocalProtocolError, ProtocolError
from securefl.protocols.crypto import keys, prg, shamir
from securefl.protocols.crypto.keys import KeyPurpose
from securefl.protocols.secagg import (
    ClientProtocol,
    RoundIdGuard,
    RoundSetup,
    SecAggParams,
    ServerProtocol,
    session_hash,
)
from securefl.protocols.secagg.graph import neighbourhoods
from securefl.protocols.secagg.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    RelayedShares,
    ShareKeys,
    SurvivorSignature,
    UnmaskingRequest,
)
from securefl.protocols.secagg.ring import unpack


class MaliciousServer:
    """Honest through the masked-input step; then every request is the attacker's choice.

    ``withhold`` maps a recipient to the senders whose sealed shares the server does not relay
    to it (the one deviation before the masked inputs): that recipient then masks only with the
    senders it heard from, recorded in :attr:`partners`."""

    def __init__(
        self,
        params: SecAggParams,
        inputs: dict[int, np.ndarray],
        *,
        label: str,
        round_id: int = 0,
        colluders: tuple[int, ...] = (),
        graph_seed: bytes | None = None,
        signing_keys=None,
        round_guards=None,
        withhold=None,
    ) -> None:
        self.params = params
        length = len(next(iter(inputs.values())))
        setup = RoundSetup.create(
            sorted(inputs),
            vector_length=length,
            round_id=round_id,
            random_source=DeterministicRandom(f"{label} setup"),
        )
        if graph_seed is not None:
            setup = RoundSetup(round_id, setup.participants, length, graph_seed)
        self.setup = setup
        self.graph = neighbourhoods(params, setup)
        active = params.active_adversary
        self.signing_keys = signing_keys or (
            {c: keys.generate_signing_key(DeterministicRandom(f"{label} signing {c}")) for c in inputs}
            if active
            else None
        )
        verify_keys = {c: k.public_key() for c, k in self.signing_keys.items()} if active else None

        def client(c, twin=False):
            return ClientProtocol(
                client_id=c,
                params=params,
                setup=setup,
                input_vector=inputs[c],
                random_source=DeterministicRandom(f"{label} client {c}"),
                signing_key=self.signing_keys[c] if active else None,
                verify_keys=verify_keys,
                round_guard=round_guards[c] if round_guards and not twin else RoundIdGuard(),
            )

        self.clients = {c: client(c) for c in setup.participants}
        self.twins = {c: client(c, twin=True) for c in colluders}
        self.refusals: dict[int, ProtocolError] = {}
        self.signatures: dict[int, bytes] = {}
        self.mask_public: dict[int, bytes] = {}
        self.commitments: dict[int, bytes] = {}
        self.masked: dict[int, np.ndarray] = {}
        self.partners: dict[int, frozenset[int]] = {}  # whose shares each client received
        self.colluder_mask_keys: dict[int, bytes] = {}  # colluders hand the server their keys
        honest = ServerProtocol(params=params, setup=setup, verify_keys=verify_keys)
        for c, protocol in self.clients.items():
            for message in protocol.start():
                self.mask_public[c] = message.mask_public_key
                honest.receive(message)
        for c, twin in self.twins.items():
            twin.start()
            self.colluder_mask_keys[c] = keys.private_bytes(twin._mask_key)
        for _ in range(2):
            for message in honest.close_step():
                if isinstance(message, RelayedShares):
                    hidden = set((withhold or {}).get(message.recipient, ()))
                    message = dataclasses.replace(
                        message,
                        sealed_shares=tuple(s for s in message.sealed_shares if s.sender not in hidden),
                    )
                    self.partners[message.recipient] = frozenset(s.sender for s in message.sealed_shares)
                for twin in [self.twins[message.recipient]] if message.recipient in self.twins else []:
                    twin.receive(message)
                try:
                    answers = self.clients[message.recipient].receive(message)
                except ProtocolError as error:  # e.g. too few shares relayed to it
                    self.refusals.setdefault(message.recipient, error)
                    continue
                for answer in answers:
                    honest.receive(answer)
                    if isinstance(answer, ShareKeys):
                        self.commitments[answer.sender] = answer.self_mask_commitment
                    if isinstance(answer, MaskedInput):
                        self.masked[answer.sender] = unpack(
                            answer.packed, bits=answer.bits, length=answer.length
                        )

    def _party(self, client: int, twin: bool) -> ClientProtocol:
        return self.twins[client] if twin else self.clients[client]

    def collect_signatures(self, survivors, members, *, twins=()) -> tuple[SurvivorSignature, ...]:
        """Show ``survivors`` to ``members`` (the colluders in ``twins`` via their twin) and
        return the signatures they give."""
        signed = []
        for c in sorted(members):
            try:
                [answer] = self._party(c, c in twins).receive(
                    ConsistencyRequest(self.setup.round_id, c, tuple(sorted(survivors)))
                )
            except ProtocolError as error:
                self.refusals.setdefault(c, error)  # the first refusal is the reason
                continue
            assert isinstance(answer, ConsistencySignature)
            signed.append(SurvivorSignature(c, answer.signature))
        return tuple(signed)

    def request_shares(self, survivors, dropped, members, *, signatures=(), twins=()):
        """Ask ``members`` to unmask; return (self-mask shares, mask-key shares) by owner, each
        ``{owner: {x: share}}`` with ``x = holder + 1``."""
        seeds: dict[int, dict[int, int]] = {}
        mask_keys: dict[int, dict[int, int]] = {}
        for c in sorted(members):
            request = UnmaskingRequest(
                self.setup.round_id,
                c,
                tuple(sorted(survivors)),
                tuple(sorted(dropped)),
                tuple(sorted(signatures, key=lambda s: s.client_id)),
            )
            try:
                [answer] = self._party(c, c in twins).receive(request)
            except ProtocolError as error:
                self.refusals.setdefault(c, error)  # the first refusal is the reason
                continue
            for record in answer.self_mask_shares:
                seeds.setdefault(record.owner, {})[c + 1] = int.from_bytes(record.share, "big")
            for record in answer.mask_key_shares:
                mask_keys.setdefault(record.owner, {})[c + 1] = int.from_bytes(record.share, "big")
        return seeds, mask_keys

    def reconstruct(self, shares: dict[int, int]) -> bytes | None:
        """The 32-byte secret behind ``t`` of ``shares``, or ``None`` with fewer than ``t``."""
        t = self.params.threshold
        if len(shares) < t:
            return None
        chosen = dict(sorted(shares.items())[:t])
        return shamir.reconstruct_secret(chosen).to_bytes(32, "big")

    def unmask_sum(self, subset, *, seeds: dict[int, bytes], mask_keys: dict[int, bytes]):
        """The attacker's own unmasking: ``sum_{u in subset} x_u`` from the masked inputs, the
        self-mask seeds ``b_u`` of ``subset`` and the mask private keys it knows.  ``u`` masked
        with its :attr:`partners`; a pairwise mask both ends of which are in ``subset`` and used
        it cancels, every other one needs one endpoint's private key.  Returns ``None`` when
        some mask cannot be removed."""
        round_id, bits = self.setup.round_id, self.params.bits
        total = np.zeros(self.setup.vector_length, dtype=np.uint64)
        members = set(subset)
        for u in sorted(members):
            if u not in seeds or u not in self.masked:
                return None
            total += self.masked[u].astype(np.uint64)
            self_key = keys.derive_key(
                seeds[u], purpose=KeyPurpose.SELF_MASK, round_id=round_id, parties=(u,)
            )
            total -= prg.expand_mask(
                self_key, length=len(total), dtype=np.uint64 if bits > 32 else np.uint32
            ).astype(np.uint64)
            for w in sorted(w for w in self.partners[u] if w not in members or u not in self.partners[w]):
                if w in mask_keys:
                    agreed = keys.agree(
                        X25519PrivateKey.from_private_bytes(mask_keys[w]), self.mask_public[u]
                    )
                elif u in mask_keys:
                    agreed = keys.agree(
                        X25519PrivateKey.from_private_bytes(mask_keys[u]), self.mask_public[w]
                    )
                else:
                    return None
                pair_key = keys.derive_key(
                    agreed,
                    purpose=KeyPurpose.PAIRWISE_MASK,
                    round_id=round_id,
                    parties=tuple(sorted((u, w))),
                    session=session_hash(self.params, self.setup),
                )
                mask = prg.expand_mask(
                    pair_key, length=len(total), dtype=np.uint64 if bits > 32 else np.uint32
                )
                if u < w:  # u added +PRG(s_uw)
                    total -= mask.astype(np.uint64)
                else:
                    total += mask.astype(np.uint64)
        return total & np.uint64(2**bits - 1)


def refused_locally(server: MaliciousServer, clients) -> bool:
    """Whether every one of ``clients`` refused with a :class:`LocalProtocolError`."""
    return all(isinstance(server.refusals.get(c), LocalProtocolError) for c in clients)
