"""Large federations in one process: a client is its rows of the data set until it is sampled.

A simulation of 10,000 clients holds 10,000 clients' worth of state between rounds; this module
keeps that state at what must persist.  :class:`ShardRows` is every client's shard as its row
indices into the data set (the partition itself): a client's examples are copied out of the data
set when its program is built, not held twice for the whole run.  :class:`ClientPool` holds the
client programs (:class:`~securefl.fl.client.FederatedClient`): it builds a client's program when
a transport first asks for it (from its shard, the trainer that owns its privacy ledger and its
:class:`~securefl.fl.client.ClientMemory`) and, when told to :meth:`~ClientPool.park`, keeps of
each built client only that memory (the last round it trained and its secure-aggregation round-id
guard) and drops the rest.  A rebuilt client is the same program: same shard rows, same trainer,
same memory, same seeded generators, so a run is bit for bit the run with every client kept alive
(tests/fl/test_large_federations.py compares the two).  What one idle client costs is measured in
docs/benchmarks.md, "Large federations".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import overload

import torch

from securefl.fl.client import ClientMemory, FederatedClient
from securefl.fl.types import ClientShard

ClientBuilder = Callable[[int, ClientMemory | None], FederatedClient]
"""``(client_id, memory) -> the client's program``, with what it remembered (``None``: nothing yet)."""


class ShardRows(Sequence[ClientShard]):
    """Each client's shard as its rows of ``x`` and ``y``: ``parts[c]`` are client ``c``'s row
    indices.  Indexing copies the rows out (a new :class:`ClientShard` each time, the same values
    in the same order); nothing per client is held but its indices."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, parts: Sequence[torch.Tensor]) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} targets")
        self.x = x
        self.y = y
        self.parts = parts

    def __len__(self) -> int:
        return len(self.parts)

    @overload
    def __getitem__(self, index: int) -> ClientShard: ...

    @overload
    def __getitem__(self, index: slice) -> list[ClientShard]: ...

    def __getitem__(self, index: int | slice) -> ClientShard | list[ClientShard]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        client_id = range(len(self))[index]  # IndexError out of range, negative indices counted back
        rows = self.parts[client_id]
        return ClientShard(client_id=client_id, x=self.x[rows].contiguous(), y=self.y[rows].contiguous())

    def size(self, client_id: int) -> int:
        """How many examples client ``client_id`` holds, without copying them."""
        return len(self.parts[client_id])


class ClientPool(Mapping[int, FederatedClient]):
    """The client programs of clients ``0 .. clients - 1``, built by ``build`` when first asked
    for and parked on :meth:`park`.

    A program obtained from the pool is valid until the next :meth:`park`; after it, asking for
    the client again gives its rebuilt program.  Iterating over ``items()`` or ``values()`` builds
    every client (keys alone build nothing).
    """

    def __init__(self, clients: int, build: ClientBuilder) -> None:
        self._ids = range(clients)
        self._build = build
        self._built: dict[int, FederatedClient] = {}
        self._memory: dict[int, ClientMemory] = {}

    def __getitem__(self, client_id: int) -> FederatedClient:
        client = self._built.get(client_id)
        if client is None:
            if client_id not in self._ids:
                raise KeyError(client_id)
            client = self._build(client_id, self._memory.get(client_id))
            if client.client_id != client_id:
                raise ValueError(f"the program built for client {client_id} is client {client.client_id}'s")
            self._built[client_id] = client
        return client

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._ids

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def built(self) -> int:
        """How many client programs exist now (the rest are their shard rows and memory)."""
        return len(self._built)

    def park(self, client_ids: Sequence[int] | None = None) -> None:
        """Keep only the memory of the built clients ``client_ids`` (default: all built) and drop
        their programs.  A client that never trained has nothing to remember."""
        for client_id in list(self._built) if client_ids is None else client_ids:
            client = self._built.pop(client_id, None)
            if client is None:
                continue
            memory = client.memory()
            if memory.last_round is not None:
                self._memory[client_id] = memory
