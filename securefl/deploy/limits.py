"""The largest message of a federation, computed by the server and every client alike from the
configuration alone (both ends of a gRPC stream must accept what the other legitimately sends)."""

from __future__ import annotations

from securefl.config import RunConfig
from securefl.fl.secure_channel import RingEncoding, SecureAggregationChannel
from securefl.fl.types import Aggregation
from securefl.transports.grpc_server import message_limit


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


__all__ = ["federation_message_limit"]
