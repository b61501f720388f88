"""model_context: equal for the same model and settings, different for any change."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch

from securefl.defences.consistency import model_context
from securefl.models import build_model

SETTINGS = {"round": 3, "lr": 0.1, "local_steps": 1, "batch_size": 8}


def _model(seed: int = 0):
    return build_model("mlp", input_shape=(1, 8, 8), num_outputs=10, seed=seed)


def test_the_same_model_and_settings_give_the_same_context():
    model = _model()
    assert model_context(model=model, settings=SETTINGS) == model_context(
        model=copy.deepcopy(model), settings=dict(reversed(list(SETTINGS.items())))
    )
    assert len(model_context(model=model, settings=SETTINGS)) == 32


def test_one_ulp_of_one_weight_another_setting_or_dtype_change_the_context():
    model = _model()
    reference = model_context(model=model, settings=SETTINGS)
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        weight = nudged.net[1].weight
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(float("inf")))
    assert model_context(model=nudged, settings=SETTINGS) != reference
    assert model_context(model=model, settings={**SETTINGS, "lr": 0.2}) != reference
    assert model_context(model=copy.deepcopy(model).double(), settings=SETTINGS) != reference
    assert model_context(model=_model(seed=1), settings=SETTINGS) != reference


def test_the_context_hashes_exactly_the_parameter_bytes():
    """Against an independent encoding: the same fields hashed by hand."""
    model = _model()
    import json

    digest = hashlib.sha256(b"securefl/model-context/v1\x00")
    for name, parameter in model.named_parameters():
        header = json.dumps([name, list(parameter.shape), "torch.float32"]).encode()
        data = parameter.detach().numpy().astype("<f4").tobytes()
        digest.update(len(header).to_bytes(4, "big") + header + len(data).to_bytes(8, "big") + data)
    settings = json.dumps(SETTINGS, sort_keys=True).encode()
    digest.update(len(settings).to_bytes(4, "big") + settings)
    assert model_context(model=model, settings=SETTINGS) == digest.digest()


def test_a_flat_vector_hashes_like_the_model_loaded_with_it():
    model, other = _model(), _model(seed=1)
    vector = torch.nn.utils.parameters_to_vector(other.parameters()).detach()
    assert model_context(model=model, settings=SETTINGS, params=vector) == model_context(
        model=other, settings=SETTINGS
    )
    with pytest.raises(ValueError, match="does not fit"):
        model_context(model=model, settings=SETTINGS, params=vector[:-1])


def test_securefl_train_binds_what_each_client_received_into_secure_aggregation():
    """``securefl train --secagg``: every sampled client hands the channel the context of the
    model and settings it trained on, recomputed here from the round's global weights."""
    from securefl.config import RunConfig, SecAggConfig
    from securefl.fl.simulation import build_federation, run_round
    from securefl.fl.vectors import to_vector

    config = RunConfig(
        dataset="digits", model="mlp", clients=4, rounds=1, local_epochs=1, secagg=SecAggConfig()
    )
    federation = build_federation(config)
    seen = {}
    inner = federation.channel

    class Spy:
        def aggregate(self, contributions, *, round_index, contexts=None):
            seen.update(contexts)
            return inner.aggregate(contributions, round_index=round_index, contexts=contexts)

    federation.channel = Spy()
    params = to_vector(federation.eval_model.parameters())
    reference = copy.deepcopy(federation.eval_model)
    expected = model_context(
        model=reference,
        settings={
            "round": 1,
            "algorithm": "fedavg",
            "local_epochs": 1,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "momentum": config.momentum,
            "weight_decay": config.weight_decay,
        },
    )
    run_round(federation, params, round_index=1, eligible=[0, 1, 2, 3])
    assert seen == {client: expected for client in range(4)}
