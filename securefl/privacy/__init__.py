"""Differential privacy for federated learning, through Opacus' mechanisms and accountants.

- :mod:`securefl.privacy.dp_client`: sample-level DP-SGD on every client (``--dp``), with
  per-client accounting that adds up across rounds and an optional ε budget;
- :mod:`securefl.privacy.central`: user-level DP-FedAvg at the server (``--central-dp``);
- :mod:`securefl.privacy.distributed`: user-level DP with the noise added by the clients under
  secure aggregation (``--distributed-dp``), accounted by :mod:`securefl.privacy.skellam`;
- :mod:`securefl.privacy.ledger`: the immutable per-client record of privacy events.
"""

from securefl.privacy.central import ClipUpdate, DPFedAvgServerUpdate
from securefl.privacy.dp_client import DPSGDTrainer
from securefl.privacy.ledger import PrivacyLedger, SampledGaussianEvent, epsilon_spent

__all__ = [
    "ClipUpdate",
    "DPFedAvgServerUpdate",
    "DPSGDTrainer",
    "PrivacyLedger",
    "SampledGaussianEvent",
    "epsilon_spent",
]
