"""The bounds the server and every client derive alike from ``federation.toml``: the FedAvg weight
bound the aggregation is built with, and the largest message (both ends of a gRPC stream must
accept what the other legitimately sends)."""

from __future__ import annotations

from securefl.config import RunConfig
from securefl.deploy.federation_file import FederationFile
from securefl.fl.secure_channel import RingEncoding, SecureAggregationChannel
from securefl.fl.types import Aggregation
from securefl.transports.grpc_server import message_limit


def weight_bound(federation: FederationFile) -> int:
    """The ``max_client_samples`` both programs build the aggregation with: the configured bound
    (any number where it is not used: :func:`securefl.federation.build_aggregation` ignores it
    without secure aggregation of FedAvg weights, and DP-FedAvg clients send weight 1)."""
    return federation.max_client_samples or 1


def federation_message_limit(config: RunConfig, aggregation: Aggregation, *, num_params: int) -> int:
    """:func:`~securefl.transports.grpc_server.message_limit` for a federation of ``config`` whose
    aggregation is ``aggregation`` (what :func:`securefl.federation.build_aggregation` built): the
    ring encoding is the secure channel, or the distributed-DP channel wrapping it; the most
    clients a round can have is every client under Poisson sampling, the sampled ones otherwise."""
    ring: RingEncoding | None = None
    if isinstance(aggregation, SecureAggregationChannel):
        ring = aggregation
    elif config.central_dp is not None and config.central_dp.distributed:
        from securefl.privacy.distributed import DistributedDPChannel  # Opacus only when asked for

        if isinstance(aggregation, DistributedDPChannel):
            ring = aggregation
    poisson = config.central_dp is not None and config.central_dp.client_sampling == "poisson"
    clients = config.clients if poisson else config.sampled_clients
    return message_limit(num_params, clients=clients, ring=ring)


__all__ = ["federation_message_limit", "weight_bound"]
