"""Differential privacy for federated learning, through Opacus' mechanisms and accountants.

- :mod:`securefl.privacy.dp_client`: sample-level DP-SGD on every client (``--dp``): a shared
  :class:`DPSGDEngine` and a :class:`DPSGDTrainer` per client that keeps and enforces its own
  ledger and ε budget and owns its secret randomness; :func:`dp_round_metrics` and
  :func:`dp_ledger` report a federation of them;
- :mod:`securefl.privacy.central`: user-level DP-FedAvg at the server (``--central-dp``);
- :mod:`securefl.privacy.distributed`: user-level DP with the noise added by the clients under
  secure aggregation (``--distributed-dp``), accounted by :mod:`securefl.privacy.skellam`;
- :mod:`securefl.privacy.ledger`: the immutable per-client record of privacy events.
"""

from securefl.privacy.central import ClipUpdate, DPFedAvgServerUpdate
from securefl.privacy.dp_client import DPSGDEngine, DPSGDTrainer, dp_ledger, dp_round_metrics
from securefl.privacy.ledger import PrivacyLedger, SampledGaussianEvent, epsilon_spent

__all__ = [
    "ClipUpdate",
    "DPFedAvgServerUpdate",
    "DPSGDEngine",
    "DPSGDTrainer",
    "PrivacyLedger",
    "SampledGaussianEvent",
    "dp_ledger",
    "dp_round_metrics",
    "epsilon_spent",
]
