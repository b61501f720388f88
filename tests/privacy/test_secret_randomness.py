"""DP randomness is secret: drawn from the operating system, never stored, and the docs say so."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import securefl.privacy
from securefl.fl.types import Aggregate
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
