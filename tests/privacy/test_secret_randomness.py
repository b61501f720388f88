"""DP randomness is secret: drawn from the operating system, never stored, and the docs say so."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from privacy_helpers import make_model, make_shards, make_trainer

import securefl.privacy
from securefl.config import DPConfig
from securefl.fl.types import Aggregate
from securefl.fl.vectors import to_vector
from securefl.privacy import DPFedAvgServerUpdate

ROOT = Path(__file__).resolve().parents[2]
STALE = re.compile(r"seeded\s+`+torch\.Generator|\(reproducible|reproducible runs", re.IGNORECASE)


def test_no_doc_still_calls_dp_noise_seeded_or_reproducible():
    """Issue 9, point 13: the noise generators are OS-seeded and never stored since 7a1d357."""
    documents = [*Path(securefl.privacy.__file__).parent.glob("*.py"), ROOT / "docs/benchmarks.md"]
    documents.append(ROOT / "README.md")
    stale = {path.name: STALE.findall(path.read_text(encoding="utf-8")) for path in documents}
    assert {name: found for name, found in stale.items() if found} == {}


def test_dp_fedavg_owns_os_seeded_noise():
    """Without a generator passed in, two servers built the same way add different noise."""
    options = {
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "delta": 1e-5,
        "clients": 10,
        "clients_per_round": 5,
    }
    params = torch.zeros(64)
    first = DPFedAvgServerUpdate(**options)(params, Aggregate.empty(params))
    second = DPFedAvgServerUpdate(**options)(params, Aggregate.empty(params))
    assert not torch.equal(first, second)
    assert float(first.std()) > 0


def test_dp_sgd_owns_os_seeded_randomness():
    """Issue 10: the trainer, not its caller, owns DP-SGD's batch sampling and noise.  Two trainers
    built the same way without the test seed, given the same seeded simulation generator, send
    different updates; with the test seed they send the same one."""
    shards = make_shards([30])
    params = to_vector(make_model().parameters())

    def update(seed: int | None) -> torch.Tensor:
        trainer = make_trainer(shards, config=DPConfig(noise_multiplier=1.0, delta=1e-3), seed=seed)
        simulation = torch.Generator().manual_seed(0)  # what a seed in config.json would give
        return trainer.train(global_params=params, shard=shards[0], round_index=1, generator=simulation).delta

    assert not torch.equal(update(None), update(None))
    assert torch.equal(update(5), update(5))


def test_the_seed_hooks_are_documented_as_tests_only():
    """Every DP class's seed hook says what a known seed costs."""
    from securefl.privacy import DPSGDTrainer

    for documented in (DPSGDTrainer, DPFedAvgServerUpdate.__init__):
        assert "a seed known to the server voids the guarantee" in " ".join(documented.__doc__.split())
