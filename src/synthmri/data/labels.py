"""Tumour labels: BraTS label ids <-> annotation-channel values <-> class indices.

The annotation channel stores 0 (background), 51 (NCR/NET), 102 (ED) and 204 (ET), as in
the paper. Which BraTS label id maps to which value is configuration (``data.label_map``):
BraTS 2020/2021 use 4 for enhancing tumour, BraTS 2023 uses 3.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

#: Annotation-channel values in class-index order: background, NCR/NET, ED, ET.
LABEL_VALUES: tuple[int, ...] = (0, 51, 102, 204)
#: Tumour sub-regions by name -> annotation value.
LABEL_NAMES: dict[str, int] = {"NCR": 51, "ED": 102, "ET": 204}
#: BraTS evaluation regions -> the annotation values they union.
REGIONS: dict[str, tuple[int, ...]] = {"WT": (51, 102, 204), "TC": (51, 204), "ET": (204,)}
#: Labels of the paper's tables, in their order; "mean Dice" is the mean over these.
EVAL_LABELS: tuple[str, ...] = ("ET", "ED", "NCR")
#: Everything the 3D evaluation scores: the labels, then the BraTS regions not already
#: among them (the ET region is the ET label).
STRUCTURES: dict[str, tuple[int, ...]] = {
    **{name: (LABEL_NAMES[name],) for name in EVAL_LABELS},
    **{name: values for name, values in REGIONS.items() if name not in EVAL_LABELS},
}


class LabelError(ValueError):
    """A segmentation holds a label the label map does not know."""


def check_labels(seg: np.ndarray, label_map: Mapping[int, int]) -> None:
    """Raise unless every voxel holds 0 or a label id of `label_map`.

    Integer volumes with a narrow value range (every BraTS segmentation) are checked by
    looking only for the ids in ``min..max`` that are not allowed: usually one or two
    comparisons instead of sorting every voxel (``np.unique``).

    Raises:
        LabelError: the unknown label ids, named with the map.
    """
    seg = np.asarray(seg)
    if seg.size == 0:
        return
    low, high = seg.min(), seg.max()
    if seg.dtype.kind in "biu" and int(high) - int(low) <= 256:
        suspects = [v for v in range(int(low), int(high) + 1) if v != 0 and v not in label_map]
        unknown: list[float] = [v for v in suspects if (seg == v).any()]
    else:
        unknown = [float(v) for v in np.unique(seg) if v != 0 and (v != round(v) or int(v) not in label_map)]
    if unknown:
        shown = [int(v) if v == round(v) else v for v in unknown]
        raise LabelError(f"labels {shown} not in label map {dict(label_map)}")


def encode_labels(seg: np.ndarray, label_map: Mapping[int, int], check: bool = True) -> np.ndarray:
    """Map BraTS label ids to annotation values (uint8); 0 stays 0.

    Args:
        seg: label ids.
        label_map: BraTS label id -> annotation value.
        check: run :func:`check_labels` first; False when the caller already checked a volume
            that `seg` is part of.

    Raises:
        LabelError: a voxel holds a label id that is neither 0 nor in `label_map`.
    """
    seg = np.asarray(seg)
    if check:
        check_labels(seg, label_map)
    lut = np.zeros(int(max(max(label_map), seg.max(initial=0))) + 1, dtype=np.uint8)
    for label, value in label_map.items():
        lut[int(label)] = value
    if seg.ndim == 0 or seg.dtype == np.intp:
        return lut[seg.astype(np.intp, copy=False)]
    # A few MB of indices at a time: one intp copy of a whole volume is ~50 MB of fresh
    # pages per subject, which cost more than the look-up itself.
    out = np.empty(seg.shape, dtype=np.uint8)
    step = max(1, (1 << 19) // max(1, seg[0].size))
    for start in range(0, len(seg), step):
        out[start:start + step] = lut[seg[start:start + step].astype(np.intp)]
    return out


def snap_labels(channel: np.ndarray, values: tuple[int, ...] = LABEL_VALUES) -> np.ndarray:
    """Snap any-valued annotation channel to the nearest of `values` (uint8)."""
    levels = np.asarray(values, dtype=np.float32)
    channel = np.asarray(channel, dtype=np.float32)
    nearest = np.abs(channel[..., None] - levels).argmin(axis=-1)
    return levels.astype(np.uint8)[nearest]


def values_to_classes(channel: np.ndarray, values: tuple[int, ...] = LABEL_VALUES) -> np.ndarray:
    """Annotation values (0/51/102/204) -> class indices 0..3 (int64); off-grid values snap first."""
    channel = np.asarray(channel)
    levels = np.asarray(values, dtype=np.float32)
    return np.abs(channel.astype(np.float32)[..., None] - levels).argmin(axis=-1).astype(np.int64)


def classes_to_values(classes: np.ndarray, values: tuple[int, ...] = LABEL_VALUES) -> np.ndarray:
    """Class indices 0..3 -> annotation values (uint8)."""
    return np.asarray(values, dtype=np.uint8)[np.asarray(classes, dtype=np.int64)]
