"""By construction the server side never holds an individual input: after every message it
receives, no array, bytes or message reachable from the ServerProtocol equals or encodes one."""

from __future__ import annotations

import numpy as np
import pytest
from secagg_helpers import random_inputs

from securefl.protocols.secagg import DropoutPlan, SecAggParams, Step, ring, run_secure_aggregation
from securefl.protocols.secagg import server as server_module


def reachable(obj, seen=None):
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from reachable(key, seen)
            yield from reachable(value, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            yield from reachable(item, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from reachable(vars(obj), seen)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from reachable(getattr(obj, name), seen)


@pytest.mark.parametrize("bits", [32, 20])
def test_server_never_holds_an_individual_input(monkeypatch, bits):
    inputs = random_inputs(5, 64, bits, seed=bits)
    encodings = {ring.pack(v, bits) for v in inputs.values()}  # an input as it would be uploaded
    snapshots = []
    original = server_module.ServerProtocol.receive

    def spying_receive(self, message):
        out = original(self, message)
        snapshots.append(list(reachable(self)))
        return out

    monkeypatch.setattr(server_module.ServerProtocol, "receive", spying_receive)
    plan = DropoutPlan({4: Step.UNMASKING})
    result = run_secure_aggregation(
        inputs, params=SecAggParams(num_clients=5, threshold=3, bits=bits), dropouts=plan
    )
    assert len(snapshots) == 5 + 5 + 5 + 4
    for objects in snapshots:
        arrays = [o for o in objects if isinstance(o, np.ndarray)]
        assert len(arrays) <= 1  # only the running sum of masked inputs
        for array in arrays:
            assert not any(np.array_equal(array, v) for v in inputs.values())
        assert not any(isinstance(o, bytes) and o in encodings for o in objects)
    assert result.survivors == frozenset(range(5))
