"""Secure aggregation: the server learns the sum of the survivors' vectors and nothing else.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS 2017)
with the sparse random-Harary-graph variant SecAgg+ of Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead" (CCS 2020); real cryptography (X25519, HKDF-SHA256,
AES-256-GCM, AES-256-CTR masks, Shamir over 2^521 - 1, Ed25519 in active mode), written sans-IO.

Threat model (what the guarantees assume):

- Honest-but-curious server (default): it follows the protocol and learns only the sum of the
  survivors' inputs and who survived, as long as fewer than ``t`` clients collude with it
  (Bonawitz et al., theorem 6.3); with SecAgg+ graphs, under the assumptions documented in
  :func:`choose_parameters` (random graph, independent dropouts, at most ``c`` colluders).
- ``active_adversary=True``: the server may deviate.  Advertised keys are Ed25519-signed with
  keys everyone knows up front (no key substitution), and a ConsistencyCheck round makes every
  client sign the survivor set; an honest client unmasks only with ``signature_threshold`` valid
  signatures on exactly the set it signed, so no two honest clients can be shown different sets
  while ``2 * signature_threshold > n + c``.
- Always: an honest client never reveals both shares of one peer, refuses overlapping or
  contradictory lists, and a round below threshold aborts with no output.  The server checks each
  reconstructed secret (the self-mask seed against its SHA-256 commitment, the mask key against
  the advertised public key), so a corrupted share cannot produce a wrong sum.
- Not covered: the server can always output a wrong sum (SecAgg protects privacy, not the
  server's honesty about the result); integrity of client-to-server traffic is the transport's job
  (TLS) -- a packet altered in flight that still decodes is indistinguishable from a client's
  choice; clients are trusted to send inputs within ``input_bound`` (no range proofs); whoever
  draws the SecAgg+ graph seed chooses the graph, so against an active server agree the seed out
  of band; constant-time behaviour is that of ``cryptography``.

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
