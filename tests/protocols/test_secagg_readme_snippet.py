"""The researcher-API snippet proposed for the README runs as written and says what it shows."""

from __future__ import annotations

import contextlib
import io

SNIPPET = """
import numpy as np
from securefl.errors import ThresholdNotMetError
from securefl.protocols.secagg import (
    Dropout, DropoutPlan, SecAggParams, Step, choose_parameters, run_secure_aggregation)

# 5 clients, any 3 suffice; inputs in Z_2^32, every coordinate promised <= 1000 (no wrap-around)
params = SecAggParams(num_clients=5, threshold=3, bits=32, input_bound=1000)
inputs = {c: np.arange(4, dtype=np.uint32) * c for c in range(5)}

# client 4 leaves before uploading its masked input, client 2 right after uploading it
plan = DropoutPlan({4: Dropout(Step.MASKED_INPUT),
                    2: Dropout(Step.MASKED_INPUT, after_sending=True)})
result = run_secure_aggregation(inputs, params=params, dropouts=plan)
print(sorted(result.survivors), result.sum.tolist())        # [0, 1, 2, 3] [0, 6, 12, 18]

# what the server saw: keys, sealed shares, masked vectors, one kind of share per client
for entry in result.transcript:
    print(entry.step.label, type(entry.message).__name__, "from client", entry.message.sender)
print(result.stats.to_dict()["bytes_up"])                    # bytes each client sent

# below the threshold the round aborts and reveals nothing
try:
    run_secure_aggregation(inputs, params=params,
                           dropouts=DropoutPlan({c: Step.SHARE_KEYS for c in (0, 1, 2)}))
except ThresholdNotMetError as error:
    print("aborted:", error)

# SecAgg+: k and t for 100 clients, 10% dropouts, 5% colluding clients (rule in the docstring)
plus = choose_parameters(100, dropout_rate=0.1, corruption_rate=0.05)
print(plus.neighbors, plus.threshold)
"""


def test_readme_snippet_runs_and_prints_the_survivors_sum():
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(SNIPPET, "readme-secagg-snippet", "exec"), {"__name__": "readme"})
    lines = output.getvalue().splitlines()
    assert lines[0] == "[0, 1, 2, 3] [0, 6, 12, 18]"
    assert any(line.startswith("masked_input MaskedInput from client 3") for line in lines)
    assert not any("MaskedInput from client 4" in line for line in lines)
    assert any(line.startswith("aborted: only 2 clients shared keys") for line in lines)
    neighbors, threshold = map(int, lines[-1].split())
    assert neighbors % 2 == 0 and 2 <= threshold <= neighbors + 1
