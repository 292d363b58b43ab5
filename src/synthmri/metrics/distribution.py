"""Distances between feature distributions of real and synthetic images.

Three comparisons of two feature sets ([n, d] each), all indifferent to where the features
come from: InceptionV3 pool features give the FID and KID of the literature; in-domain
features (a segmentation network trained on real MR, :mod:`synthmri.metrics.features`) or,
for quick checks, pooled pixels (:func:`pooled_pixel_features`) serve as well.

* :func:`frechet_distance` models each set as a Gaussian and compares them:
  ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.
* :func:`kernel_inception_distance` is the unbiased estimate of the squared maximum mean
  discrepancy (MMD^2) under a cubic polynomial kernel, averaged over random subsets
  (Binkowski et al. 2018, "Demystifying MMD GANs"): no Gaussian assumption, and unbiased,
  so its expectation does not depend on the sample size (the Fréchet distance's does).
* :func:`precision_recall` splits the gap into fidelity and coverage with k-nearest-neighbour
  manifolds (Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing
  generative models"): precision is the share of synthetic samples that look real, recall
  the share of real samples the synthetic set covers.
"""

from __future__ import annotations

import numpy as np
import torch
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


def _feature_pair(features_a: np.ndarray, features_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as float64 [n, d] with equal d and at least two rows each, else ValueError."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [n, d] with equal d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least two feature vectors per set, got {len(a)} and {len(b)}")
    return a, b


def _unbiased_mmd2(k_aa: np.ndarray, k_bb: np.ndarray, k_ab: np.ndarray) -> float:
    """Unbiased MMD^2 from the kernel matrices of two samples of sizes m and n.

    ``sum_{i != j} k(a_i, a_j) / (m (m - 1)) + sum_{i != j} k(b_i, b_j) / (n (n - 1))
    - 2 sum_{i, j} k(a_i, b_j) / (m n)``: the within-set means leave out the diagonal
    (a point's kernel with itself), which is what makes the estimate unbiased.
    """
    m, n = len(k_aa), len(k_bb)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * k_ab.mean())


def kernel_inception_distance(
    features_a: np.ndarray,
    features_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Unbiased polynomial-kernel MMD^2 between two feature sets, averaged over subsets.

    This is the KID (Binkowski et al. 2018) when the features are InceptionV3's; here any
    features. The kernel is ``k(x, y) = (gamma * x . y + coef0) ** degree``; with the
    defaults (``gamma = 1 / d``, ``coef0 = 1``, ``degree = 3``) it is the KID's cubic kernel.
    Each subset draws ``min(subset_size, n_a, n_b)`` rows from each set without replacement
    (a fresh draw per subset, from a numpy generator seeded with `seed`), and the unbiased
    MMD^2 of the two draws is computed. Being unbiased, a single estimate can be negative
    when the sets come from the same distribution; the mean over subsets estimates 0 then.

    Args:
        features_a: [n_a, d] features (e.g. of real images).
        features_b: [n_b, d] features (e.g. of synthetic images).
        subsets: how many random subsets to average over.
        subset_size: rows per subset and set, capped at the smaller set's size.
        degree: the polynomial's degree (a positive integer).
        gamma: scale of the inner product; None means ``1 / d``.
        coef0: the polynomial's constant term.
        seed: seed of the subset draws.

    Returns:
        (mean, sd) of the subset estimates; the sd is the sample sd (ddof 1) over subsets,
        0.0 for a single subset. It describes the spread of one subset's estimate, not the
        standard error of the mean.

    Raises:
        ValueError: sets not [n, d] with equal d, fewer than two rows in either, or
            `subsets`, `subset_size` or `degree` out of range.
    """
    a, b = _feature_pair(features_a, features_b)
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, got {subsets}")
    if subset_size < 2:
        raise ValueError(f"subset_size must be at least 2, got {subset_size}")
    if degree < 1 or int(degree) != degree:
        raise ValueError(f"degree must be a positive integer, got {degree}")
    scale = 1.0 / a.shape[1] if gamma is None else float(gamma)
    size = min(subset_size, len(a), len(b))

    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        base = scale * (x @ y.T) + coef0
        value = base.copy()
        for _ in range(int(degree) - 1):  # integer power by products: much faster than a float pow
            value *= base
        return value

    rng = np.random.default_rng(seed)
    estimates = np.empty(subsets, dtype=np.float64)
    for s in range(subsets):
        x = a[rng.choice(len(a), size=size, replace=False)]
        y = b[rng.choice(len(b), size=size, replace=False)]
        estimates[s] = _unbiased_mmd2(kernel(x, x), kernel(y, y), kernel(x, y))
    sd = float(estimates.std(ddof=1)) if subsets > 1 else 0.0
    return float(estimates.mean()), sd


def _squared_distances(x: torch.Tensor, y: torch.Tensor, x_norms: torch.Tensor, y_norms: torch.Tensor) -> torch.Tensor:
    """[len(x), len(y)] squared Euclidean distances (``|x|^2 + |y|^2 - 2 x.y``, floored at 0)."""
    return (x_norms[:, None] + y_norms[None, :] - 2.0 * (x @ y.T)).clamp_min_(0.0)


def _kth_neighbour_radii(points: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Squared distance of every point to its k-th nearest neighbour in `points`, itself excluded.

    Rows and columns are both processed in chunks of `chunk_size`, keeping a running list
    of the k + 1 smallest squared distances per row, so memory is O(chunk_size^2) whatever
    the set size. The point itself is among the k + 1 (at distance 0, the smallest
    possible), so the (k + 1)-th smallest is the k-th neighbour's; duplicates of the point
    are neighbours at distance 0, as they should be.
    """
    norms = (points * points).sum(dim=1)
    radii = torch.empty(len(points), dtype=points.dtype)
    for start in range(0, len(points), chunk_size):
        rows = slice(start, start + chunk_size)
        best = torch.full((len(points[rows]), 0), float("inf"), dtype=points.dtype)
        for col in range(0, len(points), chunk_size):
            cols = slice(col, col + chunk_size)
            dist = _squared_distances(points[rows], points[cols], norms[rows], norms[cols])
            merged = torch.cat([best, dist], dim=1)
            best = merged.topk(min(k + 1, merged.shape[1]), dim=1, largest=False).values
        radii[rows] = best[:, k]
    return radii


def _inside_manifold(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """For each query: is it within the (squared) radius of at least one of `points`? [len(queries)] bool."""
    q_norms, p_norms = (queries * queries).sum(dim=1), (points * points).sum(dim=1)
    inside = torch.zeros(len(queries), dtype=torch.bool)
    for start in range(0, len(queries), chunk_size):
        rows = slice(start, start + chunk_size)
        for col in range(0, len(points), chunk_size):
            cols = slice(col, col + chunk_size)
            dist = _squared_distances(queries[rows], points[cols], q_norms[rows], p_norms[cols])
            inside[rows] |= (dist <= radii[None, cols]).any(dim=1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk_size: int = 4096) -> dict[str, float | int]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of `fake` against `real`.

    Each set's manifold is the union of balls around its points, a ball's radius being the
    distance from its centre to the centre's k-th nearest neighbour within the same set (the
    point itself excluded). Precision is the share of fake points inside the real manifold
    (fidelity: do synthetic samples look like real ones?); recall the share of real points
    inside the fake manifold (coverage: does the synthetic set reach all of the real
    variety?). A point on a ball's boundary counts as inside.

    Distances are Euclidean, computed in float64 with torch in blocks of at most
    ``chunk_size x chunk_size``, so memory stays bounded for any set size; the result does
    not depend on `chunk_size`.

    Args:
        real: [n_real, d] features of real images.
        fake: [n_fake, d] features of synthetic images.
        k: the neighbour that sets the radii (the paper uses 3).
        chunk_size: rows and columns per distance block.

    Returns:
        ``{"precision": float, "recall": float, "k": k}``.

    Raises:
        ValueError: sets not [n, d] with equal d, `k` not in 1..n-1 for either set, or
            `chunk_size` below 1.
    """
    a, b = _feature_pair(real, fake)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    k = int(k)
    if k >= len(a) or k >= len(b):
        raise ValueError(f"k must be smaller than each set's size, got k={k} for {len(a)} real and "
                         f"{len(b)} fake points")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    # Distances do not change under a common shift; centring on the real mean keeps the
    # |x|^2 + |y|^2 - 2 x.y expansion free of cancellation for features far from 0.
    centre = a.mean(axis=0)
    real_t, fake_t = torch.from_numpy(a - centre), torch.from_numpy(b - centre)
    real_radii = _kth_neighbour_radii(real_t, k, chunk_size)
    fake_radii = _kth_neighbour_radii(fake_t, k, chunk_size)
    precision = _inside_manifold(fake_t, real_t, real_radii, chunk_size).double().mean().item()
    recall = _inside_manifold(real_t, fake_t, fake_radii, chunk_size).double().mean().item()
    return {"precision": float(precision), "recall": float(recall), "k": k}
