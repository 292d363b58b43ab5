"""Tests of the segmenters: U-Net, data sampling and augmentation, training, evaluation.

:func:`write_blob_store` builds small slice stores with :class:`StoreWriter` from simple
synthetic volumes, for tests that need exact control over subjects, z and splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthmri.data.store import SliceRow, StoreWriter


def blob_volume(rng: np.random.Generator, size: int, depth: int) -> np.ndarray:
    """uint8 [depth, 5, size, size]: a bright ellipse with a nested NCR/ET/ED tumour."""
    zz, yy, xx = np.meshgrid(np.arange(depth), np.arange(size), np.arange(size), indexing="ij")
    centre = np.array([depth / 2, size / 2, size / 2]) + rng.uniform(-0.15, 0.15, 3) * [depth, size, size]
    radius = np.sqrt(((zz - centre[0]) / (depth * 0.3)) ** 2 + ((yy - centre[1]) / (size * 0.22)) ** 2
                     + ((xx - centre[2]) / (size * 0.22)) ** 2)
    brain = ((yy - size / 2) / (size * 0.45)) ** 2 + ((xx - size / 2) / (size * 0.4)) ** 2 < 1
    seg = np.zeros(radius.shape, dtype=np.uint8)
    seg[radius < 1.0] = 102
    seg[radius < 0.6] = 204
    seg[radius < 0.35] = 51
    seg[~brain] = 0
    # Each contrast sees the labels differently, as real MR contrasts do.
    contrast = {0: (90, 90, 60, 70), 51: (40, 50, 200, 90), 102: (100, 110, 170, 220), 204: (110, 230, 140, 150)}
    images = np.zeros((4, *seg.shape), dtype=np.float32)
    for value, levels in contrast.items():
        for channel, level in enumerate(levels):
            images[channel][(seg == value) & brain] = level
    images += rng.normal(0, 8, images.shape) * brain
    volume = np.concatenate([np.clip(images, 0, 255).astype(np.uint8), seg[None]], axis=0)
    return volume.transpose(1, 0, 2, 3).copy()


def write_blob_store(out: Path, splits: dict[str, int], size: int = 32, depth: int = 12, seed: int = 0,
                     generator: str | None = None, shuffle_rows: bool = False) -> Path:
    """A slice store of blob subjects: `splits` maps split name -> number of subjects.

    With `generator`, a synthetic store: subject is the generator name and z is -1.
    With `shuffle_rows`, slices are written in a random order (not z order).
    """
    rng = np.random.default_rng(seed)
    slices, rows = [], []
    number = 0
    for split, count in splits.items():
        for _ in range(count):
            subject = f"S{number:03d}"
            number += 1
            volume = blob_volume(rng, size, depth)
            for z in range(depth):
                slices.append(volume[z])
                if generator:
                    rows.append(SliceRow(f"{generator}-{len(rows):06d}", generator, -1, split))
                else:
                    rows.append(SliceRow(f"{subject}-{z:03d}", subject, z, split))
    order = rng.permutation(len(rows)) if shuffle_rows else np.arange(len(rows))
    gen = {"name": generator, "version": "1"} if generator else None
    with StoreWriter(out, image_size=size, source={"path": "blobs", "content_hash": str(seed)}, shard_size=50,
                     generator=gen) as writer:
        writer.add(np.stack(slices)[order], [rows[i] for i in order])
    return Path(out)
