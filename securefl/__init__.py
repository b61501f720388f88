"""securefl: privacy-first federated learning.

FedAvg simulation on real data, Opacus DP-SGD on clients, DP-FedAvg at the server, secure
aggregation (Bonawitz et al. 2017) and gradient-inversion attacks that show what leaks.

The curated public API::

    from securefl import RunConfig, run_simulation
    history = run_simulation(RunConfig(dataset="digits", model="mlp", rounds=3))
"""

import importlib
from typing import Any

# Public name -> module that defines it. Imported on first use (PEP 562), so `import securefl`
# and the CLI's start-up do not pay for torch, Opacus and matplotlib before they are needed.
_EXPORTS = {
    "RunConfig": "securefl.config",
    "DPConfig": "securefl.config",
    "CentralDPConfig": "securefl.config",
    "SecAggConfig": "securefl.config",
    "DATASETS": "securefl.data",
    "load_dataset": "securefl.data",
    "partition": "securefl.data",
    "SecureFLError": "securefl.errors",
    "ConfigError": "securefl.errors",
    "DataError": "securefl.errors",
    "ProtocolError": "securefl.errors",
    "LocalProtocolError": "securefl.errors",
    "RemoteProtocolError": "securefl.errors",
    "ThresholdNotMetError": "securefl.errors",
    "RoundAbortedError": "securefl.errors",
    "TrainingDivergedError": "securefl.errors",
    "PrivacyBudgetExceeded": "securefl.errors",
    "History": "securefl.fl.history",
    "write_run": "securefl.fl.history",
    "RoundRecord": "securefl.fl.record",
    "Federation": "securefl.federation",
    "build_federation": "securefl.federation",
    "run_simulation": "securefl.federation",
    "SecAggParams": "securefl.protocols.secagg",
    "choose_parameters": "securefl.protocols.secagg",
    "run_secure_aggregation": "securefl.protocols.secagg",
    "MODELS": "securefl.models",
    "build_model": "securefl.models",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'securefl' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)
