"""Partitioners: structural properties (hypothesis), label skew, the shards recipe, statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from securefl.data import PARTITIONS, partition, partition_stats, plot_label_histograms
from securefl.errors import ConfigError


@st.composite
def partition_problems(draw: st.DrawFn) -> dict:
    regression = draw(st.booleans())
    size = draw(st.integers(min_value=2, max_value=300))
    if regression:
        values = draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=size, max_size=size))
        targets = torch.tensor(values, dtype=torch.float32)
    else:
        classes = draw(st.integers(min_value=1, max_value=12))
        values = draw(st.lists(st.integers(0, classes - 1), min_size=size, max_size=size))
        targets = torch.tensor(values, dtype=torch.int64)
    scheme = draw(st.sampled_from(PARTITIONS))
    most_clients = size // 2 if scheme == "shards" else size
    return {
        "targets": targets,
        "scheme": scheme,
        "num_clients": draw(st.integers(min_value=1, max_value=min(most_clients, 40))),
        "alpha": draw(st.floats(min_value=1e-3, max_value=1e3)),
        "seed": draw(st.integers(min_value=0, max_value=2**32 - 1)),
    }


@settings(max_examples=150, deadline=None)
@given(partition_problems())
def test_every_partition_is_disjoint_complete_non_empty_and_seeded(problem: dict) -> None:
    parts = partition(**problem)
    assert len(parts) == problem["num_clients"]
    everything = torch.cat(parts)
    assert everything.dtype == torch.int64
    assert sorted(everything.tolist()) == list(range(len(problem["targets"])))  # disjoint + cover
    assert all(len(part) > 0 for part in parts)
    assert all(torch.equal(part, part.sort().values) for part in parts)
    again = partition(**problem)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=500),
    clients=st.integers(min_value=1, max_value=50),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_iid_sizes_differ_by_at_most_one(size: int, clients: int, seed: int) -> None:
    if clients > size:
        with pytest.raises(ConfigError, match="lower `clients`"):
            partition(torch.zeros(size, dtype=torch.int64), scheme="iid", num_clients=clients)
        return
    parts = partition(torch.zeros(size, dtype=torch.int64), scheme="iid", num_clients=clients, seed=seed)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == size


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_the_seed_changes_the_partition(scheme: str) -> None:
    targets = torch.arange(200) % 10
    first = partition(targets, scheme=scheme, num_clients=5, seed=0)
    second = partition(targets, scheme=scheme, num_clients=5, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(first, second, strict=True))


def label_skew(parts: list[torch.Tensor], labels: np.ndarray, num_classes: int) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    distances = []
    for part in parts:
        mix = np.bincount(labels[part.numpy()], minlength=num_classes) / len(part)
        distances.append(0.5 * np.abs(mix - overall).sum())
    return float(np.mean(distances))


def test_dirichlet_skew_decreases_as_alpha_grows() -> None:
    labels = np.repeat(np.arange(10), 100)
    targets = torch.from_numpy(labels)
    for seed in range(5):
        skews = [
            label_skew(
                partition(targets, scheme="dirichlet", num_clients=10, alpha=alpha, seed=seed),
                labels,
                10,
            )
            for alpha in (0.05, 0.5, 5.0, 100.0)
        ]
        assert skews == sorted(skews, reverse=True) and len(set(skews)) == 4, skews
        assert skews[0] > 0.5 and skews[-1] < 0.1
        iid = label_skew(partition(targets, scheme="iid", num_clients=10, seed=seed), labels, 10)
        assert iid < skews[1] / 2  # multinomial noise only: far below alpha = 0.5


def test_dirichlet_class_shares_follow_the_dirichlet_law() -> None:
    """One class, two clients: client 0's share of the class is Beta(alpha, alpha) distributed."""
    alpha, count = 0.5, 2000
    targets = torch.zeros(count, dtype=torch.int64)
    shares = [
        len(partition(targets, scheme="dirichlet", num_clients=2, alpha=alpha, seed=seed)[0]) / count
        for seed in range(300)
    ]
    result = scipy_stats.kstest(shares, scipy_stats.beta(alpha, alpha).cdf)
    assert result.pvalue > 1e-3, result


def test_dirichlet_fills_empty_clients_at_tiny_alpha() -> None:
    targets = torch.arange(60) % 3  # 3 classes, 20 clients: most draws leave clients empty
    parts = partition(targets, scheme="dirichlet", num_clients=20, alpha=1e-3, seed=0)
    assert all(len(part) > 0 for part in parts)
    assert sorted(torch.cat(parts).tolist()) == list(range(60))


def test_dirichlet_on_regression_targets_skews_quantile_bins() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=1000).astype(np.float32)
    parts = partition(torch.from_numpy(values), scheme="dirichlet", num_clients=10, alpha=0.05)
    bins = np.searchsorted(np.quantile(values, np.linspace(0.1, 0.9, 9)), values, side="right")
    assert label_skew(parts, bins, 10) > 0.5


@pytest.mark.parametrize(("clients", "per_shard"), [(1, 5), (5, 30), (20, 3)])
def test_shards_deal_two_single_label_shards_per_client(clients: int, per_shard: int) -> None:
    # 2 * clients labels, each exactly one shard long, scattered: sorting must rebuild the shards.
    labels = np.repeat(np.arange(2 * clients), per_shard)
    labels = np.random.default_rng(clients).permutation(labels)
    parts = partition(torch.from_numpy(labels), scheme="shards", num_clients=clients, seed=3)
    seen = []
    for part in parts:
        held = labels[part.numpy()]
        assert len(part) == 2 * per_shard
        assert sorted(np.unique(held).tolist()) == sorted(set(held.tolist()))
        assert len(set(held.tolist())) == 2 and np.bincount(held).max() == per_shard
        seen += sorted(set(held.tolist()))
    assert sorted(seen) == list(range(2 * clients))  # every shard dealt exactly once


def test_shards_with_uneven_sizes_stay_near_equal() -> None:
    parts = partition(torch.arange(103) % 7, scheme="shards", num_clients=10)
    sizes = [len(part) for part in parts]
    assert sum(sizes) == 103 and min(sizes) >= 2 * (103 // 20) and max(sizes) <= 2 * (103 // 20 + 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "random", "num_clients": 2}, "set `partition` to one of iid, dirichlet, shards"),
        ({"scheme": "iid", "num_clients": 0}, "clients 0 < 1"),
        ({"scheme": "iid", "num_clients": 11}, "clients 11 > samples 10"),
        ({"scheme": "iid", "num_clients": 2.5}, "integer"),
        ({"scheme": "dirichlet", "num_clients": 2, "alpha": 0.0}, "`alpha`"),
        ({"scheme": "dirichlet", "num_clients": 2, "alpha": -1.0}, "`alpha`"),
        ({"scheme": "dirichlet", "num_clients": 2, "alpha": float("nan")}, "`alpha`"),
        ({"scheme": "dirichlet", "num_clients": 2, "alpha": float("inf")}, "`alpha`"),
        ({"scheme": "shards", "num_clients": 6}, "at least 12 samples, have 10"),
        ({"scheme": "iid", "num_clients": 2, "num_classes": 5}, "num_classes 5"),
    ],
)
def test_bad_input_is_a_config_error_saying_what_to_do(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        partition(torch.arange(10), **kwargs)


@pytest.mark.parametrize(
    "targets",
    [
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(4, 2, dtype=torch.int64),
        torch.tensor([0, -1, 2]),
        torch.tensor([0.5, float("nan"), 1.0]),
    ],
)
def test_bad_targets_are_config_errors(targets: torch.Tensor) -> None:
    with pytest.raises(ConfigError):
        partition(targets, scheme="iid", num_clients=1)


def test_partition_stats_match_a_brute_force_count() -> None:
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 0, 1])
    parts = partition(labels, scheme="dirichlet", num_clients=3, alpha=0.3, seed=4)
    rows = partition_stats(parts, labels, num_classes=5)
    for client, (row, part) in enumerate(zip(rows, parts, strict=True)):
        expected = [0] * 5
        for index in part.tolist():
            expected[labels[index].item()] += 1
        assert row == {"client": client, "n": len(part), "label_counts": expected}


def test_partition_stats_bin_regression_targets() -> None:
    values = torch.linspace(0, 1, 100)
    rows = partition_stats([torch.arange(0, 50), torch.arange(50, 100)], values, num_classes=1)
    assert rows[0]["label_counts"] == [10] * 5 + [0] * 5
    assert rows[1]["label_counts"] == [0] * 5 + [10] * 5


def test_partition_stats_refuse_foreign_indices() -> None:
    with pytest.raises(ConfigError, match="outside"):
        partition_stats([torch.tensor([0, 7])], torch.arange(5), num_classes=5)


def test_label_histogram_is_written_atomically_as_png(tmp_path: Path) -> None:
    from matplotlib.image import imread

    labels = torch.arange(300) % 10
    parts = partition(labels, scheme="dirichlet", num_clients=8, alpha=0.5)
    path = tmp_path / "label_histograms.png"
    plot_label_histograms(parts, labels, num_classes=10, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.05  # something was drawn, not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
