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


def test_securefl_train_binds_what_each_client_received_into_secure_aggregation(monkeypatch):
    """``securefl train --secagg``: every sampled client hands its secure-aggregation half the
    context of the model and settings it trained on, and the server half opens the session in
    that same context, both recomputed here from the round's global weights."""
    from securefl.config import RunConfig, SecAggConfig
    from securefl.federation import build_federation, run_simulation
    from securefl.fl.record import RoundStatus
    from securefl.fl.secure_channel import SecureAggregationChannel, SecureAggregationClient

    config = RunConfig(  # one process: the spy on the clients' side records in this one
        dataset="digits", model="mlp", clients=4, rounds=1, local_epochs=1, secagg=SecAggConfig(), workers=1
    )
    federation = build_federation(config)
    seen: dict[int, bytes] = {}
    opened: list[bytes] = []
    start, open_round = SecureAggregationClient.start, SecureAggregationChannel.open_round

    def spy_start(self, contribution, *, round_index, setup, context):
        seen[self.client_id] = context
        return start(self, contribution, round_index=round_index, setup=setup, context=context)

    def spy_open_round(self, *, round_index, participants, context):
        opened.append(context)
        return open_round(self, round_index=round_index, participants=participants, context=context)

    monkeypatch.setattr(SecureAggregationClient, "start", spy_start)
    monkeypatch.setattr(SecureAggregationChannel, "open_round", spy_open_round)
    reference = copy.deepcopy(federation.eval_model)  # round 1's global weights
    expected = model_context(
        model=reference,
        settings={
            "round": 1,
            "algorithm": "fedavg",
            "local_epochs": 1,
            "batch_size": config.training.batch_size,
            "lr": config.training.lr,
            "momentum": config.training.momentum,
            "weight_decay": config.weight_decay,
        },
    )
    history = run_simulation(config, federation=federation)
    assert history.final.status is RoundStatus.OK and history.final.survivors == 4
    assert seen == {client: expected for client in range(4)}
    assert opened == [expected]
