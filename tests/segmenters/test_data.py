"""Training-batch sampling (real, synthetic, mixed), validation slices, augmentation, z-score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmri.data.labels import values_to_classes
from synthmri.data.store import SliceStore, StoreError
from synthmri.segmenters.augment import Augmenter
from synthmri.segmenters.data import (
    REAL,
    SYNTHETIC,
    BatchSampler,
    prepare_batch,
    ratio_pool,
    ratio_schedule,
    to_tensors,
    validation_batches,
    zscore,
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


def test_ratio_schedule_splits_a_fixed_total():
    assert ratio_schedule(10, [0.5, 0.0, 1.0, 0.25]) == [(0.0, 0, 10), (0.25, 3, 7), (0.5, 5, 5), (1.0, 10, 0)]
    assert all(sum(ratio_pool(37, share)) == 37 for share in np.linspace(0, 1, 11))
    with pytest.raises(ValueError, match="real_share must be in \\[0, 1\\], got 1.5"):
        ratio_pool(10, 1.5)
    with pytest.raises(ValueError, match="pool size must be positive, got 0"):
        ratio_pool(0, 0.5)


def _ratio_draws(stores, share: float, pool_size: int = 16, seed: int = 4):
    real, small, large = stores
    sampler = BatchSampler("ratio", real, [small, large], batch_size=16, seed=seed, real_share=share,
                           pool_size=pool_size)
    source, store, positions, _ = _draw(sampler, 150)  # 2400 draws: every pooled slice is hit
    pooled_real = set(positions[source == REAL].tolist())
    pooled_synthetic = set(zip(store[source == SYNTHETIC].tolist(), positions[source == SYNTHETIC].tolist()))
    return sampler, source, pooled_real, pooled_synthetic


def test_ratio_pool_holds_the_share_and_grows_nested(stores):
    real = stores[0]
    previous_real, previous_synthetic = set(), None
    for share in (0.0, 0.25, 0.5, 1.0):
        sampler, source, pooled_real, pooled_synthetic = _ratio_draws(stores, share)
        n_real, n_synthetic = ratio_pool(16, share)
        assert sampler.pool_counts == (n_real, n_synthetic)
        assert len(pooled_real) == n_real and len(pooled_synthetic) == n_synthetic
        assert pooled_real <= set(real.indices("train").tolist())
        # Each pooled slice equally likely: the real share of draws is the pool's.
        n, p = len(source), n_real / 16
        assert abs((source == REAL).sum() - n * p) <= 4 * np.sqrt(n * p * (1 - p)) + 1e-9
        # A larger real share keeps every real slice of a smaller one; the synthetic pool shrinks inside itself.
        assert previous_real <= pooled_real
        assert previous_synthetic is None or pooled_synthetic <= previous_synthetic
        previous_real, previous_synthetic = pooled_real, pooled_synthetic


def test_ratio_pool_defaults_to_the_real_split_and_names_a_shortage(stores):
    real, small, large = stores
    sampler = BatchSampler("ratio", real, [], 4, 0, real_share=1.0)  # no synthetic needed at 100 % real
    assert sampler.pool_counts == (len(real.indices("train")), 0)
    with pytest.raises(StoreError, match="needs 30 real train slices, only 24 exist; lower segmenter.ratio_total"):
        BatchSampler("ratio", real, [small, large], 4, 0, real_share=1.0, pool_size=30)
    with pytest.raises(StoreError, match="needs 45 synthetic slices, only 38 exist"):
        BatchSampler("ratio", real, [small, large], 4, 0, real_share=0.1, pool_size=50)
    with pytest.raises(ValueError, match="real_share is set for train='ratio' and only for it"):
        BatchSampler("ratio", real, [small], 4, 0)


def test_sampling_is_seeded(stores):
    real, small, large = stores
    first = _draw(BatchSampler("mixed", real, [small, large], 8, seed=5), 5)
    again = _draw(BatchSampler("mixed", real, [small, large], 8, seed=5), 5)
    other = _draw(BatchSampler("mixed", real, [small, large], 8, seed=6), 5)
    assert all(np.array_equal(a, b) for a, b in zip(first[:3], again[:3]))
    assert not np.array_equal(first[2], other[2])


@pytest.mark.parametrize("epochs", [False, True])
def test_a_restored_sampler_continues_the_same_stream(stores, tmp_path, epochs):
    real = stores[0]
    sampler = BatchSampler("real", real, [], batch_size=4, seed=5, epochs=epochs)
    _draw(sampler, 3)
    torch.save(sampler.state_dict(), tmp_path / "sampler.pt")
    expected = _draw(sampler, 4)[2]
    restored = BatchSampler("real", real, [], batch_size=4, seed=5, epochs=epochs)
    restored.load_state_dict(torch.load(tmp_path / "sampler.pt", weights_only=True))  # no pickled code
    assert np.array_equal(_draw(restored, 4)[2], expected)


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
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 4, 16, 16, generator=generator) * torch.tensor([1.0, 5.0, 0.1, 2.0]).view(1, 4, 1, 1) + 3
    images[1, 2] = 7.0  # a constant channel becomes 0, not NaN
    z = zscore(images)
    # float32: the mean of 256 z-scores of a narrow channel (0.1 wide around 3) is zero to ~1e-5
    assert torch.allclose(z.mean(dim=(-2, -1)), torch.zeros(3, 4), atol=5e-5)
    std = z.std(dim=(-2, -1), unbiased=False)
    assert torch.allclose(std[std > 0], torch.ones_like(std[std > 0]), atol=1e-4)
    assert torch.equal(z[1, 2], torch.zeros(16, 16))


def test_disabled_augmentation_is_identity_before_the_zscore(stores):
    slices = stores[0].read(np.arange(10))
    images, classes = prepare_batch(slices, Augmenter(seed=0, enabled=False))
    raw_images, raw_classes = to_tensors(slices)
    assert torch.equal(images, zscore(raw_images)) and torch.equal(classes, raw_classes)


def test_synthetic_holdout_is_a_seeded_disjoint_share_never_trained_on(stores):
    _, small, large = stores
    sampler = BatchSampler("synthetic", None, [small, large], batch_size=8, seed=3, holdout=0.25)
    total = len(small) + len(large)
    held_stores, held_positions = sampler.holdout_positions
    held = set(zip(held_stores.tolist(), held_positions.tolist()))
    assert len(held) == round(0.25 * total)
    _, store, positions, _ = _draw(sampler, 200)
    drawn = set(zip(store.tolist(), positions.tolist()))
    assert not drawn & held  # never a training sample
    assert len(drawn) == total - len(held)  # every other slice is
    again = BatchSampler("synthetic", None, [small, large], batch_size=8, seed=3, holdout=0.25)
    assert set(zip(*(a.tolist() for a in again.holdout_positions))) == held
    listed = np.concatenate(list(sampler.holdout_batches(5)))
    expected = np.concatenate([[small, large][s].read(np.array([p])) for s, p in zip(held_stores, held_positions)])
    np.testing.assert_array_equal(listed, expected)


def test_holdout_is_refused_where_real_data_selects(stores):
    real, small, _ = stores
    with pytest.raises(ValueError, match="holdout is for train='synthetic' only"):
        BatchSampler("mixed", real, [small], batch_size=4, seed=0, holdout=0.2)
    with pytest.raises(StoreError, match="cannot be split into training and a 0.99 hold-out"):
        BatchSampler("synthetic", None, [small], batch_size=4, seed=0, holdout=0.99)


def test_epoch_mode_visits_every_slice_once_per_epoch_and_drops_the_short_batch(stores):
    real, _, _ = stores
    n_train = len(real.indices("train"))
    batch = 5
    sampler = BatchSampler("real", real, [], batch_size=batch, seed=4, epochs=True)
    assert sampler.steps_per_epoch() == n_train // batch
    for _ in range(2):
        _, _, positions, _ = _draw(sampler, n_train // batch)
        assert len(set(positions.tolist())) == len(positions) == (n_train // batch) * batch
        assert set(positions.tolist()) <= set(real.indices("train").tolist())
    with pytest.raises(StoreError, match="fewer than one batch"):
        BatchSampler("real", real, [], batch_size=n_train + 1, seed=0, epochs=True).sample()
