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
  graph needs ``t > c`` (Bonawitz et al., theorems 6.3 and 6.5), active SecAgg+ needs ``c = 0``,
  ``c <= n - 2``, and ``t >= 2`` always (with ``t = 1`` every share is the secret).
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
  client saw (the active-mode key directory lists everyone who advertised), so signatures from
  another session, or from a client shown other keys, never verify.  An honest client unmasks
  only with ``signature_threshold = max(t, floor((n + c)/2) + 1)`` valid signatures on exactly
  the set it signed; as ``2 * signature_threshold > n + c``, no two honest clients can be shown
  different survivor sets (proof in :attr:`SecAggParams.signature_threshold`).  With the
  complete graph and ``t > c`` the coalition then holds fewer than ``t`` shares of the secret an
  honest client did not reveal for any honest peer, so it learns the survivors' sum only.
- Active mode with SecAgg+ (``c = 0`` only): before signing and before unmasking, a client checks
  that the survivor set induces a connected subgraph of the round's public graph and that more
  than ``k/2`` of its own neighbours survived, and refuses otherwise.  Proof that the server then
  learns only the sum over the survivor set ``S``: with ``c = 0`` every share comes from an honest
  client, and all honest clients that reveal signed the same ``S``, so for each client the server
  gets the shares of one secret only -- ``b_u`` for ``u`` in ``S``, ``s_v`` for ``v`` declared
  dropped.  A client outside ``S`` keeps its self mask ``PRG(b_v)``, so its masked input hides
  it.  For ``u`` in ``S``, what remains after removing every mask the server can is
  ``x_u + sum of ±PRG(s_uw)`` over the edges ``uw`` inside ``S``, whose keys stay secret.
  Since ``G[S]`` is connected, every proper non-empty subset ``A`` of ``S`` has an edge to
  ``S \\ A`` carrying a pseudorandom mask that does not cancel in ``A``'s sum, and the masks on a
  spanning tree of ``G[S]`` make the vector of remainders uniform subject to its total: only
  ``sum_S x_u`` is revealed (Bell et al., CCS 2020, section 3).  Colluders would break this (a
  colluder inside a band declared dropped bridges the graph while its neighbours' pairwise masks
  are known), hence ``c = 0``.
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
  makes it refuse an id it has seen (the session hash already makes old signatures worthless).
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

from securefl.protocols.secagg.client import ClientProtocol, ClientState, RoundIdGuard
from securefl.protocols.secagg.codec import decode, encode
from securefl.protocols.secagg.driver import (
    Dropout,
    DropoutPlan,
    Network,
    Packet,
    Rejection,
    RoundAbortedError,
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
    "encode",
    "enforce_parameter_rules",
    "protocol_steps",
    "reliable_network",
    "run_secure_aggregation",
    "session_hash",
]
