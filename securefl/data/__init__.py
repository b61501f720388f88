"""Data sets and how they are dealt out to clients.

``load_dataset(name)`` returns a :class:`Dataset` of train/test tensors from the registry
:data:`DATASETS`; ``partition(targets, scheme=..., num_clients=...)`` splits the training indices
among clients (``iid``, ``dirichlet``, ``shards``). See :mod:`securefl.data.datasets` and
:mod:`securefl.data.partition` for the sources and papers.
"""

from securefl.data.datasets import (
    DATASETS,
    DEFAULT_DATASET,
    Dataset,
    DatasetInfo,
    TrainingDefaults,
    load_dataset,
)
from securefl.data.partition import (
    PARTITIONS,
    partition,
    partition_stats,
    plot_label_histograms,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "PARTITIONS",
    "Dataset",
    "DatasetInfo",
    "TrainingDefaults",
    "load_dataset",
    "partition",
    "partition_stats",
    "plot_label_histograms",
]
