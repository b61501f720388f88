"""Secure aggregation: the server learns the sum of the survivors' vectors and nothing else.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS 2017)
with the sparse random-Harary-graph variant SecAgg+ of Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead" (CCS 2020); real cryptography (X25519, HKDF-SHA256,
AES-256-GCM, AES-256-CTR masks, Shamir over 2^521 - 1, Ed25519 in active mode), written sans-IO.

Threat model (what the guarantees assume):

- Colluders.  ``SecAggParams.max_colluders`` is ``c``, the clients that may collude with the
  server; left ``None`` it is the largest ``c`` the threshold tolerates
  (:attr:`SecAggParams.colluders_tolerated`: ``t - 1`` against an honest-but-curious server;
  ``min(t - 1, 2t - n - 1)`` against an active one on the complete graph, 0 with SecAgg+).
  Insecure combinations are refused with a :class:`~securefl.errors.ConfigError`: the complete
  graph needs ``t > c`` (Bonawitz et al., theorems 6.3 and 6.5), and against an active server
  also ``2t > n + c`` (a threshold with ``2t <= n`` tolerates no colluder count and is refused);
  active SecAgg+ needs ``c = 0`` and ``2t > k + 2``; ``c <= n - 2``, and ``t >= 2`` always (with
  ``t = 1`` every share is the secret).
- Honest-but-curious server (default): it follows the protocol and learns only the sum of the
  survivors' inputs, with at most ``c`` colluding clients.  With SecAgg+ graphs the share
  privacy and the connectivity of the honest survivors hold with high probability under the
  assumptions of :func:`choose_parameters` (random graph, independent dropouts, colluders chosen
  independently of the graph); :func:`assess_parameters` says which rule given parameters break,
  and the training channel warns loudly (it refuses in active mode).  The server aborts, before
  asking for any share, when the survivors' induced graph is disconnected (each component's sum
  would be revealed), and every client checks the same before revealing shares.
- ``active_adversary=True``: the server may deviate.  Advertised keys are Ed25519-signed with
  keys everyone knows up front (no key substitution), and a ConsistencyCheck round makes every
  client sign the survivor set.  Every signature covers the session hash
  (:func:`session_hash`: all parameters and the :class:`RoundSetup`, including its
  ``context``), and the survivor-set signature also the digest of every advertised key the
  client saw (the active-mode key directory lists everyone who advertised), so a signature made
  in a session with other parameters or another setup, or by a client shown other keys, does not
  verify.  The session hash covers only what the server chooses, so a server that repeats a
  whole setup gets the same hash: active mode therefore requires each client's
  :class:`RoundIdGuard` (see "Round ids").  An honest client unmasks only with
  ``signature_threshold = max(t, floor((n + c)/2) + 1)`` valid signatures, from survivors, on
  exactly the set it signed; as ``2 * signature_threshold > n + c``, all honest clients that
  unmask agree on one survivor set ``S`` (proof in :attr:`SecAggParams.signature_threshold`).
- Proof that an active server learns only the sum over ``S`` (complete graph: ``t > c`` and
  ``2t > n + c``; SecAgg+: ``c = 0`` and ``2t > k + 2``; both enforced by
  :class:`SecAggParams`).  ``H`` is the honest clients, ``C`` the colluders, ``P_u`` the clients
  whose shares the server relayed to ``u``: ``u`` masks with exactly these, and aborts unless
  ``|P_u| >= t - 1``.  From the client's checks: an honest client signs ``S`` only if it is in
  ``S`` and all its neighbours in ``S`` are in ``P_u``; it unmasks only the ``S`` it signed,
  revealing its shares of ``b_u`` for ``u`` in ``S`` and of ``s_v`` for ``v`` declared dropped.
  Masks are modelled as uniform, as in both papers.

  (a) Secrets.  All honest clients that reveal agree on ``S``, so the server gets at most
  ``c < t`` shares (the colluders') of ``s_u`` for honest ``u`` in ``S`` and of ``b_v`` for
  honest ``v`` outside ``S``.  Outside ``S``, ``y_v`` keeps its self mask.  Inside, removing
  every mask it can leaves ``r_u = x_u + sum of ±PRG(s_uw)`` over honest ``w`` in ``P_u`` and
  in ``S`` (masks with colluders and with clients outside ``S`` may be known), plus
  ``PRG(b_u)`` unless ``t`` holders revealed ``b_u``.
  (b) Remainders.  The mask of a pair with ``w`` in ``P_u`` and ``u`` in ``P_w`` enters
  ``r_u`` and ``r_w`` with opposite signs; any other unknown mask (a one-sided pair, a self
  mask, a mask with a client outside ``S`` whose key stayed hidden) enters one remainder only,
  which it makes uniform.  So the server learns the total of each connected component ``A`` of
  the graph of such mutual pairs on ``S ∩ H`` none of whose members keeps another unknown mask,
  and nothing else.  Such an ``A`` has ``P_u ∩ S ∩ H ⊆ A`` and ``b_u`` revealed for every
  ``u`` in ``A``; it remains to show ``A = S ∩ H``, whose total (the survivors' sum less the
  colluders' own inputs) is the permitted output.  Note that ``u`` need not have signed: a
  client can be shown an ``S`` it refuses and still be unmasked by the others.
  (c) Complete graph.  Suppose ``A ⊊ S ∩ H``.  No ``u`` in ``A`` signed (that needs
  ``S ∩ H \\ {u} ⊆ P_u``, so ``S ∩ H ⊆ A``).  Fix ``u`` in ``A``: ``P_u`` lies in
  ``(A \\ {u}) ∪ C ∪ (H \\ S)``, so ``|A| + |P_u ∩ H \\ S| >= t - c``, and neither set signs
  (the second is outside ``S``).  At most ``n - t + c`` clients sign, fewer than
  ``t <= signature_threshold`` as ``2t > n + c``: nobody unmasks.  The bound is tight: with
  ``2t <= n + c`` a server that relays to ``u`` only ``t - 1`` partners (colluders first) and
  declares the honest ones dropped has ``n - t + c >= t`` signers besides ``u`` and recovers
  ``x_u`` exactly (tests/protocols/test_secagg_withheld_shares.py).
  (d) SecAgg+ (``c = 0``, so ``H`` is everyone).  Suppose ``A ⊊ S``.  Someone signed, so
  ``G[S]`` is connected and some ``a`` in ``A`` has a neighbour ``b`` in ``S \\ A``; ``b`` is
  not in ``P_a``, so ``a`` did not sign.  The holders who reveal ``b_a`` are signers among
  ``a``'s ``k`` neighbours, and a signer in ``A`` has all its neighbours in ``S`` inside ``A``.
  If ``a`` has neighbours in ``S \\ A`` on both sides of the ring, every member of ``A`` among
  its neighbours is within ``k/2`` of one of them and did not sign, and ``a``'s ``t - 1``
  partners lie in ``A`` or outside ``S``: at most ``k - t + 1 < t`` revealers.  Otherwise let
  ``b`` be the nearest, at ring distance ``d <= k/2``: signers of ``A`` among ``a``'s
  neighbours are more than ``k/2`` from ``b`` (at most ``d``, on the far side) and those of
  ``S \\ A`` lie from ``b`` on (at most ``k/2 - d + 1``): at most ``k/2 + 1 < t`` revealers.
  Either way ``b_a`` stays hidden, contradicting ``a`` in ``A``.  Both bounds are tight: with
  ``2t <= k + 1`` the isolation of (c) unmasks one client, and with ``t = k/2 + 1`` a band of
  clients that hears only from itself (everyone else hearing from everyone) has its sum
  revealed (tests/protocols/test_secagg_withheld_shares.py).  Colluders would break (d) (a
  colluder inside a band declared dropped bridges the graph while its neighbours' masks are
  known), hence ``c = 0``.
- Active mode with SecAgg+ also has each client check, before signing and before unmasking,
  that the survivor set induces a connected subgraph of the round's public graph and that more
  than ``k/2`` of its own neighbours survived, refusing otherwise; (d) uses the first.
- Public: the survivor set, who advertised keys and shared shares (so client counts per step),
  the parameters, the round id and the SecAgg+ graph seed (so the graph).  The graph seed is the
  server's choice; the honest server draws it from ``os.urandom``.  Against an active server
  that grinds seeds, the graph gives nothing: active SecAgg+ allows no colluders to place, and the
  connectivity check holds for every graph, so no seed makes a cut survivor set acceptable.
- Sessions: the session hash (parameters and :class:`RoundSetup`, its ``context`` included) is
  also the HKDF salt of every pairwise-mask key, so clients in different sessions -- e.g. each
  binding the hash of the model it received as ``context``
  (:mod:`securefl.defences.consistency`, which proves what this gives against a server sending
  different models) -- derive masks that do not cancel, even in passive mode.
- Round ids: the server chooses them; a :class:`RoundIdGuard` kept by each client across rounds
  makes it refuse an id it has seen.  Active mode requires one (``ClientProtocol`` raises
  :class:`~securefl.errors.ConfigError` without it): the session hash binds signatures to the
  parameters and setup, not to a session, so without the guard a server repeating a whole setup
  could replay a client's signed keys from an earlier session -- whose mask key it reconstructed
  there by declaring the client dropped.
- Always: an honest client never reveals both shares of one peer, refuses overlapping or
  contradictory lists, and a round below threshold aborts with no output.  The server checks each
  reconstructed secret (the self-mask seed against its SHA-256 commitment, the mask key against
  the advertised public key), so a corrupted share cannot produce a wrong sum.
- Not covered: the server can always output a wrong sum (SecAgg protects privacy, not the
  server's honesty about the result); integrity of client-to-server traffic is the transport's job
  (TLS) -- a packet altered in flight that still decodes is indistinguishable from a client's
  choice; clients are trusted to send inputs within ``input_bound`` (no range proofs); an active
  server with colluders must use the complete graph; constant-time behaviour is that of
  ``cryptography``.

Researcher API::

    import numpy as np
    from securefl.protocols.secagg import (
        Dropout, DropoutPlan, SecAggParams, Step, run_secure_aggregation)

    params = SecAggParams(num_clients=5, threshold=3, bits=32, input_bound=1000)
    inputs = {c: np.arange(4, dtype=np.uint32) * c for c in range(5)}
    result = run_secure_aggregation(
        inputs, params=params,
        dropouts=DropoutPlan({4: Dropout(Step.MASKED_INPUT)}))   # client 4 leaves before uploading
    result.sum         # sum of clients 0..3, uint64 in Z_{2^32}
    result.survivors   # frozenset({0, 1, 2, 3})
"""

from securefl.errors import RoundAbortedError
from securefl.protocols.secagg.client import ClientProtocol, ClientState, RoundIdGuard
from securefl.protocols.secagg.codec import decode, decode_setup, encode, encode_setup
from securefl.protocols.secagg.driver import (
    Dropout,
    DropoutPlan,
    Network,
    Packet,
    Rejection,
    SecAggResult,
    SecAggStats,
    TranscriptEntry,
    protocol_steps,
    reliable_network,
    run_secure_aggregation,
)
from securefl.protocols.secagg.messages import Step
from securefl.protocols.secagg.params import (
    RoundSetup,
    SecAggParams,
    assess_parameters,
    choose_parameters,
    enforce_parameter_rules,
    session_hash,
)
from securefl.protocols.secagg.server import AggregationOutput, ServerProtocol, ServerState

__all__ = [
    "AggregationOutput",
    "ClientProtocol",
    "ClientState",
    "Dropout",
    "DropoutPlan",
    "Network",
    "Packet",
    "Rejection",
    "RoundAbortedError",
    "RoundIdGuard",
    "RoundSetup",
    "SecAggParams",
    "SecAggResult",
    "SecAggStats",
    "ServerProtocol",
    "ServerState",
    "Step",
    "TranscriptEntry",
    "assess_parameters",
    "choose_parameters",
    "decode",
    "decode_setup",
    "encode",
    "encode_setup",
    "enforce_parameter_rules",
    "protocol_steps",
    "reliable_network",
    "run_secure_aggregation",
    "session_hash",
]
