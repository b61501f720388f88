"""Architecture pinning: the pinned model passes, any added layer or changed shape is refused."""

from __future__ import annotations

import logging

import pytest
from torch import nn

from securefl.defences.pinning import pin_for
from securefl.errors import ModelRefusedError
from securefl.models import build_model

SHAPE = (1, 8, 8)


def test_the_pinned_model_passes_whatever_its_weights():
    pin = pin_for("mlp", input_shape=SHAPE, num_outputs=10)
    for seed in range(3):
        pin.check(build_model("mlp", input_shape=SHAPE, num_outputs=10, seed=seed))


def test_an_added_layer_is_refused_with_a_log_line(caplog):
    pin = pin_for("mlp", input_shape=SHAPE, num_outputs=10)
    extra = nn.Sequential(nn.Linear(64, 64), build_model("mlp", input_shape=SHAPE, num_outputs=10))
    with caplog.at_level(logging.WARNING), pytest.raises(ModelRefusedError, match="not the pinned 'mlp'"):
        pin.check(extra, client_id=7)
    assert "client 7 refuses the global model" in caplog.text


def test_a_changed_shape_or_another_architecture_is_refused():
    pin = pin_for("mlp", input_shape=SHAPE, num_outputs=10)
    with pytest.raises(ModelRefusedError, match=r"net.5.weight has shape \(11, 32\)"):
        pin.check(build_model("mlp", input_shape=SHAPE, num_outputs=11))
    with pytest.raises(ModelRefusedError):
        pin.check(build_model("cnn", input_shape=SHAPE, num_outputs=10))
