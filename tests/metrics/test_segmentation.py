"""Dice and Hausdorff against independent numpy/scipy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import directed_hausdorff

from synthmri.data.labels import REGIONS
from synthmri.metrics.segmentation import dice, hausdorff, volume_diagonal


def _reference_dice(pred: np.ndarray, target: np.ndarray, values: tuple[int, ...]) -> float:
    p, t = np.isin(pred, values), np.isin(target, values)
    if not p.any() and not t.any():
        return 1.0
    return 2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum())


def _surface_points(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Coordinates in mm of a mask's surface voxels (the mask minus its face-connected erosion)."""
    surface = mask & ~binary_erosion(mask)  # scipy's default structure: face connectivity
    return np.argwhere(surface) * np.asarray(spacing)


def _reference_hausdorff(pred, target, values, spacing) -> float:
    a = _surface_points(np.isin(pred, values), spacing)
    b = _surface_points(np.isin(target, values), spacing)
    return max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])


def _random_volumes(seed: int, shape=(18, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    """Two label volumes with overlapping, differently placed blobs of each label."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    volumes = []
    for _ in range(2):
        volume = np.zeros(shape, dtype=np.uint8)
        centre = np.asarray(shape) / 2 + rng.uniform(-2, 2, size=3)
        radius = np.sqrt((((grid.T - centre) / rng.uniform(0.8, 1.2, size=3)) ** 2).sum(-1)).T
        noise = rng.normal(0, 0.6, size=shape)
        volume[radius + noise < 8] = 102
        volume[radius + noise < 5] = 204
        volume[radius + noise < 2.5] = 51
        volumes.append(volume)
    return volumes[0], volumes[1]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("label", [51, 102, 204, REGIONS["WT"], REGIONS["TC"], REGIONS["ET"]])
def test_dice_matches_numpy(seed, label):
    pred, target = _random_volumes(seed)
    values = (label,) if isinstance(label, int) else label
    assert dice(pred, target, label) == pytest.approx(_reference_dice(pred, target, values), abs=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 1.3)])
@pytest.mark.parametrize("label", [51, 102, 204, REGIONS["WT"], REGIONS["TC"]])
def test_hausdorff_matches_scipy(label, spacing):
    pred, target = _random_volumes(3)
    values = (label,) if isinstance(label, int) else label
    expected = _reference_hausdorff(pred, target, values, spacing)
    assert expected > 0
    assert hausdorff(pred, target, label, spacing=spacing) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.7, 1.2)])
@pytest.mark.parametrize("label", [204, REGIONS["WT"], REGIONS["TC"]])
def test_hausdorff95_matches_numpy_percentiles(label, spacing):
    """HD95: the larger of the two directed 95th percentiles of surface-to-surface distances."""
    from scipy.spatial import cKDTree

    pred, target = _random_volumes(5)
    values = (label,) if isinstance(label, int) else label
    a = _surface_points(np.isin(pred, values), spacing)
    b = _surface_points(np.isin(target, values), spacing)
    expected = max(np.percentile(cKDTree(b).query(a)[0], 95), np.percentile(cKDTree(a).query(b)[0], 95))
    assert expected > 0
    assert hausdorff(pred, target, label, percentile=95, spacing=spacing) == pytest.approx(expected, rel=1e-5)


def test_hausdorff_percentile_is_at_most_the_maximum():
    pred, target = _random_volumes(4)
    full = hausdorff(pred, target, REGIONS["WT"], spacing=(1.0, 2.0, 1.0))
    hd95 = hausdorff(pred, target, REGIONS["WT"], percentile=95, spacing=(1.0, 2.0, 1.0))
    assert 0 < hd95 <= full


def test_known_distance_of_shifted_cubes():
    target = np.zeros((10, 20, 20), dtype=np.uint8)
    target[2:6, 5:10, 5:10] = 204
    pred = np.roll(target, 3, axis=0)  # 3 slices along z, each 2.5 mm
    assert hausdorff(pred, target, 204, spacing=(2.5, 1.0, 1.0)) == pytest.approx(7.5)
    assert dice(pred, target, 204) == pytest.approx(2 * 1 / 8)


def test_empty_conventions():
    shape, spacing = (8, 10, 12), (2.0, 1.0, 0.5)
    empty = np.zeros(shape, dtype=np.uint8)
    full = empty.copy()
    full[2:4, 2:5, 3:6] = 102
    assert dice(empty, empty, 204) == 1.0
    assert hausdorff(empty, empty, 204, spacing=spacing) == 0.0
    diagonal = math.sqrt(16**2 + 10**2 + 6**2)
    assert volume_diagonal(shape, spacing) == pytest.approx(diagonal)
    for pred, target in ((full, empty), (empty, full)):
        assert dice(pred, target, 102) == 0.0
        assert hausdorff(pred, target, 102, spacing=spacing) == pytest.approx(diagonal)
    # The BraTS toolkit's penalty for a 240 x 240 x 155 volume at 1 mm.
    assert volume_diagonal((240, 240, 155), (1.0, 1.0, 1.0)) == pytest.approx(373.13, abs=0.01)


def test_identical_volumes_score_perfectly():
    volume, _ = _random_volumes(5)
    for label in (51, 102, 204, REGIONS["WT"]):
        assert dice(volume, volume, label) == pytest.approx(1.0)
        assert hausdorff(volume, volume, label) == 0.0


def test_bad_inputs_are_named():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        dice(a, np.zeros((4, 4, 5), dtype=np.uint8), 204)
    with pytest.raises(ValueError, match="spacing"):
        hausdorff(a, a, 204, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="label"):
        dice(a, a, ())
    with pytest.raises(ValueError, match="integer label volume"):
        dice(a.astype(float), a, 204)
    with pytest.raises(ValueError, match="percentile"):
        hausdorff(a, a, 204, percentile=120)
