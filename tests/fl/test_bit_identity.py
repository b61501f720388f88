"""Same seed, same final weights, bit for bit, as main before the round redesign (issue 10).

The fixtures in ``tests/fixtures/bit_identity`` are the final models of small runs written by
commit 5fcc0e2 (plain FedAvg, FedSGD, and --secagg with dropouts, an aborted round, SecAgg+
neighbours and an active adversary); ``configs.py`` there defines the runs for both the generator
and this test. A failure here means a change moved the numbers of a non-DP run: either a bug, or
a deliberate change that must say so and regenerate the fixtures (see the README there).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bit_identity"


def _load_configs():
    spec = importlib.util.spec_from_file_location("bit_identity_configs", FIXTURES / "configs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


configs = _load_configs()


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # run_simulation sets the process-wide count
    yield
    torch.set_num_threads(threads)


def test_every_run_has_a_fixture_and_every_fixture_a_run():
    written = {path.stem for path in FIXTURES.glob("*.safetensors")}
    assert written == set(configs.CONFIGS)


@pytest.mark.filterwarnings("ignore:secure-aggregation parameters break a rule")
@pytest.mark.parametrize("name", sorted(configs.CONFIGS))
def test_final_weights_are_bit_identical_to_main_before_the_redesign(name):
    from securefl import run_simulation

    expected = load_file(str(FIXTURES / f"{name}.safetensors"))
    history = run_simulation(configs.build_config(name))
    actual = history.model.state_dict()

    assert set(actual) == set(expected), (
        f"{name}: state_dict keys {sorted(actual)} != fixture's {sorted(expected)}"
    )
    for key, want in expected.items():
        got = actual[key].detach().cpu()
        assert got.dtype == want.dtype, f"{name}: {key} is {got.dtype}, the fixture {want.dtype}"
        assert got.shape == want.shape, (
            f"{name}: {key} has shape {tuple(got.shape)}, the fixture {tuple(want.shape)}"
        )
        if not torch.equal(got, want):
            differ = int((got != want).sum())
            largest = float((got.double() - want.double()).abs().max())
            pytest.fail(
                f"{name}: {key} differs from the fixture in {differ} of {want.numel()} entries, "
                f"by up to {largest:.3g}"
            )
