"""Distances between feature distributions of real and synthetic images.

The Fréchet distance models each feature set as a Gaussian and compares them:
``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. With InceptionV3 pool features it
is the FID; the same formula serves in-domain features (a segmentation network's) and, for
quick checks, pooled pixels (:func:`pooled_pixel_features`).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ([n, d] each).

    Computed in float64; the matrix square root's tiny imaginary parts (numerical noise)
    are dropped, and a singular product gets a small diagonal offset as in the FID
    reference implementation.

    Raises:
        ValueError: sets of different width, or fewer than two rows in either.
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [n, d] with equal d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least two feature vectors per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = np.real(root)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))


def pooled_pixel_features(images: np.ndarray, grid: int = 8) -> np.ndarray:
    """Average-pool uint8 [n, C, H, W] images to C x grid x grid and flatten, scaled to [0, 1].

    A feature space with no trained network in it: coarse anatomy, contrast per sequence
    and the tumour's position and size (through the annotation channel).

    Raises:
        ValueError: H or W not divisible by `grid`.
    """
    images = np.asarray(images)
    n, c, h, w = images.shape
    if h % grid or w % grid:
        raise ValueError(f"image size {h}x{w} is not divisible by the pooling grid {grid}")
    pooled = images.reshape(n, c, grid, h // grid, grid, w // grid).astype(np.float64).mean(axis=(3, 5))
    return pooled.reshape(n, -1) / 255.0
