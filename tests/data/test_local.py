"""A client's own data from a local path: each format written for real, read back, compared with an
independent reader (torchvision's ImageFolder, numpy, the csv module, the registry's loaders)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_on_disk_formats import pin_checksums_to, write_cifar, write_mnist
from torchvision.datasets import ImageFolder

from securefl.data import load_dataset
from securefl.data.local import load_local_data, save_shard_npz
from securefl.errors import DataError

MNIST_LIKE = {"input_shape": (1, 28, 28), "num_outputs": 10, "task": "classification"}
TABLE = {"input_shape": (3,), "num_outputs": 1, "task": "regression"}


def write_images(root: Path, classes: dict[str, int], *, size: tuple[int, int], mode: str, seed: int) -> None:
    """``classes[name]`` random images of ``size`` (width, height) in ``root/name/``."""
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,)}[mode]
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(size[1], size[0], *channels), dtype=np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / name / f"img{i}.png")


# --------------------------------------------------------------------------- image folders


def test_image_folder_matches_torchvision_image_folder_with_resizing(tmp_path: Path) -> None:
    """RGB 40x36 images for a (3, 32, 32) model: converted and resized as torchvision's ImageFolder
    with PIL's bilinear resize does, labels numbered by sorted class names."""
    classes = {"cat": 2, "dog": 3, "emu": 1}
    write_images(tmp_path, classes, size=(40, 36), mode="RGB", seed=0)
    x, y = load_local_data(tmp_path, input_shape=(3, 32, 32), num_outputs=3, task="classification")

    def reference_loader(path: str) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))

    reference = ImageFolder(str(tmp_path), loader=reference_loader)
    assert reference.class_to_idx == {"cat": 0, "dog": 1, "emu": 2}
    expected_x = np.stack([pixels for pixels, _ in reference]).transpose(0, 3, 1, 2) / np.float32(255)
    assert x.dtype == torch.float32 and x.shape == (6, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(expected_x.astype(np.float32)))
    assert y.dtype == torch.int64 and y.tolist() == [label for _, label in reference]


def test_grey_image_folder_named_by_label_keeps_the_federation_numbering(tmp_path: Path) -> None:
    """A client holding only digits 3 and 7: folders named by label keep labels 3 and 7."""
    write_images(tmp_path, {"3": 2, "7": 1}, size=(28, 28), mode="L", seed=1)
    x, y = load_local_data(tmp_path, **MNIST_LIKE)
    files = sorted((tmp_path / "3").iterdir()) + sorted((tmp_path / "7").iterdir())
    expected = np.stack([np.asarray(Image.open(f)) for f in files])[:, None] / np.float32(255)
    assert torch.equal(x, torch.from_numpy(expected.astype(np.float32)))
    assert y.tolist() == [3, 3, 7]


def test_image_folder_with_named_classes_must_name_every_class(tmp_path: Path) -> None:
    write_images(tmp_path, {"cat": 1, "dog": 1}, size=(8, 8), mode="RGB", seed=2)
    with pytest.raises(DataError, match="2 class folder.*3 classes"):
        load_local_data(tmp_path, input_shape=(3, 8, 8), num_outputs=3, task="classification")


def test_image_folder_label_beyond_the_model_is_refused(tmp_path: Path) -> None:
    write_images(tmp_path, {"10": 1}, size=(28, 28), mode="L", seed=3)
    with pytest.raises(DataError, match=r"labels range over 10\.\.10.*0\.\.9") as caught:
        load_local_data(tmp_path, **MNIST_LIKE)
    assert str(tmp_path) in str(caught.value) and "image folder" in str(caught.value)


def test_image_folder_for_a_table_model_is_refused(tmp_path: Path) -> None:
    write_images(tmp_path, {"0": 1}, size=(8, 8), mode="L", seed=4)
    with pytest.raises(DataError, match=r"\.npz or \.csv"):
        load_local_data(tmp_path, **TABLE)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        load_local_data(tmp_path, **MNIST_LIKE)


# --------------------------------------------------------------------------- torchvision formats


def test_mnist_idx_directory_is_the_registry_training_split(tmp_path: Path) -> None:
    write_mnist(tmp_path, np.random.default_rng(5))
    x, y = load_local_data(tmp_path, **MNIST_LIKE)
    reference = load_dataset("mnist", data_dir=tmp_path)
    assert torch.equal(x, reference.train_x) and torch.equal(y, reference.train_y)


def test_cifar10_directory_is_the_registry_training_split(tmp_path: Path, monkeypatch) -> None:
    write_cifar(tmp_path, np.random.default_rng(6))
    pin_checksums_to(tmp_path / "cifar-10-batches-py", monkeypatch)
    x, y = load_local_data(tmp_path, input_shape=(3, 32, 32), num_outputs=10, task="classification")
    reference = load_dataset("cifar10", data_dir=tmp_path)
    assert torch.equal(x, reference.train_x) and torch.equal(y, reference.train_y)


def test_mnist_directory_for_a_cifar_model_says_what_was_read(tmp_path: Path) -> None:
    write_mnist(tmp_path, np.random.default_rng(7))
    with pytest.raises(DataError, match=r"shape \(7, 1, 28, 28\).*torchvision-format mnist"):
        load_local_data(tmp_path, input_shape=(3, 32, 32), num_outputs=10, task="classification")


# --------------------------------------------------------------------------- .npz


def test_npz_round_trips_through_save_shard_npz(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(8)
    x = torch.rand(5, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (5,), generator=generator)
    path = tmp_path / "shard.npz"
    save_shard_npz(path, x, y)
    loaded_x, loaded_y = load_local_data(path, **MNIST_LIKE)
    assert torch.equal(loaded_x, x) and torch.equal(loaded_y, y)
    with np.load(path, allow_pickle=False) as archive:  # numpy's own reader sees the same arrays
        assert np.array_equal(archive["x"], x.numpy()) and np.array_equal(archive["y"], y.numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["shard.npz"]  # no temporary file left


def test_npz_regression_targets_and_float64_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 1))
    np.savez(tmp_path / "table.npz", x=x, y=y)
    loaded_x, loaded_y = load_local_data(tmp_path / "table.npz", **TABLE)
    assert torch.equal(loaded_x, torch.from_numpy(x.astype(np.float32)))
    assert torch.equal(loaded_y, torch.from_numpy(y[:, 0].astype(np.float32)))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((3, 1, 28, 28)), np.array([0, 1]), "3 inputs but labels of shape"),
        (np.zeros((3, 28, 28)), np.array([0, 1, 2]), r"shape \(3, 28, 28\).*\(n, 1, 28, 28\)"),
        (np.full((1, 1, 28, 28), 255, dtype=np.uint8), np.array([0]), "divide 8-bit pixels by 255"),
        (np.zeros((2, 1, 28, 28)), np.array([0.0, 1.5]), "whole numbers"),
        (np.zeros((2, 1, 28, 28)), np.array([0, -1]), r"-1\.\.0"),
        (np.full((1, 1, 28, 28), np.nan), np.array([0]), "NaN"),
        (np.zeros((0, 1, 28, 28)), np.zeros(0, dtype=np.int64), "no examples"),
    ],
)
def test_npz_that_does_not_fit_the_model_is_refused(tmp_path: Path, x, y, match: str) -> None:
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(DataError, match=match) as caught:
        load_local_data(tmp_path / "bad.npz", **MNIST_LIKE)
    assert "bad.npz" in str(caught.value) and ".npz file with arrays x and y" in str(caught.value)


def test_npz_without_y_and_npz_with_objects(tmp_path: Path) -> None:
    np.savez(tmp_path / "only_x.npz", x=np.zeros((1, 3)))
    with pytest.raises(DataError, match="not y"):
        load_local_data(tmp_path / "only_x.npz", **TABLE)
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="not a readable .npz"):  # never unpickled
        load_local_data(tmp_path / "objects.npz", **TABLE)


# --------------------------------------------------------------------------- .csv


def write_csv(path: Path, rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows(rows)


@pytest.mark.parametrize("label_column", ["label", "Target", None])
def test_csv_label_column_by_name_or_last(tmp_path: Path, label_column: str | None) -> None:
    rng = np.random.default_rng(10)
    table = rng.normal(size=(6, 4)).round(6)
    position = 1 if label_column else 3
    header = ["a", "b", "c", "d"]
    if label_column:
        header[position] = label_column
    write_csv(tmp_path / "data.csv", [header, *table.tolist()])
    x, y = load_local_data(tmp_path / "data.csv", **TABLE)
    reference = np.loadtxt(tmp_path / "data.csv", delimiter=",", skiprows=1)
    assert torch.equal(x, torch.from_numpy(np.delete(reference, position, axis=1).astype(np.float32)))
    assert torch.equal(y, torch.from_numpy(reference[:, position].astype(np.float32)))


def test_csv_classification_labels(tmp_path: Path) -> None:
    write_csv(tmp_path / "d.csv", [["f1", "f2", "label"], [0.5, 1, 2], [0.25, 0, 0]])
    x, y = load_local_data(tmp_path / "d.csv", input_shape=(2,), num_outputs=3, task="classification")
    assert x.tolist() == [[0.5, 1.0], [0.25, 0.0]] and y.tolist() == [2, 0] and y.dtype == torch.int64


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([["a", "b", "label"], [1, 2, 3]], "2 feature column"),
        ([["a", "b", "c", "label"], [1, "x", 2, 3]], "line 2 holds a value that is not a number"),
        ([["a", "b", "c", "label"], [1, 2, 3]], "line 2 has 3 columns"),
        ([["a", "b", "c", "label"]], "no data rows"),
    ],
)
def test_csv_problems_name_the_line_or_the_columns(tmp_path: Path, rows, match: str) -> None:
    write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=match):
        load_local_data(tmp_path / "d.csv", **TABLE)


def test_missing_path_and_unknown_suffix_list_the_formats(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*image folder.*npz.*csv"):
        load_local_data(tmp_path / "nowhere", **TABLE)
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="neither a folder, a .npz nor a .csv"):
        load_local_data(tmp_path / "data.parquet", **TABLE)
