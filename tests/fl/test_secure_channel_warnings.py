"""The passive-mode rule warnings of a secure channel: in the configuration's terms, once per
distinct message per channel (every client and the server compute each round's parameters)."""

from __future__ import annotations

import logging
import warnings

from securefl.config import SecAggConfig
from securefl.fl.secure_channel import SecureAggregationChannel


def test_a_broken_rule_warns_once_per_channel_in_config_terms(caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level(logging.WARNING):
            channel = SecureAggregationChannel(
                config=SecAggConfig(dropout_rate=0.9),
                num_params=50,
                weight_bound=1,
                clients_per_round=10,
                seed=0,
            )
            for _ in range(10):  # ten rounds, every client and the server
                for _ in range(11):
                    channel.round_parameters(10)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1 and len(set(messages)) == 1
    assert "lower `secagg.threshold`, raise `secagg.neighbors` or lower `secagg.dropout_rate`" in messages[0]
    logged = [r.getMessage() for r in caplog.records if "break a rule" in r.getMessage()]
    assert logged == messages
