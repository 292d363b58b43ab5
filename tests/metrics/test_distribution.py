"""Fréchet distance, KID and precision/recall against closed forms, brute force and known answers; pooled pixels."""

from __future__ import annotations


import numpy as np
import pytest
from scipy.spatial.distance import cdist

from synthmri.metrics.distribution import (
    frechet_distance,
    kernel_inception_distance,
    pooled_pixel_features,
    precision_recall,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def test_frechet_distance_of_1d_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 2.0, size=(4000, 1))
    b = rng.normal(-0.5, 0.5, size=(4000, 1))
    m_a, m_b, s_a, s_b = a.mean(), b.mean(), a.std(ddof=1), b.std(ddof=1)
    # Two 1-D Gaussians: (m_a - m_b)^2 + (s_a - s_b)^2.
    assert frechet_distance(a, b) == pytest.approx((m_a - m_b) ** 2 + (s_a - s_b) ** 2, rel=1e-9)


def test_frechet_distance_with_commuting_covariances_and_identity():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5000, 3)) * np.array([1.0, 2.0, 3.0])
    b = rng.normal(size=(5000, 3)) * np.array([2.0, 2.0, 1.0]) + np.array([1.0, 0.0, 0.0])
    va, vb = a.var(axis=0, ddof=1), b.var(axis=0, ddof=1)
    diagonal = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    # Sample covariances are only nearly diagonal: agree to the off-diagonal noise.
    assert frechet_distance(a, b) == pytest.approx(diagonal, rel=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_frechet_distance_rejects_mismatched_sets():
    with pytest.raises(ValueError, match=r"equal d"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"at least two"):
        frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))


def test_pooled_pixel_features_average_blocks():
    images = np.zeros((2, 5, 16, 16), dtype=np.uint8)
    images[0, 1, :8, :8] = 255  # top-left quarter of channel 1
    features = pooled_pixel_features(images, grid=2)
    assert features.shape == (2, 5 * 2 * 2)
    assert features[0].reshape(5, 2, 2)[1].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert features[1].sum() == 0
    with pytest.raises(ValueError, match=r"not divisible"):
        pooled_pixel_features(np.zeros((1, 5, 10, 10), dtype=np.uint8), grid=8)


def _full_covariance_features(rng, n, d, shift):
    mixing = rng.normal(size=(d, d))  # a dense mixing matrix: correlated, full covariance
    return rng.normal(size=(n, d)) @ mixing + shift


def test_frechet_distance_matches_a_symmetric_eigendecomposition():
    rng = np.random.default_rng(2)
    a = _full_covariance_features(rng, 200, 6, 0.0)
    b = _full_covariance_features(rng, 200, 6, rng.normal(size=6))
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr((A B)^(1/2)) = tr((A^(1/2) B A^(1/2))^(1/2)), and both roots are of symmetric PSD matrices.
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sum(np.sqrt(np.clip(inner, 0.0, None)))
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root
    assert abs(cov_a[0, 1]) > 0.1 and abs(cov_b[2, 3]) > 0.1  # really full covariances
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def _brute_force_mmd2(x, y, degree, gamma, coef0):
    def k(u, v):
        return (gamma * sum(ui * vi for ui, vi in zip(u, v)) + coef0) ** degree

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2.0 * xy


def test_kid_matches_a_brute_force_unbiased_mmd2():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(12, 3)), rng.normal(0.3, 1.5, size=(12, 3))
    # One subset of all rows: the draw only permutes them, and the MMD^2 is permutation invariant.
    mean, sd = kernel_inception_distance(a, b, subsets=1, subset_size=12)
    assert mean == pytest.approx(_brute_force_mmd2(a, b, 3, 1.0 / 3, 1.0), abs=1e-10)
    assert sd == 0.0
    mean, _ = kernel_inception_distance(a, b, subsets=1, subset_size=50, degree=2, gamma=0.7, coef0=0.5)
    assert mean == pytest.approx(_brute_force_mmd2(a, b, 2, 0.7, 0.5), abs=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
    mean, sd = kernel_inception_distance(a, b, subsets=20, subset_size=300)
    assert sd > 0 and abs(mean) < 3 * sd
    shifted, shifted_sd = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=300)
    assert shifted > 10 * sd and shifted > 5 * shifted_sd
    # Seeded: the same call gives the same draw.
    assert kernel_inception_distance(a, b, subsets=20, subset_size=300) == (mean, sd)


def test_kid_with_a_linear_kernel_is_the_squared_mean_difference():
    rng = np.random.default_rng(5)
    delta = np.array([1.0, -0.5, 0.25])
    a, b = rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3)) + delta
    mean, _ = kernel_inception_distance(a, b, subsets=1, subset_size=2000, degree=1, gamma=1.0, coef0=0.0)
    # Population: MMD^2 of the linear kernel = |mu_a - mu_b|^2.
    assert mean == pytest.approx(np.sum(delta**2), abs=0.2)  # the estimate's sd here is about 0.07
    # Sample identity of the unbiased estimate: |xbar - ybar|^2 - tr(S_a) / n - tr(S_b) / n.
    n = len(a)
    exact = (np.sum((a.mean(0) - b.mean(0)) ** 2) - np.trace(np.cov(a, rowvar=False)) / n
             - np.trace(np.cov(b, rowvar=False)) / n)
    assert mean == pytest.approx(exact, rel=1e-9)


def test_kid_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"equal d"):
        kernel_inception_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"equal d"):
        kernel_inception_distance(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match=r"at least two"):
        kernel_inception_distance(np.zeros((1, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"subsets"):
        kernel_inception_distance(np.zeros((5, 2)), np.zeros((5, 2)), subsets=0)
    with pytest.raises(ValueError, match=r"degree"):
        kernel_inception_distance(np.zeros((5, 2)), np.zeros((5, 2)), degree=0)


def _brute_force_precision_recall(real, fake, k):
    def radii(points):
        return np.sort(cdist(points, points), axis=1)[:, k]  # column 0 is the point itself

    precision = np.mean((cdist(fake, real) <= radii(real)[None, :]).any(axis=1))
    recall = np.mean((cdist(real, fake) <= radii(fake)[None, :]).any(axis=1))
    return precision, recall


def test_precision_recall_of_identical_and_of_disjoint_sets():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(300, 4))
    assert precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0, "k": 3}
    far = precision_recall(real, rng.normal(size=(200, 4)) + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "k": 5}


def test_precision_recall_of_a_sub_square():
    rng = np.random.default_rng(7)
    real = rng.uniform(0.0, 1.0, size=(2000, 2))
    fake = rng.uniform(0.0, 0.5, size=(2000, 2))
    result = precision_recall(real, fake, k=3)
    # Every fake point lies where the real set is; the fake set covers a quarter of the square.
    assert result["precision"] > 0.97
    assert result["recall"] == pytest.approx(0.25, abs=0.06)


def test_precision_recall_matches_brute_force_and_is_chunk_independent():
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(150, 5)), rng.normal(0.4, 1.2, size=(130, 5)) + 20.0
    fake[:60] -= 20.0  # part of the fake set overlaps the real one
    whole = precision_recall(real, fake, k=4)
    assert 0.0 < whole["precision"] < 1.0 and 0.0 < whole["recall"] < 1.0
    assert (whole["precision"], whole["recall"]) == pytest.approx(_brute_force_precision_recall(real, fake, 4))
    for chunk in (5, 37, 150):
        assert precision_recall(real, fake, k=4, chunk_size=chunk) == whole


def test_precision_recall_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"smaller than each set"):
        precision_recall(np.zeros((10, 2)), np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError, match=r"positive integer"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 2)), k=0)
    with pytest.raises(ValueError, match=r"equal d"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"chunk_size"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 2)), chunk_size=0)
