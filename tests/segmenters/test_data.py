"""Training-batch sampling (real, synthetic, mixed), validation slices, augmentation, z-score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmri.data.labels import values_to_classes
from synthmri.data.store import SliceStore, StoreError
from synthmri.segmenters.data import (
    REAL, SYNTHETIC, Augmenter, BatchSampler, prepare_batch, to_tensors, validation_batches, zscore,
)

from . import write_blob_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A real store (train/val/test subjects) and two synthetic stores of different sizes."""
    root = tmp_path_factory.mktemp("stores")
    real = write_blob_store(root / "real", {"train": 3, "val": 2, "test": 1}, depth=8, seed=1, shuffle_rows=True)
    small = write_blob_store(root / "syn-a", {"train": 1}, depth=6, seed=2, generator="gen-a")
    large = write_blob_store(root / "syn-b", {"train": 4}, depth=8, seed=3, generator="gen-b")
    return SliceStore(real), SliceStore(small), SliceStore(large)


def _draw(sampler: BatchSampler, batches: int):
    drawn = [sampler.sample() for _ in range(batches)]
    return (np.concatenate([b.source for b in drawn]), np.concatenate([b.store for b in drawn]),
            np.concatenate([b.positions for b in drawn]), drawn)


def test_real_draws_only_the_train_split(stores):
    real = stores[0]
    source, store, positions, drawn = _draw(BatchSampler("real", real, [], batch_size=8, seed=0), 40)
    assert (source == REAL).all() and (store == 0).all()
    assert set(positions) <= set(real.indices("train").tolist())
    assert len(set(positions)) > len(real.indices("train")) // 2  # spread over the split
    # The slices are the stored ones at those positions.
    assert np.array_equal(drawn[0].slices, real.read(drawn[0].positions))


def test_synthetic_ensemble_pools_every_store(stores):
    _, small, large = stores
    sampler = BatchSampler("synthetic", None, [small, large], batch_size=16, seed=0)
    source, store, positions, _ = _draw(sampler, 50)
    assert (source == SYNTHETIC).all()
    assert set(store) == {0, 1}  # both stores of the ensemble are drawn
    # Pooled: each slice equally likely, so the share of a store follows its size.
    share = (store == 0).mean()
    expected = len(small) / (len(small) + len(large))
    assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / len(store))
    for number, s in enumerate((small, large)):
        assert positions[store == number].max() < len(s)


def test_mixed_draws_real_and_synthetic_equally_often(stores):
    real, small, _ = stores  # sources of very different sizes: still 1/2 each
    sampler = BatchSampler("mixed", real, [small], batch_size=16, seed=3)
    source, store, positions, _ = _draw(sampler, 100)
    n = len(source)
    assert abs((source == REAL).sum() - n / 2) < 4 * np.sqrt(n / 4)  # binomial(n, 1/2), 4 sd
    assert set(positions[source == REAL]) <= set(real.indices("train").tolist())
    assert set(store[source == SYNTHETIC]) == {1} and set(store[source == REAL]) == {0}


def test_sampling_is_seeded(stores):
    real, small, large = stores
    first = _draw(BatchSampler("mixed", real, [small, large], 8, seed=5), 5)
    again = _draw(BatchSampler("mixed", real, [small, large], 8, seed=5), 5)
    other = _draw(BatchSampler("mixed", real, [small, large], 8, seed=6), 5)
    assert all(np.array_equal(a, b) for a, b in zip(first[:3], again[:3]))
    assert not np.array_equal(first[2], other[2])


def test_validation_uses_only_the_val_split_in_index_order(stores):
    real = stores[0]
    slices = np.concatenate(list(validation_batches(real, batch_size=5)))
    assert np.array_equal(slices, real.read(real.indices("val")))


def test_sampler_rejects_missing_or_mismatched_stores(stores, tmp_path):
    real, small, _ = stores
    with pytest.raises(ValueError, match="needs at least one synthetic store"):
        BatchSampler("mixed", real, [], 4, 0)
    with pytest.raises(ValueError, match="needs a real store"):
        BatchSampler("real", None, [small], 4, 0)
    with pytest.raises(ValueError, match="train must be one of"):
        BatchSampler("both", real, [small], 4, 0)
    other = SliceStore(write_blob_store(tmp_path / "big", {"train": 1}, size=16, depth=2, generator="g"))
    with pytest.raises(StoreError, match="different image sizes"):
        BatchSampler("mixed", real, [other], 4, 0)


def test_to_tensors_scales_images_and_maps_labels(stores):
    slices = stores[0].read(np.arange(6))
    images, classes = to_tensors(slices)
    assert images.shape == (6, 4, 32, 32) and classes.shape == (6, 1, 32, 32)
    assert torch.allclose(images * 255, torch.from_numpy(slices[:, :4]).float())
    assert np.array_equal(classes[:, 0].numpy(), values_to_classes(slices[:, 4]))


def test_zscore_per_channel_per_image():
    images = torch.rand(3, 4, 16, 16) * torch.tensor([1.0, 5.0, 0.1, 2.0]).view(1, 4, 1, 1) + 3
    images[1, 2] = 7.0  # a constant channel becomes 0, not NaN
    z = zscore(images)
    assert torch.allclose(z.mean(dim=(-2, -1)), torch.zeros(3, 4), atol=1e-5)
    std = z.std(dim=(-2, -1), unbiased=False)
    assert torch.allclose(std[std > 0], torch.ones_like(std[std > 0]), atol=1e-4)
    assert torch.equal(z[1, 2], torch.zeros(16, 16))


def test_disabled_augmentation_is_identity_before_the_zscore(stores):
    slices = stores[0].read(np.arange(10))
    images, classes = prepare_batch(slices, Augmenter(seed=0, enabled=False))
    raw_images, raw_classes = to_tensors(slices)
    assert torch.equal(images, zscore(raw_images)) and torch.equal(classes, raw_classes)


def test_augmentation_is_seeded_and_keeps_labels_in_range(stores):
    slices = stores[0].read(np.arange(len(stores[0])))[:24]
    a, b, c = Augmenter(seed=7), Augmenter(seed=7), Augmenter(seed=8)
    first = [prepare_batch(slices, a) for _ in range(2)]
    again = [prepare_batch(slices, b) for _ in range(2)]
    other = prepare_batch(slices, c)
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(first[0][0], other[0])
    assert not torch.equal(first[0][0], first[1][0])  # a fresh draw per call
    plain, plain_classes = prepare_batch(slices, None)
    assert not torch.equal(first[0][0], plain)
    for x, y in first + [other]:
        assert x.shape == plain.shape and y.shape == plain_classes.shape and y.dtype == torch.int64
        assert set(torch.unique(y).tolist()) <= {0, 1, 2, 3}
        assert torch.isfinite(x).all()


def test_spatial_augmentation_moves_labels_with_the_image():
    # Channel 0 paints the tumour classes, so after rotation/scaling it must still cover them.
    classes = torch.zeros(32, 1, 32, 32, dtype=torch.int64)
    classes[:, :, 8:20, 10:26] = 2
    classes[:, :, 11:15, 14:20] = 3
    images = torch.zeros(32, 4, 32, 32)
    images[:, 0] = (classes[:, 0] > 0).float()
    moved_images, moved_classes = Augmenter(seed=1)._spatial(images, classes)
    changed = (moved_classes != classes).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.5  # most slices rotated and/or scaled (p = 0.75 each)
    agreement = ((moved_images[:, 0] > 0.5) == (moved_classes[:, 0] > 0)).float().mean()
    assert agreement > 0.97
    assert set(torch.unique(moved_classes).tolist()) <= {0, 2, 3}
