"""Partitioners: how a data set's training indices are dealt out to the federated clients.

- ``iid``: a seeded shuffle cut into near-equal parts (sizes differ by at most one).
- ``dirichlet``: label skew after Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification" (2019), in the per-class form popularised by
  Yurochkin et al. (2019) and Li et al.'s NIID-Bench (2021): for every class, draw client
  proportions ``p ~ Dirichlet(alpha * 1)`` and cut that class's shuffled indices at
  ``cumsum(p) * count``. Small ``alpha`` concentrates each class on few clients; large ``alpha``
  tends to IID. Draws that leave a client empty are rejected (up to :data:`MAX_DIRICHLET_DRAWS`
  times); if every draw does, single samples are moved from the largest clients to the empty ones.
- ``shards``: the pathological non-IID split of McMahan et al., "Communication-Efficient Learning
  of Deep Networks from Decentralized Data" (AISTATS 2017): sort by label, cut into
  ``2 * num_clients`` near-equal shards, deal two random shards to every client.

Every partition is a list of sorted ``int64`` index tensors that are disjoint, cover all indices,
leave no client empty and depend only on ``seed`` (a ``numpy.random.Generator`` is built from it).

Regression targets (floating point) are mapped to :data:`REGRESSION_BINS` quantile bins wherever a
"label" is needed (``dirichlet`` skew, the statistics and the plot); ``shards`` sorts them by value.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from securefl.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "shards")
REGRESSION_BINS = 10
MAX_DIRICHLET_DRAWS = 100


def partition(
    targets: torch.Tensor,
    *,
    scheme: str,
    num_clients: int,
    alpha: float = 0.5,
    seed: int = 0,
    num_classes: int | None = None,
) -> list[torch.Tensor]:
    """Split the indices ``0 .. len(targets) - 1`` among ``num_clients`` clients.

    ``targets`` are class labels (integers in ``0 .. num_classes - 1``; ``num_classes`` defaults to
    ``max + 1``) or regression values (floats). ``alpha`` is used by ``dirichlet`` only.
    Returns one sorted ``int64`` index tensor per client.

    Raises :class:`~securefl.errors.ConfigError` for an unknown scheme, fewer than one client, more
    clients than samples (or than half the samples for ``shards``), or ``alpha <= 0``.
    """
    if scheme not in PARTITIONS:
        raise ConfigError(f"unknown partition {scheme!r}: set `partition` to one of {', '.join(PARTITIONS)}")
    values = _as_numpy(targets)
    labels, label_count = _labels(values, num_classes)
    num_samples = len(labels)
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise ConfigError(f"number of clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise ConfigError(f"clients {num_clients} < 1: use `clients` 1 or more")
    if num_clients > num_samples:
        raise ConfigError(
            f"clients {num_clients} > samples {num_samples}: every client needs at least one "
            f"sample, lower `clients`"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(num_samples), num_clients)
    elif scheme == "dirichlet":
        parts = _dirichlet(
            labels, label_count, num_clients=num_clients, alpha=_positive_alpha(alpha), rng=rng
        )
    else:
        sort_key = values if np.issubdtype(values.dtype, np.floating) else labels
        parts = _shards(sort_key, num_clients=num_clients, rng=rng)
    return [torch.from_numpy(np.sort(part).astype(np.int64)) for part in parts]


def _positive_alpha(alpha: float) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(alpha, bool) or not np.isfinite(value) or value <= 0:
        raise ConfigError(f"alpha {alpha!r} must be a positive number: use a positive `alpha`")
    return value


def _dirichlet(
    labels: np.ndarray,
    label_count: int,
    *,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    members = [rng.permutation(np.flatnonzero(labels == label)) for label in range(label_count)]
    members = [indices for indices in members if len(indices)]
    for _ in range(MAX_DIRICHLET_DRAWS):
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for indices in members:
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(indices)).astype(np.int64)
            for client, chunk in enumerate(np.split(indices, cuts)):
                chunks[client].append(chunk)
        parts = [np.concatenate(pieces) for pieces in chunks]
        if all(len(part) for part in parts):
            return parts
    return _fill_empty_clients(parts)


def _fill_empty_clients(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Move one sample at a time from the largest client to each empty one.

    With at least as many samples as clients, an empty client implies a client holding two or
    more, so this always terminates with every client non-empty.
    """
    parts = list(parts)
    for client in range(len(parts)):
        if len(parts[client]) == 0:
            donor = max(range(len(parts)), key=lambda other: len(parts[other]))
            parts[client] = parts[donor][-1:]
            parts[donor] = parts[donor][:-1]
    return parts


def _shards(sort_key: np.ndarray, *, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    num_shards = 2 * num_clients
    if num_shards > len(sort_key):
        raise ConfigError(
            f"shards partition needs 2 shards per client: {num_clients} clients need at least "
            f"{num_shards} samples, have {len(sort_key)}; lower `clients` or use `partition` iid"
        )
    order = np.argsort(sort_key, kind="stable")
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, 2)
    return [np.concatenate([shards[first], shards[second]]) for first, second in dealt]


# --------------------------------------------------------------------------- statistics and plot


def partition_stats(
    parts: Sequence[torch.Tensor], targets: torch.Tensor, *, num_classes: int | None = None
) -> list[dict]:
    """Per client: ``{"client": i, "n": samples, "label_counts": [count of label 0, 1, ...]}``.

    For regression targets the counts are over :data:`REGRESSION_BINS` quantile bins of the
    targets (``num_classes`` is then ignored).
    """
    labels, label_count = _labels(_as_numpy(targets), num_classes)
    stats = []
    for client, part in enumerate(parts):
        indices = _as_numpy(part)
        if indices.size and (indices.min() < 0 or indices.max() >= len(labels)):
            raise ConfigError(f"client {client} holds indices outside 0..{len(labels) - 1}")
        counts = np.bincount(labels[indices.astype(np.int64)], minlength=label_count)
        stats.append({"client": client, "n": int(indices.size), "label_counts": counts.tolist()})
    return stats


def plot_label_histograms(
    parts: Sequence[torch.Tensor],
    targets: torch.Tensor,
    *,
    num_classes: int | None = None,
    path: Path,
) -> None:
    """Write a PNG with one stacked bar per client: how many samples of each label it holds.

    Uses matplotlib's Agg canvas directly (no pyplot state, no display needed) and writes the file
    atomically (a temporary file in the same directory, then a rename).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    regression = np.issubdtype(_as_numpy(targets).dtype, np.floating)
    stats = partition_stats(parts, targets, num_classes=num_classes)
    counts = np.array([row["label_counts"] for row in stats]).reshape(len(stats), -1)
    num_clients, label_count = counts.shape
    figure = Figure(figsize=(min(4 + 0.35 * num_clients, 24), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = _label_colours(label_count)
    clients = np.arange(num_clients)
    bottom = np.zeros(num_clients)
    for label in range(label_count):
        axes.bar(
            clients,
            counts[:, label],
            bottom=bottom,
            color=colours[label],
            label=str(label),
            width=0.8,
        )
        bottom += counts[:, label]
    axes.set_xlabel("client")
    axes.set_ylabel("samples")
    axes.set_title("samples per client, by " + ("target quantile bin" if regression else "label"))
    if num_clients <= 40:
        axes.set_xticks(clients)
    axes.legend(title="bin" if regression else "label", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            figure.savefig(handle, format="png", dpi=100)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _label_colours(count: int) -> list:
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


# --------------------------------------------------------------------------- helpers


def _as_numpy(values: torch.Tensor | np.ndarray | Sequence) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _labels(values: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, int]:
    """Integer labels in ``0 .. count - 1`` and ``count``; floats become quantile bins."""
    if values.ndim != 1 or values.size == 0:
        raise ConfigError(f"targets must be a non-empty 1-D tensor, got shape {values.shape}")
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise ConfigError("regression targets contain NaN or infinity: clean the data first")
        edges = np.quantile(values, np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1])
        return np.searchsorted(edges, values, side="right").astype(np.int64), REGRESSION_BINS
    if not (np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_):
        raise ConfigError(f"targets must be integer labels or float values, got {values.dtype}")
    labels = values.astype(np.int64)
    if labels.min() < 0:
        raise ConfigError(f"labels must be >= 0, found {labels.min()}")
    count = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.max() >= count:
        raise ConfigError(f"label {labels.max()} >= num_classes {count}: pass the right num_classes")
    return labels, count
