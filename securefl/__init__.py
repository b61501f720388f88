"""securefl: privacy-first federated learning.

FedAvg simulation on real data, Opacus DP-SGD on clients, DP-FedAvg at the server, secure
aggregation (Bonawitz et al. 2017) and gradient-inversion attacks that show what leaks.

The curated public API::

    from securefl import RunConfig, run_simulation
    history = run_simulation(RunConfig(dataset="digits", model="mlp", rounds=3))
"""

from securefl.config import CentralDPConfig, DPConfig, RunConfig, SecAggConfig
from securefl.data import DATASETS, load_dataset, partition
from securefl.errors import (
    ConfigError,
    DataError,
    LocalProtocolError,
    PrivacyBudgetExceeded,
    ProtocolError,
    RemoteProtocolError,
    SecureFLError,
    ThresholdNotMetError,
)
from securefl.fl.history import History, write_run
from securefl.fl.simulation import Federation, build_federation, run_simulation
from securefl.models import MODELS, build_model

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "MODELS",
    "CentralDPConfig",
    "ConfigError",
    "DPConfig",
    "DataError",
    "Federation",
    "History",
    "LocalProtocolError",
    "PrivacyBudgetExceeded",
    "ProtocolError",
    "RemoteProtocolError",
    "RunConfig",
    "SecAggConfig",
    "SecureFLError",
    "ThresholdNotMetError",
    "build_federation",
    "build_model",
    "load_dataset",
    "partition",
    "run_simulation",
    "write_run",
]
