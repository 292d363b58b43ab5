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


# ---------------------------------------------------------------------------- conventions


def _convention_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Small 3D (pred, target) pairs: both empty, prediction only, target only, overlapping."""
    shape = (6, 7, 8)
    empty = np.zeros(shape, dtype=np.uint8)
    a, b = empty.copy(), empty.copy()
    a[1:4, 2:5, 2:6] = 204
    b[2:5, 3:6, 1:5] = 204
    return {"both empty": (empty, empty), "pred only": (a, empty), "target only": (empty, b), "overlap": (a, b)}


def _numpy_dice(p: np.ndarray, t: np.ndarray, convention: str) -> float:
    """Dice written out: 2|P∩T| / (|P|+|T|); both empty: NaN (paper) or 1 (penalise)."""
    p, t = p == 204, t == 204
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return math.nan if convention == "paper" else 1.0
    return 2.0 * int((p & t).sum()) / total


def _numpy_hausdorff(p: np.ndarray, t: np.ndarray, spacing, convention: str) -> float:
    """Maximum surface distance by brute force; an empty mask: NaN (paper), else 0 / the diagonal (penalise)."""
    p, t = p == 204, t == 204
    if not p.any() or not t.any():
        if convention == "paper":
            return math.nan
        return 0.0 if not p.any() and not t.any() else float(np.linalg.norm(np.asarray(p.shape) * spacing))
    a, b = _surface_points(p, spacing), _surface_points(t, spacing)
    distances = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return float(max(distances.min(axis=1).max(), distances.min(axis=0).max()))


def _same(value: float, expected: float) -> bool:
    return (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("convention", ["paper", "penalise"])
@pytest.mark.parametrize("case", ["both empty", "pred only", "target only", "overlap"])
def test_conventions_match_numpy(case, convention):
    pred, target = _convention_cases()[case]
    spacing = (2.0, 1.0, 0.5)
    expected_dice = _numpy_dice(pred, target, convention)
    expected_hd = _numpy_hausdorff(pred, target, spacing, convention)
    assert _same(dice(pred, target, 204, convention=convention), expected_dice)
    assert _same(hausdorff(pred, target, 204, spacing=spacing, convention=convention), expected_hd)
    # what each case must give, spelled out
    if case == "both empty":
        assert math.isnan(expected_dice) and math.isnan(expected_hd) if convention == "paper" else (
            expected_dice == 1.0 and expected_hd == 0.0)
    elif case != "overlap":
        assert expected_dice == 0.0
        assert math.isnan(expected_hd) if convention == "paper" else expected_hd == pytest.approx(
            math.sqrt(12**2 + 7**2 + 4**2))
    else:
        assert 0.0 < expected_dice < 1.0 and 0.0 < expected_hd < math.inf


def test_the_default_convention_is_penalise_and_unknown_ones_are_named():
    from synthmri.config import EVALUATION_CONVENTIONS
    from synthmri.metrics.segmentation import CONVENTIONS

    assert CONVENTIONS == EVALUATION_CONVENTIONS
    empty = np.zeros((4, 4, 4), dtype=np.uint8)
    assert dice(empty, empty, 204) == 1.0 and hausdorff(empty, empty, 204) == 0.0  # today's callers unchanged
    with pytest.raises(ValueError, match="convention must be one of paper, penalise"):
        dice(empty, empty, 204, convention="brats")
    with pytest.raises(ValueError, match="convention must be one of"):
        hausdorff(empty, empty, 204, convention="")
