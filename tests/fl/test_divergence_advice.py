"""What a diverged client or run is told to try: lower `lr` (the field path, which the CLI shows as
--lr), the same words on the plain-sum and the secure-aggregation paths; never a smaller batch,
which makes SGD noisier, not tamer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from securefl.cli.flags import render
from securefl.config import RunConfig
from securefl.errors import NonFiniteUpdateError
from securefl.federation import divergence_message
from securefl.fl.fedavg import PlainSumClient
from securefl.fl.quantize import FixedPointCodec
from securefl.fl.types import Contribution

ADVICE = "the client's training diverged (lower `lr`)"


def _plain_sum_refusal() -> str:
    delta = torch.tensor([0.5, math.nan, 0.0])
    with pytest.raises(NonFiniteUpdateError) as caught:
        PlainSumClient().start(Contribution(0, delta, 1.0, 0.0), round_index=1, setup=b"", context=b"")
    return str(caught.value)


def _secure_sum_refusal() -> str:
    codec = FixedPointCodec.for_ring(torch.ones(3), bits=20, num_clients=3)
    with pytest.raises(NonFiniteUpdateError) as caught:
        codec.encode(torch.tensor([0.5, math.nan, 0.0]), generator=torch.Generator().manual_seed(0))
    return str(caught.value)


def test_a_non_finite_update_gets_the_same_advice_on_both_paths():
    for message in (_plain_sum_refusal(), _secure_sum_refusal()):
        assert ADVICE in message
        assert "learning rate" not in message
        assert "(lower --lr)" in render(message)


def test_the_divergence_advice_is_lower_lr_and_clip_not_a_smaller_batch():
    config = RunConfig(dataset="digits", model="mlp", clients=3, lr=0.5)
    record = SimpleNamespace(round=4, divergence="weights became NaN")
    message = divergence_message(record, config)  # type: ignore[arg-type]
    assert message == (
        "training diverged in round 4: weights became NaN; lower `lr` (now 0.5), or clip the "
        "updates (DP-FedAvg's `central_dp.clip_norm`)"
    )
    assert "batch" not in message
    assert render(message).endswith("lower --lr (now 0.5), or clip the updates (DP-FedAvg's --clip-norm)")
