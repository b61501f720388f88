"""mnist and cifar10 loaded through torchvision from files written in the real on-disk formats.

The files are written here from the format specifications (LeCun's IDX description; the CIFAR-10
page's "python version" layout: a pickled dict whose ``data`` row holds 1024 red, then 1024 green,
then 1024 blue values, each plane row-major), then read back through ``load_dataset`` — the same
code path a user hits — and compared pixel by pixel with what was written.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10

from securefl.data import load_dataset
from securefl.errors import DataError

# --------------------------------------------------------------------------- MNIST (IDX)

IDX_UBYTE = 0x08


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: two zero bytes, the type code (0x08 = unsigned byte), the number of dimensions, then
    each dimension as a big-endian 32-bit integer, then the data in row-major order."""
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes(order="C"))


def write_mnist(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for prefix, count in (("train", 7), ("t10k", 3)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[f"{prefix}_images"], written[f"{prefix}_labels"] = images, labels
    return written


def test_mnist_idx_files_load_pixel_for_pixel(tmp_path: Path) -> None:
    written = write_mnist(tmp_path, np.random.default_rng(1))
    data = load_dataset("mnist", data_dir=tmp_path)
    for split_x, split_y, prefix in (
        (data.train_x, data.train_y, "train"),
        (data.test_x, data.test_y, "t10k"),
    ):
        images, labels = written[f"{prefix}_images"], written[f"{prefix}_labels"]
        assert split_x.shape == (len(images), 1, 28, 28) and split_x.dtype == torch.float32
        assert torch.equal(split_x[:, 0], torch.from_numpy(images.astype(np.float32) / 255))
        assert torch.equal((split_x * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(images))
        assert split_y.dtype == torch.int64
        assert split_y.tolist() == labels.tolist()


def test_mnist_missing_files_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_dataset("mnist", data_dir=tmp_path / "empty")
    message = str(caught.value)
    assert "`data_dir`" in message and "`download`" in message
    assert "train-images-idx3-ubyte" in message


def test_mnist_without_data_dir_names_the_parameter() -> None:
    with pytest.raises(DataError, match="`data_dir`"):
        load_dataset("mnist")


def test_mnist_truncated_file_is_a_data_error(tmp_path: Path) -> None:
    write_mnist(tmp_path, np.random.default_rng(2))
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="not valid IDX"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_label_out_of_range_is_a_data_error(tmp_path: Path) -> None:
    write_mnist(tmp_path, np.random.default_rng(3))
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.array([1, 12, 3]))
    with pytest.raises(DataError, match="outside 0..9"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_failed_download_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.mnist as tv_mnist

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network on this machine")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="download into .* failed") as caught:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert "no network on this machine" in str(caught.value) and "`data_dir`" in str(caught.value)


# --------------------------------------------------------------------------- CIFAR-10 (python)

CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_META = "batches.meta"


def write_cifar(root: Path, rng: np.random.Generator, per_batch: int = 2) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in CIFAR_NAMES:
        count = per_batch + (1 if name == "test_batch" else 0)
        rows = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count).tolist()
        batch = {
            "batch_label": f"tiny {name}",
            "labels": labels,
            "data": rows,
            "filenames": [f"img_{i}.png" for i in range(count)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (rows, labels)
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}
    (folder / CIFAR_META).write_bytes(pickle.dumps(meta, protocol=2))
    return written


def pin_checksums_to(folder: Path, monkeypatch: pytest.MonkeyPatch, *, meta: bool = True) -> None:
    """Make torchvision's table of official MD5s describe our tiny files (test fixture only).

    The loader is untouched: it still refuses any file whose MD5 differs from the table, exactly as
    it refuses a corrupted download of the real data set (see the tests below).
    """

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(n)] for n in CIFAR_NAMES[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    if meta:
        monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(CIFAR_META)})


def expected_images(rows: np.ndarray) -> np.ndarray:
    """Pixel (c, h, w) of an image is entry c * 1024 + h * 32 + w of its row (CIFAR-10 page)."""
    images = np.zeros((len(rows), 3, 32, 32), dtype=np.uint8)
    for n in range(len(rows)):
        for c in range(3):
            for h in range(32):
                for w in range(32):
                    images[n, c, h, w] = rows[n, c * 1024 + h * 32 + w]
    return images


def test_cifar10_python_batches_load_pixel_for_pixel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar(tmp_path, np.random.default_rng(4))
    pin_checksums_to(tmp_path / "cifar-10-batches-py", monkeypatch)
    data = load_dataset("cifar10", data_dir=tmp_path)

    train_rows = np.concatenate([written[name][0] for name in CIFAR_NAMES[:5]])
    train_labels = sum((written[name][1] for name in CIFAR_NAMES[:5]), [])
    test_rows, test_labels = written["test_batch"]
    for split_x, split_y, rows, labels in (
        (data.train_x, data.train_y, train_rows, train_labels),
        (data.test_x, data.test_y, test_rows, test_labels),
    ):
        reference = expected_images(rows)
        assert split_x.shape == reference.shape and split_x.dtype == torch.float32
        assert split_x.is_contiguous()
        assert torch.equal(split_x, torch.from_numpy(reference.astype(np.float32) / 255))
        assert split_y.dtype == torch.int64 and split_y.tolist() == labels
    assert data.input_shape == (3, 32, 32) and data.num_outputs == 10


def test_cifar10_files_not_matching_official_checksums_are_refused(tmp_path: Path) -> None:
    write_cifar(tmp_path, np.random.default_rng(5))
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(caught.value)
    assert "MD5" in message and "official release" in message and "`download`" in message


def test_cifar10_meta_file_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path, np.random.default_rng(6))
    pin_checksums_to(tmp_path / "cifar-10-batches-py", monkeypatch, meta=False)
    with pytest.raises(DataError, match="official release"):
        load_dataset("cifar10", data_dir=tmp_path)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_cifar10_foreign_pickle_is_never_unpickled(tmp_path: Path) -> None:
    write_cifar(tmp_path, np.random.default_rng(7))
    marker = tmp_path / "code-ran"
    payload = {"data": _RunsCodeWhenUnpickled(marker), "labels": [0]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match="MD5"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_cifar10_missing_meta_lists_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, np.random.default_rng(8))
    (tmp_path / "cifar-10-batches-py" / CIFAR_META).unlink()
    with pytest.raises(DataError, match="batches.meta") as caught:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "`data_dir`" in str(caught.value)


def test_cifar10_empty_dir_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(caught.value)
    assert "`data_dir`" in message and "`download`" in message and "data_batch_1" in message
