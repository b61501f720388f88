"""iDLG's label trick (Zhao et al. 2020) on updates made by securefl's client code: exact at batch
1 for sigmoid and ReLU models, whatever the initialisation; counts for batches."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import observe

from securefl.attacks.inversion import infer_labels


@pytest.mark.parametrize(("model_name", "uniform"), [("lenet", True), ("lenet", False), ("cnn", False)])
def test_label_of_one_image_is_recovered_for_every_seed_and_image(mnist, model_name, uniform):
    pairs = 0
    for seed in range(4):
        for index in range(seed * 100, seed * 100 + 30):
            x, y = mnist.test_x[index : index + 1], mnist.test_y[index : index + 1]
            observation = observe(model_name, x, y, seed=seed, uniform=uniform, dtype=torch.float32)
            assert infer_labels(observation).tolist() == y.tolist(), (seed, index)
            pairs += 1
    assert pairs >= 100


def test_label_is_recovered_from_a_multi_step_fedavg_update(mnist):
    for index in range(10):
        x, y = mnist.test_x[index : index + 1], mnist.test_y[index : index + 1]
        observation = observe("lenet", x, y, seed=index, uniform=False, local_steps=3, learning_rate=0.05)
        assert infer_labels(observation).tolist() == y.tolist()


def test_batch_label_counts_sum_to_the_batch_and_find_distinct_labels(mnist):
    hits = 0
    for seed in range(5):
        labels = torch.randperm(10, generator=torch.Generator().manual_seed(seed))[:4]
        rows = torch.stack([torch.nonzero(mnist.test_y == label)[0, 0] for label in labels])
        observation = observe("cnn", mnist.test_x[rows], mnist.test_y[rows], seed=seed, uniform=False)
        inferred = infer_labels(observation)
        assert inferred.shape == (4,)
        hits += sorted(inferred.tolist()) == sorted(labels.tolist())
    assert hits >= 4
