"""Secure aggregation: the server learns the sum of the survivors' vectors and nothing else.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS 2017)
with the sparse random-Harary-graph variant SecAgg+ of Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead" (CCS 2020); real cryptography (X25519, HKDF-SHA256,
AES-256-GCM, AES-256-CTR masks, Shamir over 2^521 - 1, Ed25519 in active mode), written sans-IO.

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

from securefl.protocols.secagg.client import ClientProtocol, ClientState
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
from securefl.protocols.secagg.params import RoundSetup, SecAggParams, choose_parameters
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
    "RoundSetup",
    "SecAggParams",
    "SecAggResult",
    "SecAggStats",
    "ServerProtocol",
    "ServerState",
    "Step",
    "TranscriptEntry",
    "choose_parameters",
    "decode",
    "encode",
    "protocol_steps",
    "reliable_network",
    "run_secure_aggregation",
]
