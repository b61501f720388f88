"""Threat-model isolation: the attack sees an Observation and nothing else, and an Observation
holds nothing of the victim's data."""

from __future__ import annotations

import gc
import inspect

import torch
from attack_helpers import observe

from securefl.attacks.inversion import AttackConfig, infer_labels, reconstruct
from securefl.attacks.metrics import psnr
from securefl.attacks.observation import Observation


def _reachable_tensors(root: object) -> list[torch.Tensor]:
    seen: set[int] = set()
    stack, tensors = [root], []
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            tensors.append(item)
            continue
        stack.extend(gc.get_referents(item))
    return tensors


def test_the_attack_api_takes_only_an_observation():
    parameters = inspect.signature(reconstruct).parameters
    assert list(parameters) == ["observation", "config", "progress"]
    assert [p.kind for p in parameters.values()][1:] == [inspect.Parameter.KEYWORD_ONLY] * 2
    assert parameters["observation"].annotation in (Observation, "Observation")
    assert "Tensor" not in " ".join(str(f.type) for f in AttackConfig.__dataclass_fields__.values())
    assert list(inspect.signature(infer_labels).parameters) == ["observation", "generator"]


def test_observation_shares_nothing_with_the_victim_and_survives_its_erasure(mnist):
    victim_x = mnist.test_x[5:6].clone()
    victim_y = mnist.test_y[5:6].clone()
    original = victim_x.clone()
    observation = observe("lenet", victim_x, victim_y, seed=5)

    tensors = _reachable_tensors(observation)
    assert tensors, "the observation holds the model and the update"
    victim_storages = {victim_x.untyped_storage().data_ptr(), victim_y.untyped_storage().data_ptr()}
    for tensor in tensors:
        assert tensor.untyped_storage().data_ptr() not in victim_storages
        same_size = tensor.numel() == victim_x.numel()
        assert not (same_size and torch.equal(tensor.view(-1).float(), victim_x.view(-1)))

    frozen_update = observation.observed_update.clone()
    victim_x.zero_()  # the client's data is gone (or changed) after the round
    victim_y.fill_(0)
    del victim_x, victim_y
    assert torch.equal(observation.observed_update, frozen_update)

    result = reconstruct(observation, config=AttackConfig("idlg", restarts=3))
    assert psnr(result.images[0], original[0]) >= 40  # everything came from the observation


def test_observation_copies_the_tensors_it_is_given():
    parameters = torch.zeros(4)
    update = torch.ones(4)
    from securefl.attacks.observation import ObservedKind, PublicKnowledge

    public = PublicKnowledge(
        model_name="mlp", input_shape=(4,), num_classes=2, batch_size=1, local_steps=1, learning_rate=0.1
    )
    observation = Observation(
        model_parameters=parameters, observed_update=update, kind=ObservedKind.CLIENT_UPDATE, public=public
    )
    update.fill_(7.0)
    parameters.fill_(3.0)
    assert torch.equal(observation.observed_update, torch.ones(4, dtype=torch.float64))
    assert torch.equal(observation.model_parameters, torch.zeros(4, dtype=torch.float64))
