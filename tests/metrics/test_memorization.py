"""max_correlation against a brute-force float64 np.corrcoef reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synthmri.data.store import SliceRow, SliceStore, StoreWriter
from synthmri.metrics.memorization import max_correlation, summarize


def brute_force(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(max, argmax, full matrix) of Pearson r in float64; zero-variance rows count as r = 0."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    r = references.reshape(len(references), -1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(np.concatenate([q, r]))[: len(q), len(q):]
    full = np.nan_to_num(full, nan=0.0)
    return full.max(axis=1), full.argmax(axis=1), full


def images(rng: np.random.Generator, n: int, size: int = 16) -> np.ndarray:
    """Smooth-ish uint8 images (noise plus a per-image blob) so correlations vary widely."""
    base = rng.integers(0, 256, (n, 5, size, size)).astype(np.float64)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(0, size, 2)
        base[i] += 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20.0)
    return np.clip(base * 0.6, 0, 255).astype(np.uint8)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    refs = images(rng, 97)
    queries = images(rng, 41)
    queries[4] = refs[60]  # an exact copy
    noisy = refs[13].astype(np.int64) + rng.integers(-12, 13, refs[13].shape)
    queries[9] = np.clip(noisy, 0, 255).astype(np.uint8)  # a noised copy
    return queries, refs


def assert_matches(result: tuple[np.ndarray, np.ndarray], queries: np.ndarray, refs: np.ndarray) -> None:
    got, arg = result
    want, want_arg, full = brute_force(queries, refs)
    assert got.dtype == np.float64 and got.shape == (len(queries),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # The chosen reference really attains the maximum; where the top two are clearly apart it
    # is the same index as numpy's.
    np.testing.assert_allclose(full[np.arange(len(queries)), arg], want, atol=1e-5)
    top2 = np.sort(full, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    np.testing.assert_array_equal(arg[clear], want_arg[clear])


@pytest.mark.parametrize("arithmetic", ["int8", "float32"])
@pytest.mark.parametrize("chunk, ref_chunk", [(4096, None), (7, 13), (1, 97), (41, 1), (40, 96)])
def test_matches_brute_force_for_any_chunking(data, chunk, ref_chunk, arithmetic):
    queries, refs = data
    result = max_correlation(queries, refs, chunk, reference_chunk_size=ref_chunk, arithmetic=arithmetic)
    assert_matches(result, queries, refs)


def test_copies_are_found(data):
    queries, refs = data
    corr, arg = max_correlation(queries, refs, chunk_size=8, reference_chunk_size=10)
    assert corr[4] == pytest.approx(1.0, abs=1e-5) and arg[4] == 60
    assert 0.9 < corr[9] < 1.0 and arg[9] == 13
    others = np.delete(corr, [4, 9])
    assert others.max() < corr[9]


@pytest.mark.parametrize("arithmetic", ["int8", "float32"])
def test_zero_variance_images_correlate_zero(data, arithmetic):
    queries, refs = data
    queries, refs = queries.copy(), refs.copy()
    queries[0] = 0      # all-black query
    queries[1] = 77     # constant query
    refs[5] = 200       # constant reference: r = 0 with everything
    corr, arg = max_correlation(queries, refs, chunk_size=6, reference_chunk_size=11, arithmetic=arithmetic)
    assert corr[0] == 0.0 and corr[1] == 0.0 and arg[0] == 0
    assert np.all(np.isfinite(corr))
    assert_matches((corr, arg), queries, refs)


def test_float_input_and_negative_correlation():
    rng = np.random.default_rng(2)
    refs = rng.normal(size=(30, 50)).astype(np.float32)
    queries = -refs[:5] * 3.0 + 1.0  # perfectly anti-correlated with refs[:5]
    corr, _ = max_correlation(queries, refs, chunk_size=2, reference_chunk_size=7)
    want, _, full = brute_force(queries, refs)
    np.testing.assert_allclose(corr, want, atol=1e-5)
    assert np.allclose(full[np.arange(5), np.arange(5)], -1.0)


def test_channel_selection_and_per_channel(data):
    queries, refs = data
    corr, _ = max_correlation(queries, refs, chunk_size=9, channels=["t1", "flair"])
    want, _, _ = brute_force(queries[:, [0, 3]], refs[:, [0, 3]])
    np.testing.assert_allclose(corr, want, atol=1e-5)
    per, per_arg = max_correlation(queries, refs, chunk_size=9, channels=[1, "seg"], per_channel=True)
    assert per.shape == (len(queries), 2) and per_arg.shape == (len(queries), 2)
    for column, channel in enumerate([1, 4]):
        want, _, _ = brute_force(queries[:, channel], refs[:, channel])
        np.testing.assert_allclose(per[:, column], want, atol=1e-5)
    with pytest.raises(ValueError, match="unknown channel"):
        max_correlation(queries, refs, channels=["t3"])


def test_store_rows_input(tmp_path: Path, data):
    queries, refs = data
    with StoreWriter(tmp_path / "s", image_size=16, source={"path": "test"}, shard_size=20) as writer:
        rows = [SliceRow(f"s{i}", f"p{i % 5}", i, "train" if i % 3 else "test") for i in range(len(refs))]
        writer.add(refs, rows)
    store = SliceStore(tmp_path / "s")
    train = store.indices("train")
    corr, arg = max_correlation(queries, (store, train), chunk_size=16, reference_chunk_size=9)
    assert_matches((corr, arg), queries, refs[train])
    corr_all, _ = max_correlation(store, store, chunk_size=50)
    np.testing.assert_allclose(corr_all, 1.0, atol=1e-5)  # every slice is its own nearest


def test_bad_inputs(data):
    queries, refs = data
    with pytest.raises(ValueError, match="shape"):
        max_correlation(queries[:, :, :8], refs)
    with pytest.raises(ValueError, match="no images"):
        max_correlation(queries, refs[:0])
    with pytest.raises(ValueError, match="NaN"):
        max_correlation(np.full((2, 10), np.nan), np.ones((3, 10)))


def test_summarize():
    values = np.array([0.1, 0.5, 0.96, 0.99, 0.2])
    s = summarize(values, 0.95)
    assert s["n"] == 5 and s["share_above_threshold"] == pytest.approx(0.4)
    assert s["p99"] == pytest.approx(np.percentile(values, 99)) and s["max"] == 0.99
    assert summarize(np.array([]), 0.95)["n"] == 0


@pytest.mark.parametrize("arithmetic", ["int8", "float32"])
def test_slices_with_flat_background_stay_exact(arithmetic):
    """MR-like slices (86% background) at 64x64x5: sequential float32 sums would drift ~1e-5."""
    rng = np.random.default_rng(4)
    refs = np.zeros((12, 5, 64, 64), dtype=np.uint8)
    for i in range(len(refs)):
        y, x = rng.integers(10, 30, 2)
        refs[i, :, y : y + 24, x : x + 24] = rng.integers(40, 230, (5, 24, 24))
    queries = np.concatenate([refs[::-1], refs[1:2]])  # exact copies of all, in reverse
    queries[-1, :, 20:30, 20:30] = 255  # and a modified copy
    corr, arg = max_correlation(queries, refs, chunk_size=5, reference_chunk_size=5, arithmetic=arithmetic)
    assert_matches((corr, arg), queries, refs)
    np.testing.assert_allclose(corr[:-1], 1.0, rtol=0, atol=5e-6)
    np.testing.assert_array_equal(arg[:-1], np.arange(len(refs))[::-1])


@pytest.mark.parametrize("arithmetic", ["int8", "float32"])
def test_shift_search_equals_a_brute_force_over_windows(arithmetic):
    """max_shift = s: the highest r over references and the (2s+1)^2 query windows, by np.corrcoef."""
    rng = np.random.default_rng(11)
    refs = rng.integers(0, 256, (7, 2, 12, 12), dtype=np.uint8)
    queries = np.concatenate([rng.integers(0, 256, (3, 2, 12, 12), dtype=np.uint8),
                              np.roll(refs[[4]], (1, -2), axis=(2, 3))])  # a copy moved by (1, -2)
    s = 2
    expected = np.full(len(queries), -np.inf)
    argmax = np.zeros(len(queries), dtype=int)
    for i, query in enumerate(queries):
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                window = query[:, s + dy:12 - s + dy, s + dx:12 - s + dx].ravel().astype(float)
                for j, ref in enumerate(refs):
                    r = np.corrcoef(window, ref[:, s:12 - s, s:12 - s].ravel().astype(float))[0, 1]
                    if r > expected[i]:
                        expected[i], argmax[i] = r, j
    corr, index = max_correlation(queries, refs, max_shift=s, chunk_size=2, reference_chunk_size=3,
                                  arithmetic=arithmetic)
    assert np.allclose(corr, expected, atol=1e-5) and np.array_equal(index, argmax)
    assert corr[-1] == pytest.approx(1.0, abs=1e-6) and index[-1] == 4
    aligned, _ = max_correlation(queries[-1:], refs, arithmetic=arithmetic)
    assert aligned[0] < 0.5  # pixel-aligned, the moved copy looks like noise


def test_shift_search_rejects_impossible_shifts():
    images = np.zeros((2, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="max_shift must be in 0..3 for 8x8 images, got 4"):
        max_correlation(images, images, max_shift=4)
    with pytest.raises(ValueError, match="max_shift needs images"):
        max_correlation(np.zeros((2, 10)), np.zeros((2, 10)), max_shift=1)
