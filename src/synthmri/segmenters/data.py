"""Training batches for the segmenters: seeded sampling from slice stores, augmentation, z-score.

Sampling (paper, 'Segmentation'):

* ``real``: slices of the real store's ``train`` split;
* ``synthetic``: every slice of every synthetic store; several stores form an ensemble
  whose slices are pooled (each slice equally likely, so a larger store is drawn more);
* ``mixed``: each batch element first draws its source, real or synthetic, with
  probability 1/2, so both are sampled equally often whatever their sizes.

Elements are drawn uniformly with replacement (as nnU-Net samples its batches) from one
numpy generator, so a seed fixes the whole stream. Validation always uses the real
store's ``val`` split, in index order.

Preprocessing: the four image channels (uint8) are scaled to [0, 1], optionally augmented,
then z-scored per channel per image (the paper's last step); the annotation channel
becomes class indices 0..3 (:func:`synthmri.data.labels.values_to_classes`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import get_track_meta, set_track_meta
from monai.transforms import RandAdjustContrast, RandGaussianNoise, RandGaussianSmooth, RandSimulateLowResolution

from synthmri.data.labels import LABEL_VALUES
from synthmri.data.store import IMAGE_CHANNELS, SliceStore, StoreError

TRAIN_SOURCES: tuple[str, ...] = ("real", "synthetic", "mixed")
REAL, SYNTHETIC = 0, 1  # values of Batch.source

# Augmentation (paper; nnU-Net's defaults where the paper gives no probability).
ROTATE_P, ROTATE_DEG = 0.75, 30.0
SCALE_P, SCALE_RANGE = 0.75, (0.9, 1.1)
NOISE_P, NOISE_SD = 0.5, 0.05  # sd ~ U[0, 0.05] on the [0, 1] intensity scale
BLUR_P, BLUR_SIGMA = 0.2, (0.5, 1.0)
LOWRES_P, LOWRES_ZOOM = 0.25, (0.75, 1.0)  # p: nnU-Net's
GAMMA_P, GAMMA_RANGE = 0.3, (0.8, 1.2)  # p: nnU-Net's


@dataclass(frozen=True)
class Batch:
    """One sampled batch.

    Attributes:
        slices: uint8 [B, 5, H, W] as stored.
        source: per element, REAL (0) or SYNTHETIC (1).
        store: per element, the index into ``BatchSampler.stores``.
        positions: per element, the slice's position in that store.
    """

    slices: np.ndarray
    source: np.ndarray
    store: np.ndarray
    positions: np.ndarray


class BatchSampler:
    """Seeded stream of training batches from a real store and/or synthetic stores.

    Args:
        train: ``real``, ``synthetic`` or ``mixed``.
        real: the real store (needed for ``real`` and ``mixed``).
        synthetic: synthetic stores (at least one for ``synthetic`` and ``mixed``).
        batch_size: elements per batch.
        seed: seed of the sampling generator.

    Attributes:
        stores: the stores sampled from, the real one (if used) first.

    Raises:
        ValueError: unknown `train`, a store it needs is missing, or batch_size < 1.
        StoreError: a store it needs holds no slices to sample, or image sizes differ.
    """

    def __init__(self, train: str, real: SliceStore | None, synthetic: Sequence[SliceStore],
                 batch_size: int, seed: int) -> None:
        if train not in TRAIN_SOURCES:
            raise ValueError(f"train must be one of {TRAIN_SOURCES}, got {train!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        uses_real, uses_synthetic = train in ("real", "mixed"), train in ("synthetic", "mixed")
        if uses_real and real is None:
            raise ValueError(f"train={train!r} needs a real store")
        if uses_synthetic and not synthetic:
            raise ValueError(f"train={train!r} needs at least one synthetic store")
        self.train, self.batch_size = train, int(batch_size)
        self.stores: list[SliceStore] = ([real] if uses_real else []) + (list(synthetic) if uses_synthetic else [])
        sizes = {s.image_size for s in self.stores}
        if len(sizes) > 1:
            listing = ", ".join(f"{s.path} ({s.image_size})" for s in self.stores)
            raise StoreError(f"stores have different image sizes: {listing}")
        # Pools: (store index, position) of every slice a source may draw.
        self._pools: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if uses_real:
            positions = real.indices("train")
            if len(positions) == 0:
                raise StoreError(f"{real.path}: no 'train' slices to train on")
            self._pools[REAL] = (np.zeros(len(positions), dtype=np.int64), positions)
        if uses_synthetic:
            offset = 1 if uses_real else 0
            for store in synthetic:
                if len(store) == 0:
                    raise StoreError(f"{store.path}: synthetic store holds no slices")
            self._pools[SYNTHETIC] = (
                np.concatenate([np.full(len(s), offset + i, dtype=np.int64) for i, s in enumerate(synthetic)]),
                np.concatenate([s.indices() for s in synthetic]),
            )
        self._rng = np.random.default_rng(seed)

    @property
    def image_size(self) -> int:
        return self.stores[0].image_size

    def sample(self) -> Batch:
        """Draw the next batch (the same sequence for the same seed)."""
        n = self.batch_size
        if self.train == "mixed":
            source = np.where(self._rng.random(n) < 0.5, REAL, SYNTHETIC)
        else:
            source = np.full(n, REAL if self.train == "real" else SYNTHETIC)
        store = np.empty(n, dtype=np.int64)
        positions = np.empty(n, dtype=np.int64)
        for kind, (pool_store, pool_positions) in self._pools.items():
            where = np.flatnonzero(source == kind)
            pick = self._rng.integers(0, len(pool_positions), size=len(where))
            store[where], positions[where] = pool_store[pick], pool_positions[pick]
        slices = np.empty((n, *self._slice_shape()), dtype=np.uint8)
        for number in np.unique(store):
            where = np.flatnonzero(store == number)
            slices[where] = self.stores[number].read(positions[where])
        return Batch(slices=slices, source=source, store=store, positions=positions)

    def _slice_shape(self) -> tuple[int, int, int]:
        size = self.image_size
        return (IMAGE_CHANNELS + 1, size, size)


def validation_batches(real: SliceStore, batch_size: int) -> Iterator[np.ndarray]:
    """The real store's ``val`` slices (uint8 [b, 5, H, W]) in index order."""
    for _, slices in real.iter_batches(real.indices("val"), batch_size):
        yield slices


# ---------------------------------------------------------------------------- tensors


def to_tensors(slices: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [B, 5, H, W] -> images float32 [B, 4, H, W] in [0, 1], classes int64 [B, 1, H, W]."""
    if slices.ndim != 4 or slices.shape[1] != IMAGE_CHANNELS + 1:
        raise ValueError(f"slices must be [B, {IMAGE_CHANNELS + 1}, H, W], got {list(slices.shape)}")
    raw = torch.from_numpy(np.ascontiguousarray(slices)).to(device)
    images = raw[:, :IMAGE_CHANNELS].float().div_(255.0)
    # Nearest annotation value -> class index, as values_to_classes does (off-grid values snap).
    levels = torch.tensor(LABEL_VALUES, dtype=torch.float32, device=raw.device)
    seg = raw[:, IMAGE_CHANNELS:].float()
    classes = (seg[..., None] - levels).abs().argmin(dim=-1)
    return images, classes


def zscore(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per image, per channel: subtract the mean and divide by the sd (a constant channel -> 0)."""
    mean = images.mean(dim=(-2, -1), keepdim=True)
    sd = images.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (images - mean) / sd.clamp_min(eps)


@contextlib.contextmanager
def _plain_tensors() -> Iterator[None]:
    """Run MONAI array transforms on plain tensors: MetaTensor bookkeeping costs ~10x here."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


class Augmenter:
    """The paper's U-Net augmentation on a batch of tensors (any device), seeded.

    Order: rotation (±30°, p=0.75) and scaling (0.9-1.1, p=0.75), drawn independently
    and applied as one bilinear resampling (labels nearest, zeros outside); Gaussian noise
    (p=0.5, sd U[0, 0.05]); Gaussian blur (p=0.2, sigma U[0.5, 1]); simulated low
    resolution (zoom 0.75-1); gamma (0.8-1.2). Intensities are on the [0, 1] scale, before
    the z-score.

    The spatial step is one batched ``grid_sample``: MONAI's RandAffine couples rotation
    and scaling under one probability and costs ~2 ms a slice on a CPU. The intensity steps
    are MONAI's array transforms applied slice by slice (each draws its own parameters); they
    run on the tensors' device, except that RandGaussianNoise draws its noise with numpy on
    the CPU, the first thing to batch in torch if augmentation ever limits GPU training.

    Args:
        seed: seeds the spatial draws and each MONAI transform's generator.
        enabled: False makes the augmenter the identity.
    """

    def __init__(self, seed: int, enabled: bool = True) -> None:
        self.enabled = enabled
        seeds = np.random.SeedSequence(seed).generate_state(5)
        self._generator = torch.Generator().manual_seed(int(seeds[0]))
        self._intensity = [
            RandGaussianNoise(prob=NOISE_P, mean=0.0, std=NOISE_SD, sample_std=True),
            RandGaussianSmooth(sigma_x=BLUR_SIGMA, sigma_y=BLUR_SIGMA, prob=BLUR_P),
            # nnU-Net: nearest down, cubic up (MONAI's default "trilinear" is for 3D only).
            RandSimulateLowResolution(prob=LOWRES_P, zoom_range=LOWRES_ZOOM, downsample_mode="nearest",
                                      upsample_mode="bicubic"),
            RandAdjustContrast(prob=GAMMA_P, gamma=GAMMA_RANGE),
        ]
        for transform, state in zip(self._intensity, seeds[1:]):
            transform.set_random_state(seed=int(state))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment `images` [B, C, H, W] (float, [0, 1]) and `labels` [B, 1, H, W] (classes) alike."""
        if not self.enabled:
            return images, labels
        images, labels = self._spatial(images, labels)
        with _plain_tensors():
            out = []
            for image in images:
                for transform in self._intensity:
                    image = transform(image)
                out.append(torch.as_tensor(image, dtype=images.dtype, device=images.device))
        return torch.stack(out), labels

    def _spatial(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = images.shape[0]
        draws = torch.rand(n, 4, generator=self._generator, dtype=torch.float64)
        rotate, scale = draws[:, 0] < ROTATE_P, draws[:, 1] < SCALE_P
        angle = torch.where(rotate, (draws[:, 2] * 2 - 1) * math.radians(ROTATE_DEG), 0.0)
        factor = torch.where(scale, SCALE_RANGE[0] + draws[:, 3] * (SCALE_RANGE[1] - SCALE_RANGE[0]), 1.0)
        changed = torch.nonzero(rotate | scale).flatten()
        if len(changed) == 0:
            return images, labels
        # affine_grid maps output to input coordinates: rotate by the angle, divide by the
        # zoom factor. Slices are square, so normalised coordinates are isotropic.
        cos, sin = torch.cos(angle[changed]) / factor[changed], torch.sin(angle[changed]) / factor[changed]
        theta = torch.zeros(len(changed), 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        theta = theta.to(device=images.device, dtype=images.dtype)
        index = changed.to(images.device)
        grid = F.affine_grid(theta, [len(changed), 1, *images.shape[2:]], align_corners=False)
        images, labels = images.clone(), labels.clone()
        images[index] = F.grid_sample(images[index], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        moved = F.grid_sample(labels[index].to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        labels[index] = moved.round().to(labels.dtype)
        return images, labels


def prepare_batch(slices: np.ndarray, augmenter: Augmenter | None = None,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Stored slices -> network input (augmented if `augmenter`, then z-scored) and class targets.

    Args:
        slices: uint8 [B, 5, H, W].
        augmenter: applied before the z-score; None (validation, evaluation) skips it.
        device: where the tensors go.

    Returns:
        images float32 [B, 4, H, W], classes int64 [B, 1, H, W].
    """
    images, classes = to_tensors(slices, device)
    if augmenter is not None:
        images, classes = augmenter(images, classes)
    return zscore(images), classes
