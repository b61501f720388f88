"""How close a reconstruction is to the private data it came from.

- PSNR and MSE on images in ``[0, 1]``.
- SSIM (Wang, Bovik, Sheikh & Simoncelli, "Image Quality Assessment: From Error Visibility to
  Structural Similarity", IEEE TIP 2004) with the paper's 11-tap Gaussian window (sigma 1.5),
  population covariances and the border strip left out, i.e. the same numbers as scikit-image's
  ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False, data_range=1)``;
  colour images are the mean over channels.
- Label accuracy.
- Best-match pairing for batches: a batch reconstruction comes back in no particular order, so
  each reconstruction is paired with one original by the Hungarian algorithm (Kuhn 1955) maximising
  the total PSNR, as in the evaluation of Geiping et al. (2020) and the breaching library.
- The trivial guess: the PSNR of the data set's mean image against each original. A
  reconstruction no better than this has leaked nothing an attacker did not know beforehand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.optimize import linear_sum_assignment

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # 11-tap window at sigma 1.5, as in Wang et al. (2004)
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def mse(reconstruction: torch.Tensor, original: torch.Tensor) -> float:
    """Mean squared error of two images (any shape, same shape)."""
    _check_same_shape(reconstruction, original)
    difference = reconstruction.detach().double() - original.detach().double()
    return float(difference.pow(2).mean())


def psnr(reconstruction: torch.Tensor, original: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``; ``inf`` if identical."""
    error = mse(reconstruction, original)
    if error == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / error)


def ssim(reconstruction: torch.Tensor, original: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Mean structural similarity of two (C, H, W) images (mean over channels), in [-1, 1]."""
    _check_same_shape(reconstruction, original)
    if reconstruction.dim() != 3:
        raise ValueError(f"ssim takes (C, H, W) images, got shape {tuple(reconstruction.shape)}")
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(reconstruction.shape[1:]) < 2 * radius + 1:
        raise ValueError(f"ssim needs images of at least {2 * radius + 1}x{2 * radius + 1}")
    first = reconstruction.detach().double().cpu().numpy()
    second = original.detach().double().cpu().numpy()
    return float(
        np.mean([_ssim_channel(a, b, data_range, radius) for a, b in zip(first, second, strict=True)])
    )


def _ssim_channel(first: np.ndarray, second: np.ndarray, data_range: float, radius: int) -> float:
    def blur(image: np.ndarray) -> np.ndarray:
        return gaussian_filter(image, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    mean_first, mean_second = blur(first), blur(second)
    variance_first = blur(first * first) - mean_first**2
    variance_second = blur(second * second) - mean_second**2
    covariance = blur(first * second) - mean_first * mean_second
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2 * mean_first * mean_second + c1) * (2 * covariance + c2)
    denominator = (mean_first**2 + mean_second**2 + c1) * (variance_first + variance_second + c2)
    index_map = numerator / denominator
    return float(index_map[radius:-radius, radius:-radius].mean())


def label_accuracy(predicted: torch.Tensor, true: torch.Tensor) -> float:
    """Fraction of positions where the predicted label equals the true one."""
    if predicted.shape != true.shape:
        raise ValueError(f"label shapes differ: {tuple(predicted.shape)} vs {tuple(true.shape)}")
    if predicted.numel() == 0:
        raise ValueError("no labels to compare")
    return float((predicted.cpu() == true.cpu()).double().mean())


def best_match(reconstructions: torch.Tensor, originals: torch.Tensor) -> list[int]:
    """For each original ``i``, the index of the reconstruction paired with it.

    Pairs maximise the total PSNR (Hungarian algorithm on the pairwise MSE matrix); the batch of
    reconstructions may be larger than the batch of originals (the attacker under secure
    aggregation reconstructs all N clients' images and the victim's are among them).
    """
    if reconstructions.shape[1:] != originals.shape[1:]:
        raise ValueError("reconstructions and originals must have the same image shape")
    if reconstructions.shape[0] < originals.shape[0]:
        raise ValueError("fewer reconstructions than originals: nothing to pair some originals with")
    flat_originals = originals.detach().double().flatten(1)
    flat_reconstructions = reconstructions.detach().double().flatten(1)
    errors = torch.cdist(flat_originals, flat_reconstructions).pow(2) / flat_originals.shape[1]
    # maximising sum of -10 log10(mse) == minimising sum of log(mse)
    cost = torch.log(errors.clamp_min(1e-30)).numpy()
    rows, columns = linear_sum_assignment(cost)
    pairing = [0] * originals.shape[0]
    for row, column in zip(rows, columns, strict=True):
        pairing[int(row)] = int(column)
    return pairing


@dataclass(frozen=True)
class ImageScore:
    """Metrics of one original image against the reconstruction paired with it."""

    psnr: float
    ssim: float
    mse: float
    baseline_psnr: float
    """PSNR of the trivial guess (the data set's mean image) against the same original."""


def score_images(
    reconstructions: torch.Tensor, originals: torch.Tensor, *, mean_image: torch.Tensor
) -> tuple[list[ImageScore], list[int]]:
    """Pair reconstructions with originals (:func:`best_match`) and score every original.

    Returns the scores (one per original, in the originals' order) and the pairing.
    """
    pairing = best_match(reconstructions, originals)
    scores = []
    for index, original in enumerate(originals):
        reconstruction = reconstructions[pairing[index]]
        scores.append(
            ImageScore(
                psnr=psnr(reconstruction, original),
                ssim=ssim(reconstruction, original),
                mse=mse(reconstruction, original),
                baseline_psnr=psnr(mean_image, original),
            )
        )
    return scores, pairing


def _check_same_shape(first: torch.Tensor, second: torch.Tensor) -> None:
    if first.shape != second.shape:
        raise ValueError(f"image shapes differ: {tuple(first.shape)} vs {tuple(second.shape)}")
