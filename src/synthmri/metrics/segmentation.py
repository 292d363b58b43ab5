"""3D segmentation scores on annotation-value volumes: Dice and Hausdorff distance.

Both functions take integer label volumes holding annotation values (0/51/102/204, see
:mod:`synthmri.data.labels`) and score one label or a region (a tuple of values, e.g.
``REGIONS["WT"]``), which is binarised as "voxel value in the tuple". The arithmetic is
MONAI's (``compute_dice``, ``compute_hausdorff_distance``); this module fixes the inputs
and the conventions for empty masks, which MONAI leaves to the caller (NaN/inf plus a
warning).

Empty-mask conventions (``convention``, the config's ``evaluation.convention``):

============================  =================  ==================================
prediction / reference        ``paper``          ``penalise``
============================  =================  ==================================
both empty: Dice              NaN                1.0
both empty: Hausdorff         NaN                0.0
exactly one empty: Dice       0.0                0.0
exactly one empty: Hausdorff  NaN                diagonal of the volume in mm
============================  =================  ==================================

``paper`` is the authors' published evaluation code: an undefined score is NaN and drops
out of the mean over subjects (``nanmean``). ``penalise`` is the BraTS challenge's, so
averages over subjects stay finite: the diagonal ``sqrt(sum((shape * spacing) ** 2))``
bounds every distance two voxels of the volume can have, so it is the largest possible
penalty; for a BraTS volume (240 x 240 x 155 at 1 mm) it is 373.13 mm, the value the BraTS
toolkit reports. Both functions default to ``penalise`` (always a finite number for a
direct caller); the evaluation stage passes the configured convention.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from synthmri.config import EVALUATION_CONVENTIONS

Label = int | Sequence[int]
#: The empty-mask conventions: ``synthmri.config.EVALUATION_CONVENTIONS``.
CONVENTIONS: tuple[str, ...] = EVALUATION_CONVENTIONS


def check_convention(convention: str) -> str:
    """`convention` if it is one of :data:`CONVENTIONS`.

    Raises:
        ValueError: an unknown convention (the known ones named).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    return convention


def _mask(volume: np.ndarray, label: Label, name: str) -> np.ndarray:
    """Boolean mask of the voxels of `volume` whose value is `label` (or in the tuple)."""
    values = (label,) if isinstance(label, (int, np.integer)) else tuple(label)
    if not values or not all(isinstance(v, (int, np.integer)) for v in values):
        raise ValueError(f"label must be an integer annotation value or a non-empty tuple of them, got {label!r}")
    volume = np.asarray(volume)
    if not (np.issubdtype(volume.dtype, np.integer) or volume.dtype == bool):
        raise ValueError(f"{name} must be an integer label volume, got dtype {volume.dtype}")
    return np.isin(volume, np.asarray(values, dtype=np.int64))


def _masks(pred: np.ndarray, target: np.ndarray, label: Label) -> tuple[np.ndarray, np.ndarray]:
    pred_mask, target_mask = _mask(pred, label, "pred"), _mask(target, label, "target")
    if pred_mask.shape != target_mask.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred_mask.shape} and {target_mask.shape}")
    if pred_mask.ndim not in (2, 3):
        raise ValueError(f"pred and target must be 2D or 3D volumes, got {pred_mask.ndim} dimensions")
    return pred_mask, target_mask


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """MONAI's metric layout: [batch=1, channel=1, *spatial], one-hot of a single class."""
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()


def dice(pred: np.ndarray, target: np.ndarray, label: Label, convention: str = "penalise") -> float:
    """Dice overlap of `label` (one value or a region of values) between two label volumes.

    Args:
        pred: predicted integer label volume (annotation values), 2D or 3D.
        target: reference label volume of the same shape.
        label: an annotation value (e.g. 204) or a tuple of values forming a region
            (e.g. ``(51, 102, 204)`` for the whole tumour).
        convention: ``penalise`` or ``paper`` (see the module docstring).

    Returns:
        ``2 |P ∩ T| / (|P| + |T|)`` in [0, 1]; 0.0 when exactly one mask is empty; when
        both are, 1.0 (``penalise``) or NaN (``paper``).

    Raises:
        ValueError: shapes differ, a volume is not integer-valued, `label` is not an
            integer or a non-empty tuple of integers, or the convention is unknown.
    """
    check_convention(convention)
    pred_mask, target_mask = _masks(pred, target, label)
    if convention == "paper" and not pred_mask.any() and not target_mask.any():
        return float("nan")
    # ignore_empty=False gives exactly the conventions above (1.0 both empty, 0.0 one empty).
    score = compute_dice(_as_batch(pred_mask), _as_batch(target_mask), include_background=True, ignore_empty=False)
    return float(score.item())


def volume_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of a volume: the finite Hausdorff penalty for a missed mask."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def hausdorff(
    pred: np.ndarray,
    target: np.ndarray,
    label: Label,
    percentile: float | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    convention: str = "penalise",
) -> float:
    """Symmetric Hausdorff distance in mm between the surfaces of `label` in two volumes.

    A mask's surface is its voxels minus its erosion (face connectivity), the definition
    MONAI, MedPy and the BraTS toolkit share; distances are Euclidean between voxel
    centres scaled by `spacing`.

    Args:
        pred: predicted integer label volume (annotation values), 2D or 3D.
        target: reference label volume of the same shape.
        label: an annotation value or a tuple of values forming a region.
        percentile: None for the maximum distance (the paper's choice), or a percentile in
            [0, 100] (95 gives the HD95 of the BraTS challenge).
        spacing: voxel size in mm along each axis of the volumes (anisotropy allowed).
        convention: ``penalise`` or ``paper`` (see the module docstring).

    Returns:
        The distance in mm. ``penalise``: 0.0 when both masks are empty, and the volume's
        diagonal (:func:`volume_diagonal`) when exactly one is. ``paper``: NaN when
        either is empty.

    Raises:
        ValueError: bad shapes or labels (as :func:`dice`), `spacing` not one positive
            number per axis, `percentile` outside [0, 100], or an unknown convention.
    """
    check_convention(convention)
    pred_mask, target_mask = _masks(pred, target, label)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred_mask.ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing must be {pred_mask.ndim} positive numbers (one per axis), got {spacing}")
    if percentile is not None and not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in [0, 100] or None, got {percentile}")
    has_pred, has_target = bool(pred_mask.any()), bool(target_mask.any())
    if convention == "paper" and not (has_pred and has_target):
        return float("nan")
    if not has_pred and not has_target:
        return 0.0
    if has_pred != has_target:
        return volume_diagonal(pred_mask.shape, spacing)
    with warnings.catch_warnings():
        # Both masks are non-empty here, so MONAI's empty-mask warnings cannot apply; MONAI
        # 1.5+ also warns about a deprecated argument its own code passes internally.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        distance = compute_hausdorff_distance(
            _as_batch(pred_mask), _as_batch(target_mask), include_background=True,
            percentile=percentile, spacing=list(spacing),
        )
    return float(distance.item())
