"""The federated-learning engine: one round as a server program and client programs.

- :mod:`~securefl.fl.types`: the plug points (trainer, update transform, aggregation halves,
  server update) and the values that cross them;
- :mod:`~securefl.fl.messages` and :mod:`~securefl.fl.codec`: the round's messages and their bytes;
- :mod:`~securefl.fl.server` and :mod:`~securefl.fl.client`: the two programs, sans-IO;
- :mod:`~securefl.fl.turns`: synchronous turns that carry bytes between them in one process;
- :mod:`~securefl.fl.fedavg`, :mod:`~securefl.fl.training`, :mod:`~securefl.fl.secure_channel`:
  FedAvg (McMahan et al. 2017), local training, secure aggregation as an aggregation;
- :mod:`~securefl.fl.record`, :mod:`~securefl.fl.history`: what a run produces.

Nothing here imports :mod:`securefl.privacy` (it plugs in from :mod:`securefl.federation`).
"""
