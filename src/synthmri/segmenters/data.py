"""Training batches for the segmenters: seeded sampling from slice stores, augmentation, z-score.

Sampling (paper, 'Segmentation'):

* ``real``: slices of the real store's ``train`` split;
* ``synthetic``: every slice of every synthetic store; several stores form an ensemble
  whose slices are pooled (each slice equally likely, so a larger store is drawn more);
* ``mixed``: each batch element first draws its source, real or synthetic, with
  probability 1/2, so both are sampled equally often whatever their sizes;
* ``ratio`` (paper Fig. 4): a fixed pool of ``pool_size`` slices of which a share
  ``real_share`` is real (train split) and the rest synthetic, each slice equally likely.
  The pool is the first slices of one seeded permutation of each source, so for a given
  seed a larger real share keeps every real slice of a smaller one (and the synthetic
  subsets shrink the same way): the runs of a ratio sweep differ only in the mix.

Elements are drawn uniformly with replacement (as nnU-Net samples its batches) from one
numpy generator, so a seed fixes the whole stream; in epoch mode (``epochs=True``, the
authors' Swin recipe) each epoch is instead one seeded permutation of the pool in batches,
the last short batch dropped (``mixed`` keeps drawing each element's source with
probability 1/2).

Checkpoint selection: runs with real data validate on the real store's ``val`` split, in
index order; a ``synthetic`` run holds out a seeded share of the synthetic slices
(``holdout``) and validates on them, so it never reads a real slice before evaluation.

Preprocessing: the four image channels (uint8) are scaled to [0, 1], optionally augmented
(:mod:`synthmri.segmenters.augment`, on the tensors' device), then z-scored per channel per image (the paper's last step); the annotation channel
becomes class indices 0..3 (:func:`synthmri.data.labels.values_to_classes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from synthmri.data.labels import LABEL_VALUES
from synthmri.data.store import IMAGE_CHANNELS, SliceStore, StoreError

TRAIN_SOURCES: tuple[str, ...] = ("real", "synthetic", "mixed", "ratio")
REAL, SYNTHETIC = 0, 1  # values of Batch.source


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


def ratio_pool(total: int, real_share: float) -> tuple[int, int]:
    """Real and synthetic slice counts of a ratio-experiment pool of `total` slices.

    The real count is ``real_share * total`` rounded half up; the rest is synthetic.

    Raises:
        ValueError: `total` < 1 or `real_share` outside [0, 1].
    """
    if total < 1:
        raise ValueError(f"ratio pool size must be positive, got {total}")
    if not 0.0 <= real_share <= 1.0:
        raise ValueError(f"real_share must be in [0, 1], got {real_share}")
    n_real = min(total, math.floor(real_share * total + 0.5))
    return n_real, total - n_real


def ratio_schedule(total: int, shares: Sequence[float]) -> list[tuple[float, int, int]]:
    """The ratio experiment: (real share, real slices, synthetic slices) for every share, ascending."""
    return [(float(share), *ratio_pool(total, share)) for share in sorted(shares)]


class BatchSampler:
    """Seeded stream of training batches from a real store and/or synthetic stores.

    Args:
        train: ``real``, ``synthetic``, ``mixed`` or ``ratio``.
        real: the real store (needed for ``real``, ``mixed`` and ``ratio``).
        synthetic: synthetic stores (at least one for ``synthetic`` and ``mixed``, and for
            ``ratio`` unless ``real_share`` is 1).
        batch_size: elements per batch.
        seed: seed of the sampling generator (and of the ratio pool's permutations).
        real_share: ``ratio`` only: the share of real slices in the pool.
        pool_size: ``ratio`` only: slices in the pool; 0 takes the size of the real train split.
        holdout: ``synthetic`` only: the share of the synthetic slices kept out of training
            for checkpoint selection (a seeded subset; 0 keeps all).
        epochs: sample epoch by epoch (one seeded permutation per epoch, the last short
            batch dropped) instead of with replacement.

    Attributes:
        stores: the stores sampled from, the real one (if used) first.
        pool_counts: ``ratio`` only: (real, synthetic) slices in the pool.
        holdout_positions: ``synthetic`` with `holdout` only: (store index, position) arrays
            of the held-out slices.

    Raises:
        ValueError: unknown `train`, a store or setting it needs is missing, or batch_size < 1.
        StoreError: a store it needs holds no (or too few) slices to sample, or image sizes differ.
    """

    def __init__(self, train: str, real: SliceStore | None, synthetic: Sequence[SliceStore],
                 batch_size: int, seed: int, real_share: float | None = None, pool_size: int = 0,
                 holdout: float = 0.0, epochs: bool = False) -> None:
        if train not in TRAIN_SOURCES:
            raise ValueError(f"train must be one of {TRAIN_SOURCES}, got {train!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if (train == "ratio") != (real_share is not None):
            raise ValueError("real_share is set for train='ratio' and only for it")
        uses_real = train in ("real", "mixed", "ratio")
        uses_synthetic = train in ("synthetic", "mixed") or (train == "ratio" and real_share < 1.0)
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
        pool_seed, sample_seed, holdout_seed = np.random.SeedSequence(seed).spawn(3)
        self.pool_counts: tuple[int, int] | None = None
        if train == "ratio":
            self._cut_ratio_pools(real_share, pool_size or len(self._pools[REAL][1]), np.random.default_rng(pool_seed))
        self.holdout_positions: tuple[np.ndarray, np.ndarray] | None = None
        if holdout:
            self._hold_out(holdout, np.random.default_rng(holdout_seed))
        self._rng = np.random.default_rng(sample_seed)
        self.epochs = bool(epochs)
        self._order: np.ndarray = np.empty(0, dtype=np.int64)  # epoch mode: what is left of this epoch

    def _hold_out(self, share: float, rng: np.random.Generator) -> None:
        """Move a seeded `share` of the synthetic pool out of training (checkpoint selection)."""
        if self.train != "synthetic":
            raise ValueError("holdout is for train='synthetic' only: runs with real data select on real val subjects")
        if not 0.0 < share < 1.0:
            raise ValueError(f"holdout must be a share in (0, 1), got {share}")
        stores, positions = self._pools[SYNTHETIC]
        n_holdout = int(round(share * len(positions)))
        if n_holdout < 1 or n_holdout >= len(positions):
            raise StoreError(f"{len(positions)} synthetic slices cannot be split into training and a {share:g} "
                             "hold-out for checkpoint selection; sample more synthetic slices")
        order = rng.permutation(len(positions))
        held, kept = np.sort(order[:n_holdout]), np.sort(order[n_holdout:])
        self.holdout_positions = (stores[held], positions[held])
        self._pools[SYNTHETIC] = (stores[kept], positions[kept])

    def steps_per_epoch(self) -> int:
        """Full batches in one pass over the training pool (the last short batch dropped).

        Raises:
            StoreError: the pool holds fewer slices than one batch.
        """
        total = sum(len(positions) for _, positions in self._pools.values())
        if total < self.batch_size:
            raise StoreError(f"{total} training slices are fewer than one batch of {self.batch_size}")
        return total // self.batch_size

    def _cut_ratio_pools(self, real_share: float, total: int, rng: np.random.Generator) -> None:
        """Keep the first n slices of one seeded permutation per source (nested across shares)."""
        counts = ratio_pool(total, real_share)
        available = {kind: len(pool[1]) for kind, pool in self._pools.items()}
        for kind, (name, need) in zip((REAL, SYNTHETIC), zip(("real train", "synthetic"), counts)):
            # Permute even an unused source, so the other's permutation never depends on the share.
            order = rng.permutation(available.get(kind, 0))
            if need > available.get(kind, 0):
                raise StoreError(f"ratio pool of {total} slices at real share {real_share:g} needs {need} {name} "
                                 f"slices, only {available.get(kind, 0)} exist; lower segmenter.ratio_total")
            if kind in self._pools:
                stores, positions = self._pools[kind]
                self._pools[kind] = (stores[order[:need]], positions[order[:need]])
        self._pools = {kind: pool for kind, pool in self._pools.items() if len(pool[1])}
        self.pool_counts = counts

    @property
    def image_size(self) -> int:
        return self.stores[0].image_size

    def sample(self) -> Batch:
        """Draw the next batch (the same sequence for the same seed)."""
        n = self.batch_size
        if self.epochs and self.train != "mixed":
            return self._next_in_epoch()
        if self.train == "mixed":
            source = np.where(self._rng.random(n) < 0.5, REAL, SYNTHETIC)
        elif self.train == "ratio":
            # Every pooled slice equally likely: real with probability n_real / total.
            n_real, n_synthetic = self.pool_counts
            source = np.where(self._rng.random(n) < n_real / (n_real + n_synthetic), REAL, SYNTHETIC)
        else:
            source = np.full(n, REAL if self.train == "real" else SYNTHETIC)
        store = np.empty(n, dtype=np.int64)
        positions = np.empty(n, dtype=np.int64)
        for kind, (pool_store, pool_positions) in self._pools.items():
            where = np.flatnonzero(source == kind)
            pick = self._rng.integers(0, len(pool_positions), size=len(where))
            store[where], positions[where] = pool_store[pick], pool_positions[pick]
        return self._read(source, store, positions)

    def _next_in_epoch(self) -> Batch:
        """The next full batch of this epoch's permutation; a new permutation when too few are left."""
        kinds = list(self._pools)
        stores = np.concatenate([self._pools[k][0] for k in kinds])
        positions = np.concatenate([self._pools[k][1] for k in kinds])
        sources = np.concatenate([np.full(len(self._pools[k][1]), k) for k in kinds])
        if len(self._order) < self.batch_size:
            self.steps_per_epoch()  # a pool smaller than one batch is an error, not an endless loop
            self._order = self._rng.permutation(len(positions))
        pick, self._order = self._order[:self.batch_size], self._order[self.batch_size:]
        return self._read(sources[pick], stores[pick], positions[pick])

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: the sampling generator's state and what is left of this epoch.

        Plain numbers, strings and a tensor, so a checkpoint holding it loads with
        ``torch.load(weights_only=True)``.
        """
        return {"rng": self._rng.bit_generator.state, "order": torch.from_numpy(self._order.copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream from what :meth:`state_dict` returned (same stores and settings)."""
        self._rng.bit_generator.state = dict(state["rng"])
        self._order = state["order"].numpy().astype(np.int64)

    def _read(self, source: np.ndarray, store: np.ndarray, positions: np.ndarray) -> Batch:
        slices = np.empty((len(positions), *self._slice_shape()), dtype=np.uint8)
        for number in np.unique(store):
            where = np.flatnonzero(store == number)
            slices[where] = self.stores[number].read(positions[where])
        return Batch(slices=slices, source=source, store=store, positions=positions)

    def holdout_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The held-out synthetic slices (uint8 [b, 5, H, W]) in a fixed order."""
        if self.holdout_positions is None:
            raise ValueError("this sampler holds no slices out")
        stores, positions = self.holdout_positions
        for start in range(0, len(positions), batch_size):
            yield self._read(np.full(len(positions[start:start + batch_size]), SYNTHETIC),
                             stores[start:start + batch_size], positions[start:start + batch_size]).slices

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


def raw_intensities(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] back to the stored 0-255 scale, unnormalised (the authors' Swin inputs)."""
    return images * 255.0


#: Input normalisations by name (``Architecture.normalization``): what a network is fed.
NORMALIZATIONS = {"zscore": zscore, "raw": raw_intensities}


def prepare_batch(slices: np.ndarray, augmenter: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
                  device: torch.device | str = "cpu", normalization: str = "zscore") -> tuple[torch.Tensor, torch.Tensor]:
    """Stored slices -> network input (augmented if `augmenter`, then normalised) and class targets.

    Args:
        slices: uint8 [B, 5, H, W].
        augmenter: applied on [0, 1] intensities before normalising; None (validation,
            evaluation) skips it.
        device: where the tensors go.
        normalization: a key of :data:`NORMALIZATIONS`: ``zscore`` per image and channel
            (the U-Nets), or ``raw`` 0-255 intensities (the authors' Swin).

    Returns:
        images float32 [B, 4, H, W], classes int64 [B, 1, H, W].
    """
    images, classes = to_tensors(slices, device)
    if augmenter is not None:
        images, classes = augmenter(images, classes)
    return NORMALIZATIONS[normalization](images), classes
