"""Transports: how the server program's and the client programs' bytes travel.

A transport moves bytes between a :class:`~securefl.fl.server.FederatedServer` and
:class:`~securefl.fl.client.FederatedClient` objects and nothing else: the round logic is the
same whichever carries them.  :mod:`securefl.transports.inprocess` (the default) delivers them in
one process, sequentially and deterministically.
"""
