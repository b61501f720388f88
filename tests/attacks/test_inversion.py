"""The attacks recover small private images from updates made by securefl's own client code,
and refuse what they cannot do."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import observe

from securefl.attacks.inversion import (
    AttackConfig,
    AttackProgress,
    check_twice_differentiable,
    piecewise_linear_operations,
    reconstruct,
    total_variation,
)
from securefl.attacks.metrics import best_match, psnr
from securefl.errors import ConfigError
from securefl.models import build_model


def test_idlg_recovers_an_mnist_digit_to_over_40_db(mnist):
    x, y = mnist.test_x[7:8], mnist.test_y[7:8]
    events: list[AttackProgress] = []
    result = reconstruct(
        observe("lenet", x, y, seed=7), config=AttackConfig("idlg", restarts=3), progress=events.append
    )
    assert psnr(result.images[0], x[0]) >= 40
    assert result.labels.tolist() == y.tolist()
    assert result.objective < 1e-8
    assert events and events[-1].objective == pytest.approx(result.objective, rel=1e-6)
    assert all(event.iteration <= event.iterations for event in events)


def test_dlg_recovers_image_and_label_of_a_small_digit(mnist):
    x = torch.nn.functional.adaptive_avg_pool2d(mnist.test_x[3:4], 14)
    y = mnist.test_y[3:4]
    result = reconstruct(observe("lenet", x, y, seed=3), config=AttackConfig("dlg", restarts=4, seed=1))
    assert psnr(result.images[0], x[0]) >= 40
    assert result.labels.tolist() == y.tolist()


@pytest.mark.parametrize("local_steps", [1, 3])
def test_inverting_gradients_recovers_a_colour_image_from_gradient_and_fedavg_update(photos, local_steps):
    x = torch.nn.functional.adaptive_avg_pool2d(photos.test_x[1:2], 16)
    y = photos.test_y[1:2]
    observation = observe("lenet", x, y, seed=1, uniform=False, dtype=torch.float32, local_steps=local_steps)
    result = reconstruct(observation, config=AttackConfig("ig", max_iterations=300, seed=1))
    assert psnr(result.images[0], x[0]) >= 30
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1


def test_batch_of_two_is_recovered_up_to_order(mnist):
    rows = torch.tensor([0, 1])
    x = torch.nn.functional.adaptive_avg_pool2d(mnist.test_x[rows], 14)
    y = mnist.test_y[rows]
    assert y[0] != y[1]
    result = reconstruct(observe("lenet", x, y, seed=5), config=AttackConfig("idlg", restarts=4))
    pairing = best_match(result.images, x)
    assert min(psnr(result.images[pairing[i]], x[i]) for i in range(2)) >= 30


def test_the_chosen_restart_is_the_one_with_the_lowest_objective(mnist):
    x, y = mnist.test_x[2:3], mnist.test_y[2:3]
    config = AttackConfig("idlg", restarts=3, max_iterations=10, converged_below=0.0, seed=4)
    result = reconstruct(observe("lenet", x, y, seed=2), config=config)
    assert len(result.restart_objectives) == 3
    assert result.objective == min(result.restart_objectives)


@pytest.mark.parametrize("model_name", ["cnn", "mlp", "resnet18"])
@pytest.mark.parametrize("attack", ["dlg", "idlg"])
def test_gradient_matching_refuses_piecewise_linear_models_and_says_why(model_name, attack):
    with pytest.raises(ConfigError, match="twice-differentiable.*ReLU.*`attack` ig"):
        check_twice_differentiable(attack, model_name, input_shape=(3, 32, 32), num_classes=10)


def test_lenet_and_inverting_gradients_are_accepted():
    check_twice_differentiable("dlg", "lenet", input_shape=(1, 28, 28), num_classes=10)
    check_twice_differentiable("ig", "cnn", input_shape=(1, 28, 28), num_classes=10)
    cnn = build_model("cnn", input_shape=(1, 28, 28), num_outputs=10)
    assert piecewise_linear_operations(cnn, (1, 28, 28)) == ["ReLU", "max-pooling"]
    lenet = build_model("lenet", input_shape=(1, 28, 28), num_outputs=10)
    assert piecewise_linear_operations(lenet, (1, 28, 28)) == []


def test_total_variation_matches_a_hand_computed_value():
    image = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    # horizontal differences |0-1|, |1-1| -> mean 0.5; vertical |0-1|, |1-1| -> mean 0.5
    assert float(total_variation(image)) == pytest.approx(1.0)


def test_unknown_attack_and_bad_knobs_are_config_errors():
    with pytest.raises(ConfigError, match="unknown attack"):
        AttackConfig("gan")
    with pytest.raises(ConfigError, match="restarts"):
        AttackConfig("dlg", restarts=0)
