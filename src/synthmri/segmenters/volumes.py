"""Test volumes from stored slices: voxel spacing, depth and restacking in z order.

The geometry :mod:`synthmri.segmenters.evaluate` scores in: the stored slices of a subject
restacked into a volume (``evaluation.eval_slices``), its voxel size in mm from
``subjects.csv`` or the manifest, and its source depth.
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

from synthmri.data.store import SliceStore, StoreError


def volume_spacing(source: Any, pad_to: int, image_size: int) -> tuple[float, float, float]:
    """Voxel size (z, row, column) in mm of a restacked volume from the source voxel size (x, y, z).

    Stored rows run along the source x axis and columns along y (``prepare`` slices the
    last axis); in-plane pixels grow by ``pad_to / image_size`` through the resampling.

    Raises:
        StoreError: `source` is not 3 positive numbers.
    """
    try:
        x, y, z = (float(v) for v in source)
    except (TypeError, ValueError):
        raise StoreError(f"voxel spacing must be 3 numbers (x, y, z mm), got {source!r}") from None
    if not all(v > 0 and np.isfinite(v) for v in (x, y, z)):
        raise StoreError(f"voxel spacing must be 3 positive numbers (x, y, z mm), got {source!r}")
    zoom = int(pad_to) / int(image_size)
    return (z, x * zoom, y * zoom)


def subject_spacings(store: SliceStore, pad_to: int) -> tuple[dict[str, tuple[float, float, float]], str]:
    """Volume voxel size (z, row, column) in mm per subject of `store`, and where it came from.

    Args:
        store: the real slice store.
        pad_to: the padded slice side, used when the manifest does not record ``pad_to``.

    Returns:
        subject -> spacing (every subject of the store), and a note for the summary.
    """
    manifest = store.manifest
    padded, size = int(manifest.get("pad_to") or pad_to), store.image_size
    resampling = f"in-plane x {padded}/{size} (padding, resampling)"
    table = store.path / "subjects.csv"
    if table.is_file():
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "spacing_x" in rows[0]:
            spacings = {}
            for row in rows:
                source = (row["spacing_x"], row["spacing_y"], row["spacing_z"])
                try:
                    spacings[row["subject"]] = volume_spacing(source, padded, size)
                except StoreError as exc:
                    raise StoreError(f"{table}: subject {row['subject']}: {exc}") from None
            missing = sorted(set(store.subjects()) - set(spacings))
            if missing:
                raise StoreError(f"{table}: no voxel spacing for subjects {missing[:5]}")
            distinct = sorted({tuple(float(row[f"spacing_{a}"]) for a in "xyz") for row in rows})
            sources = "; ".join("x".join(f"{v:g}" for v in d) for d in distinct[:3])
            return spacings, f"source voxels {sources} mm from subjects.csv, {resampling}"
    source = manifest.get("spacing")
    if source is not None:
        spacing = volume_spacing(source, padded, size)
        return ({subject: spacing for subject in store.subjects()},
                f"source voxels {'x'.join(f'{float(v):g}' for v in source)} mm from the manifest, {resampling}")
    return ({subject: (1.0, 1.0, 1.0) for subject in store.subjects()},
            "the store records no voxel spacing; 1 mm assumed on every axis (distances in voxels)")


def restack(z: np.ndarray, slices: np.ndarray, mode: str = "filtered", depth: int | None = None) -> tuple[np.ndarray, int]:
    """Stack one subject's 2D slices into a volume ordered by z.

    Args:
        z: slice positions (one per slice, any order).
        slices: [n, H, W] arrays in the same order as `z`.
        mode: ``filtered`` stacks the slices consecutively in z order; ``all`` places each
            at its z in a zero volume of `depth` slices.
        depth: volume depth for ``all`` (default: the largest z + 1).

    Returns:
        The volume [D, H, W] and the number of slices filled with zeros.

    Raises:
        ValueError: z values repeat or lie outside the depth, or `mode` is unknown.
    """
    z = np.asarray(z, dtype=np.int64)
    values, counts = np.unique(z, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"slices repeat z positions {values[counts > 1].tolist()}")
    order = np.argsort(z, kind="stable")
    if mode == "filtered":
        return slices[order], 0
    if mode != "all":
        raise ValueError(f"mode must be 'filtered' or 'all', got {mode!r}")
    depth = int(z.max()) + 1 if depth is None else int(depth)
    if len(z) and (z.min() < 0 or z.max() >= depth):
        raise ValueError(f"z positions {int(z.min())}..{int(z.max())} do not fit a depth of {depth}")
    volume = np.zeros((depth, *slices.shape[1:]), dtype=slices.dtype)
    volume[z] = slices
    return volume, depth - len(z)


def subject_depths(store: SliceStore) -> dict[str, int]:
    """Source volume depth per subject: ``subjects.csv`` (slices_total), else manifest ``shape``; {} if neither."""
    table = store.path / "subjects.csv"
    if table.is_file():
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "slices_total" in rows[0]:
            return {row["subject"]: int(row["slices_total"]) for row in rows}
    shape = store.manifest.get("shape")
    if shape:
        return {subject: int(shape[2]) for subject in store.subjects()}
    return {}
