"""The exact integer path of the memorization search against a float64 reference.

The reference is computed here, independently: Pearson r of every pair in float64 from
numpy (``np.corrcoef``), and integer dot products in int64 numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmri.metrics import memorization_int8 as exact
from synthmri.metrics.memorization import choose_arithmetic, max_correlation


def _corrcoef(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    q = queries.reshape(len(queries), -1).astype(np.float64)
    r = references.reshape(len(references), -1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(np.corrcoef(np.concatenate([q, r]))[: len(q), len(q):], nan=0.0)


def _mr_like(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """Slices with a black background and a bright textured 'head' of varying place and size."""
    out = np.zeros((n, 5, size, size), dtype=np.uint8)
    for i in range(n):
        h = int(rng.integers(size // 3, size - 4))
        y, x = rng.integers(0, size - h, 2)
        out[i, :, y:y + h, x:x + h] = rng.integers(20, 256, (5, h, h))
    return out


def test_planted_copies_and_shifted_copies_give_the_float64_maxima_and_argmaxes():
    rng = np.random.default_rng(7)
    refs = _mr_like(rng, 60)
    queries = _mr_like(rng, 20)
    queries[3] = refs[41]                                             # an exact copy
    queries[8] = np.clip(refs[7].astype(int) + rng.integers(-3, 4, refs[7].shape), 0, 255)  # a noised copy
    queries[12] = np.roll(refs[22], (2, -1), axis=(1, 2))             # a copy moved by (2, -1) pixels
    # Pixel-aligned: every maximum and argmax as float64 numpy computes them.
    full = _corrcoef(queries, refs)
    corr, arg = max_correlation(queries, refs, chunk_size=6, reference_chunk_size=16, arithmetic="int8")
    np.testing.assert_allclose(corr, full.max(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(arg, full.argmax(axis=1))
    assert corr[3] == 1.0 and arg[3] == 41 and arg[8] == 7
    # With the +-2 pixel search: the maximum over every query window, also in float64.
    s, size = 2, refs.shape[-1]
    inner = refs[:, :, s:size - s, s:size - s]
    windows = np.stack([_corrcoef(queries[:, :, s + dy:size - s + dy, s + dx:size - s + dx], inner)
                        for dy in range(-s, s + 1) for dx in range(-s, s + 1)])  # [windows, q, r]
    want = windows.max(axis=0)
    corr, arg = max_correlation(queries, refs, max_shift=s, chunk_size=7, reference_chunk_size=25, arithmetic="int8")
    np.testing.assert_allclose(corr, want.max(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(arg, want.argmax(axis=1))
    assert corr[12] == pytest.approx(1.0, abs=1e-15) and arg[12] == 22


def test_int32_partial_sums_cannot_overflow_on_vectors_longer_than_one_block():
    # 2^17 + 4096 mostly black pixels: black shifts to -128, and (-128)^2 summed over them
    # passes 2^31, where an int32 running sum would wrap.
    d = exact.K_BLOCK + 4096
    a = np.zeros((4, d), dtype=np.uint8)
    a[0, ::1000] = 255  # a little variance, for r
    a[1, ::997] = 255
    a[2, 1::2] = 255
    a[3, -1] = 255  # black through the first block: 2^14 per pixel, 2^31 at 2^17 pixels
    b = a[::-1].copy()
    q, r = exact.prepare_rows(a, torch.device("cpu")), exact.prepare_rows(b, torch.device("cpu"))
    want = (a.astype(np.int64) - 128) @ (b.astype(np.int64) - 128).T
    np.testing.assert_array_equal(exact.dot_products(q, r).numpy(), want)
    assert want.max() > 2**31  # the case that needs the blocks
    corr = exact.correlations(q, r).numpy()
    np.testing.assert_allclose(corr, np.nan_to_num(_corrcoef(a, b)), rtol=0, atol=1e-12)


def test_arithmetic_choice():
    cpu = torch.device("cpu")
    assert choose_arithmetic("float32", cpu, [np.uint8]) == "float32"
    assert choose_arithmetic("auto", cpu, [np.float32, np.uint8]) == "float32"  # not uint8: float32
    if exact.int8_matmul_available(cpu):
        assert choose_arithmetic("auto", cpu, [np.uint8, np.uint8]) == "int8"
    with pytest.raises(ValueError, match="needs uint8 images .*dtype float32"):
        choose_arithmetic("int8", cpu, [np.float32, np.uint8])
    with pytest.raises(ValueError, match=r"arithmetic must be one of \['auto', 'int8', 'float32'\], got 'int4'"):
        choose_arithmetic("int4", cpu, [np.uint8])
