"""How every simulation transport opens a round: the server's train requests, its participants,
and the crashes simulated for them (the secure channel's seeded dropout plan,
:class:`~securefl.fl.turns.Faults`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from securefl.fl.server import FederatedServer
from securefl.fl.turns import NO_FAULTS, Faults

FaultsFor = Callable[[int, Sequence[int]], Faults]
"""``(round_index, participants) -> Faults``: which participants crash in that round, and when."""

Opened = tuple[list[tuple[int, bytes]], list[int], Faults]
"""A round's opening messages (client id, bytes), its participants and their simulated faults."""


def open_round(server: FederatedServer, faults_for: FaultsFor | None) -> Opened | None:
    """Start ``server``'s next round; ``None`` when it is over already (nobody sampled, or the
    aggregation could not run at that size: its record is written)."""
    first = server.start_round()
    if server.finished:
        return None
    participants = sorted({client_id for client_id, _ in first})
    faults = faults_for(server.round_index, participants) if faults_for is not None else NO_FAULTS
    return first, participants, faults
