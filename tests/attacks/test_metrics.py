"""Metrics against independent references: the PSNR formula in numpy, scikit-image's SSIM,
brute-force pairing over all permutations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.attacks.metrics import best_match, label_accuracy, mse, psnr, score_images, ssim

structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity


def _images(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    original = torch.rand(shape, generator=generator)
    noisy = (original + 0.1 * torch.randn(shape, generator=generator)).clamp(0, 1)
    return noisy, original


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), channels=st.sampled_from([1, 3]), size=st.integers(11, 20))
def test_psnr_and_mse_match_the_direct_formula(seed, channels, size):
    reconstruction, original = _images(seed, (channels, size, size))
    a, b = reconstruction.numpy().astype(np.float64), original.numpy().astype(np.float64)
    expected_mse = float(np.mean((a - b) ** 2))
    assert mse(reconstruction, original) == pytest.approx(expected_mse, rel=1e-12)
    assert psnr(reconstruction, original) == pytest.approx(10 * np.log10(1.0 / expected_mse), rel=1e-12)
    assert psnr(reconstruction * 255, original * 255, data_range=255.0) == pytest.approx(
        psnr(reconstruction, original), rel=1e-6
    )


def test_psnr_of_identical_images_is_infinite():
    image = torch.rand(1, 12, 12)
    assert psnr(image, image.clone()) == math.inf


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), channels=st.sampled_from([1, 3]), size=st.integers(11, 32))
def test_ssim_matches_scikit_image(seed, channels, size):
    reconstruction, original = _images(seed, (channels, size, size))
    expected = structural_similarity(
        reconstruction.numpy().astype(np.float64),
        original.numpy().astype(np.float64),
        data_range=1.0,
        channel_axis=0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(reconstruction, original) == pytest.approx(expected, abs=1e-10)


def test_ssim_of_an_image_with_itself_is_one_and_rejects_tiny_images():
    image = torch.rand(3, 16, 16)
    assert ssim(image, image) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 8))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), originals=st.integers(1, 4), extra=st.integers(0, 2))
def test_best_match_maximises_total_psnr_like_brute_force(seed, originals, extra):
    generator = torch.Generator().manual_seed(seed)
    truth = torch.rand((originals, 1, 6, 6), generator=generator)
    candidates = torch.rand((originals + extra, 1, 6, 6), generator=generator)
    pairing = best_match(candidates, truth)
    assert len(set(pairing)) == originals

    def total(assignment: tuple[int, ...]) -> float:
        return sum(psnr(candidates[j], truth[i]) for i, j in enumerate(assignment))

    best = max(itertools.permutations(range(originals + extra), originals), key=total)
    assert total(tuple(pairing)) == pytest.approx(total(best), rel=1e-9)


def test_best_match_undoes_a_shuffle_and_scores_against_the_mean_image():
    generator = torch.Generator().manual_seed(3)
    truth = torch.rand((5, 3, 12, 12), generator=generator)
    order = torch.tensor([3, 0, 4, 1, 2])
    shuffled = truth[order]
    pairing = best_match(shuffled, truth)
    assert [int(order[j]) for j in pairing] == [0, 1, 2, 3, 4]
    mean_image = truth.mean(dim=0)
    scores, _ = score_images(shuffled, truth, mean_image=mean_image)
    assert all(s.psnr == math.inf and s.ssim == pytest.approx(1.0) for s in scores)
    assert [s.baseline_psnr for s in scores] == pytest.approx([psnr(mean_image, t) for t in truth])


def test_label_accuracy_counts_matches():
    assert label_accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    with pytest.raises(ValueError):
        label_accuracy(torch.tensor([1]), torch.tensor([1, 2]))
