"""What `securefl train` prints when secure-aggregation parameters break a rule: the protocol's
parameters (``max_colluders``, ``neighbors``, ...) named as the flags that set them.

protocols/ names its own parameters in backticks; the channel maps each to its RunConfig field
path (:data:`securefl.fl.secure_channel.PARAMS_TO_CONFIG`) and the CLI renders the path as its
flag, for errors, passive-mode warnings (warned and logged) and the collusion-bound line alike.
"""

from __future__ import annotations

import re

import pytest

from securefl.cli.app import main

BASE = ["train", "--secagg", "--dataset", "digits", "--model", "mlp", "--rounds", "1", "--local-epochs", "1"]

PROTOCOL_NAMES = re.compile(
    r"max_colluders|num_clients|active_adversary|dropout_rate|input_bound|corruption_rate"
    r"|(?<![-\w])(neighbors|bits)\b|None"
)

CASES = [
    (["--secagg-colluders", "9"], 2, "--secagg-colluders 9 must be an integer in [0, 8]"),
    (["--secagg-colluders", "6"], 2, "or lower --secagg-colluders"),
    (["--secagg-neighbors", "3"], 2, "set --secagg-neighbors to 4 or 2"),
    (
        ["--secagg-neighbors", "4", "--secagg-threshold", "6"],
        2,
        "lower --secagg-threshold or raise --secagg-neighbors",
    ),
    (
        ["--active-adversary", "--secagg-neighbors", "4", "--secagg-colluders", "1"],
        2,
        "use the complete graph (drop --secagg-neighbors)",
    ),
    (["--active-adversary", "--secagg-threshold", "5"], 2, "--active-adversary needs 2 * threshold >"),
    (
        ["--active-adversary", "--secagg-neighbors", "4", "--secagg-threshold", "3"],
        2,
        "raise --secagg-threshold or lower --secagg-neighbors",
    ),
    (["--active-adversary", "--dropout-rate", "0.5"], 2, "lower --dropout-rate"),
    (
        ["--dropout-rate", "0.9"],
        0,
        "lower --secagg-threshold, raise --secagg-neighbors or lower --dropout-rate",
    ),
    (["--secagg-neighbors", "2", "--secagg-colluders", "4"], 0, "raise --secagg-neighbors"),
    # the round's size reads as a size, not as a flag the user did not give (--fraction here)
    (
        ["--fraction", "0.6", "--secagg-colluders", "9"],
        2,
        "--secagg-colluders 9 must be an integer in [0, 4] in a round of 6 clients",
    ),
    (
        ["--fraction", "0.6", "--active-adversary", "--secagg-threshold", "3"],
        2,
        "n = 6 (a round of 6 clients; no c >= 0 fits)",
    ),
]


@pytest.mark.parametrize(("flags", "code", "expected"), CASES)
def test_rule_breaking_secagg_parameters_are_shown_as_flags(tmp_path, capsys, caplog, flags, code, expected):
    assert main([*BASE, *flags, "--out", str(tmp_path / "run")]) == code
    captured = capsys.readouterr()
    shown = captured.out + captured.err + caplog.text
    flat = " ".join(shown.split())  # rich wraps long lines
    assert expected in flat
    assert "`" not in shown
    assert "--clients-per-round" not in flat  # a round's size is not the flag
    assert not PROTOCOL_NAMES.search(flat), PROTOCOL_NAMES.search(flat)
