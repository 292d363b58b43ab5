"""Fréchet distance against closed forms, and pooled pixel features."""

from __future__ import annotations

import numpy as np
import pytest

from synthmri.metrics.distribution import frechet_distance, pooled_pixel_features


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
