"""The DP-SGD run both hosted-client transports (worker processes, Ray actors) are checked with,
and what of its records does not depend on the secret noise."""

from __future__ import annotations

# Digits' 1,437 training samples dealt to 4 clients (359 or 360 each), 3 sampled per round.
DP_RUN = {
    "dataset": "digits",
    "model": "mlp",
    "clients": 4,
    "clients_per_round": 3,
    "lr": 0.05,
    "batch_size": 16,
    "local_epochs": 1,
}


def without_noise(record) -> dict:
    """A round's record without what depends on the DP noise (the model's test metrics) or on
    the machine's timing."""
    return {
        key: value
        for key, value in record.to_json().items()
        if "seconds" not in key and not key.startswith("test_")
    }
