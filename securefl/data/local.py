"""A client's own data, read from a path on its own machine (the server never sends data).

:func:`load_local_data` reads one of four formats, chosen by what ``path`` is:

- **an image folder**: one sub-folder per class holding image files (PNG, JPEG, BMP, GIF, TIFF,
  WebP), as torchvision's ``ImageFolder`` lays them out.  Sub-folders named ``0``, ``1``, ... give
  their label by name, so a client holding only some classes keeps the federation's numbering;
  other names are sorted and numbered ``0..K-1`` and must then name every one of the model's
  ``K`` classes (an empty folder for a class the client has no image of), or the labels would
  shift.  Images are converted to the model's channels (grey or RGB) and resized to its height
  and width (bilinear), as float32 in ``[0, 1]``;
- **a torchvision-format directory**: ``MNIST/raw/*-ubyte`` (IDX) or ``cifar-10-batches-py/``,
  read by :func:`securefl.data.load_dataset`'s own readers (CIFAR-10's pickles are opened only
  once their MD5 matches the official release); the training split is the client's data;
- **a ``.npz`` file** with arrays ``x`` (``(n, *input_shape)``) and ``y`` (``(n,)``), opened with
  ``allow_pickle=False``;
- **a ``.csv`` table** with a header row: numeric feature columns and the label in the column
  named ``label`` or ``target``, else the last column.

Whatever the format, the result is checked against the federation's model: input shape,
finite float32 inputs (images in ``[0, 1]``, the registry's convention), int64 labels in
``0..num_outputs-1`` (classification) or finite float32 targets (regression), at least one
example.  Every problem is a :class:`~securefl.errors.DataError` naming the path and the format
that was expected.

:func:`save_shard_npz` writes a shard in the ``.npz`` format atomically (``securefl demo network``
gives each client its shard this way).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from securefl.atomic import write_atomically
from securefl.data.datasets import Task, load_dataset
from securefl.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
LABEL_COLUMNS = ("label", "target")
"""The label column of a CSV table, by name (the last column when neither is there)."""

_TORCHVISION_FOLDERS = {"mnist": Path("MNIST") / "raw", "cifar10": Path("cifar-10-batches-py")}

FORMATS = (
    "an image folder (one sub-folder per class), a torchvision-format directory (MNIST/raw or "
    "cifar-10-batches-py), a .npz file with arrays x and y, or a .csv table with a header row"
)


def load_local_data(
    path: Path, *, input_shape: Sequence[int], num_outputs: int, task: Task
) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples at ``path`` as ``(x, y)`` for a model taking ``input_shape`` and giving
    ``num_outputs`` outputs: ``x`` float32 ``(n, *input_shape)``, ``y`` int64 ``(n,)`` labels
    (classification) or float32 ``(n,)`` targets (regression)."""
    path = Path(path).expanduser()
    shape = tuple(int(d) for d in input_shape)
    if not path.exists():
        raise DataError(f"data path {path} does not exist: give {FORMATS}")
    x: np.ndarray | torch.Tensor
    y: np.ndarray | torch.Tensor
    if path.is_dir():
        dataset = _torchvision_dataset(path)
        if dataset is not None:
            x, y = _read_torchvision(path, dataset)
            expected = f"a torchvision-format {dataset} directory"
        else:
            x, y = _read_image_folder(path, shape=shape, num_outputs=num_outputs, task=task)
            expected = "an image folder (one sub-folder per class)"
    elif path.suffix.lower() == ".npz":
        x, y = _read_npz(path)
        expected = "a .npz file with arrays x and y"
    elif path.suffix.lower() == ".csv":
        x, y = _read_csv(path, shape=shape)
        expected = "a .csv table with a header row and a label column"
    else:
        raise DataError(f"data path {path} is neither a folder, a .npz nor a .csv file: give {FORMATS}")
    return _checked(x, y, path=path, expected=expected, shape=shape, num_outputs=num_outputs, task=task)


def save_shard_npz(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    """Write ``(x, y)`` to ``path`` as :func:`load_local_data` reads a ``.npz`` (atomically)."""
    buffer = io.BytesIO()
    np.savez(buffer, x=x.detach().cpu().numpy(), y=y.detach().cpu().numpy())
    write_atomically(Path(path), buffer.getvalue())


# --------------------------------------------------------------------------- formats


def _torchvision_dataset(path: Path) -> str | None:
    """The registered data set whose torchvision layout ``path`` holds, if any."""
    for name, folder in _TORCHVISION_FOLDERS.items():
        if (path / folder).is_dir():
            return name
    return None


def _read_torchvision(path: Path, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset(dataset, data_dir=path)
    return data.train_x, data.train_y


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in ("x", "y") if name not in archive.files]
            if missing:
                raise DataError(
                    f"{path} has arrays {sorted(archive.files)}, not {' and '.join(missing)}: a .npz of "
                    "client data holds x (the inputs) and y (the labels or targets)"
                )
            return archive["x"], archive["y"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as error:
        # allow_pickle=False refuses object arrays with a ValueError: no pickle is ever loaded
        raise DataError(f"{path} is not a readable .npz of numeric arrays x and y: {error}") from None


def _read_csv(path: Path, *, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            rows = [row for row in csv.reader(stream) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read {path} as a .csv table: {error}") from None
    if len(rows) < 2:
        raise DataError(
            f"{path} has no data rows: a .csv of client data has a header row, then one row per example"
        )
    header = [name.strip() for name in rows[0]]
    names = [name.lower() for name in header]
    label = next((names.index(n) for n in LABEL_COLUMNS if n in names), len(header) - 1)
    features = math.prod(shape)
    if len(header) - 1 != features:
        raise DataError(
            f"{path} has {len(header) - 1} feature column(s) beside the label column {header[label]!r}, "
            f"the model takes {features} (input shape {shape}): a .csv of client data has one column "
            f"per feature and a label column named {' or '.join(LABEL_COLUMNS)} (else the last)"
        )
    table = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path} line {line} has {len(row)} columns, the header {len(header)}")
        try:
            table[line - 2] = [float(cell) for cell in row]
        except ValueError:
            raise DataError(
                f"{path} line {line} holds a value that is not a number: every column of a .csv of "
                "client data is numeric (the header row aside)"
            ) from None
    x = np.delete(table, label, axis=1).reshape(-1, *shape)
    return x, table[:, label]


def _read_image_folder(
    path: Path, *, shape: tuple[int, ...], num_outputs: int, task: Task
) -> tuple[np.ndarray, np.ndarray]:
    expected = "an image folder (one sub-folder per class)"
    if task != "classification" or len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(
            f"{path} is a folder, but the federation's model takes input shape {shape} for "
            f"{task}: {expected} is for classifiers of grey (1, H, W) or RGB (3, H, W) images; "
            "give a .npz or .csv file"
        )
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{path} has no sub-folders: expected {FORMATS}")
    if all(name.isdigit() for name in classes):
        labels = {name: int(name) for name in classes}
    elif len(classes) == num_outputs:
        labels = {name: index for index, name in enumerate(classes)}
    else:
        raise DataError(
            f"{path} has {len(classes)} class folder(s), the model {num_outputs} classes: name the "
            f"folders by label (0..{num_outputs - 1}), or give one folder per class (an empty one for "
            "a class without images) so that their sorted names number the classes"
        )
    channels, height, width = shape
    images, targets = [], []
    for name in classes:
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                images.append(_read_image(file, mode="L" if channels == 1 else "RGB", size=(width, height)))
                targets.append(labels[name])
    if not images:
        raise DataError(
            f"{path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders"
        )
    pixels = np.stack(images).astype(np.float32) / np.float32(255)
    pixels = pixels[:, None, :, :] if channels == 1 else pixels.transpose(0, 3, 1, 2)  # HWC -> CHW
    return np.ascontiguousarray(pixels), np.asarray(targets, dtype=np.int64)


def _read_image(file: Path, *, mode: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            converted = image.convert(mode)
            if converted.size != size:
                converted = converted.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(converted, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise DataError(f"{file} is not a readable image: {error}") from None


# --------------------------------------------------------------------------- checks


def _checked(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    path: Path,
    expected: str,
    shape: tuple[int, ...],
    num_outputs: int,
    task: Task,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` as the model's tensors, or a :class:`DataError` naming ``path`` and the format."""

    def refuse(problem: str) -> DataError:
        return DataError(f"{path}: {problem} (read as {expected})")

    xs = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    ys = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if xs.dtype.kind not in "fiu" or ys.dtype.kind not in "fiu":
        raise refuse(f"inputs of dtype {xs.dtype} and labels of dtype {ys.dtype} are not numbers")
    if xs.ndim == 0 or tuple(xs.shape[1:]) != shape:
        raise refuse(
            f"inputs have shape {tuple(xs.shape)}, the model takes (n, {', '.join(map(str, shape))})"
        )
    if ys.ndim == 2 and ys.shape[1] == 1:
        ys = ys[:, 0]
    if ys.shape != (len(xs),):
        raise refuse(f"{len(xs)} inputs but labels of shape {tuple(ys.shape)}: give one label per input")
    if len(xs) == 0:
        raise refuse("no examples: a client needs at least one")
    inputs = xs.astype(np.float32)
    if not np.isfinite(inputs).all():
        raise refuse("inputs hold NaN or infinite values")
    if len(shape) == 3 and (inputs.min() < 0 or inputs.max() > 1):
        raise refuse(
            f"image inputs range over [{inputs.min():g}, {inputs.max():g}], the models take [0, 1]: "
            "divide 8-bit pixels by 255"
        )
    if task == "classification":
        if ys.dtype.kind == "f" and not (np.isfinite(ys).all() and np.array_equal(ys, np.round(ys))):
            raise refuse("classification labels must be whole numbers")
        if ys.min() < 0 or ys.max() >= num_outputs:
            raise refuse(
                f"labels range over {ys.min()}..{ys.max()}, the model has classes 0..{num_outputs - 1}"
            )
        targets = torch.from_numpy(ys.astype(np.int64))
    else:
        targets = torch.from_numpy(ys.astype(np.float32))
        if not torch.isfinite(targets).all():
            raise refuse("regression targets hold NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(inputs)), targets


__all__ = ["FORMATS", "IMAGE_SUFFIXES", "LABEL_COLUMNS", "load_local_data", "save_shard_npz"]
