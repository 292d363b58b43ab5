"""Memorization: each query image's highest Pearson correlation against a reference set.

For every synthetic slice we want the training slice it resembles most (the paper's
memorization test); the same statistic for held-out real test slices is the baseline that
says what "resembles" means for two different patients. Pearson r of two flattened
images x, y is the dot product of their centred, L2-normalised versions, so all pairs
of a query block against a reference block are one matrix product:

    r = (Q - mean(Q)) / |Q - mean(Q)|  @  ((R - mean(R)) / |R - mean(R)|).T

Both sides are processed in chunks (rows of Q by rows of R) with a running max/argmax,
so memory stays bounded by ``chunk_size x reference_chunk_size`` similarities plus two
prepared chunks (and a reference cache of at most ``cache_bytes``), whatever the number
of images. Two arithmetics compute r:

- ``int8`` (the default for uint8 images where the device has an int8 matrix product): the
  numerator is an exact integer dot product, run as an int8 GEMM with int32 accumulation
  plus a rank-one correction, and r is a float64 quotient of exact integers
  (:mod:`synthmri.metrics.memorization_int8`). Same maxima and argmaxes as float64.
- ``float32``: centred, normalised float32 rows whose products run with IEEE precision
  (TF32 is switched off for the call) and accumulate over blocks of 2048 columns, so no
  float32 running sum gets long. Agrees with a float64 ``np.corrcoef`` to a few 1e-6.

Zero-variance images (e.g. an all-black slice) have no defined Pearson r; here their
correlation with anything is 0, so they can never look like a copy and a constant
reference never wins over a positively correlated one.

Shifted copies (``max_shift`` > 0): a generator can reproduce a training slice moved by a
pixel or two, which pixel-aligned Pearson r misses. With ``max_shift = s`` every reference
is cut to its centre ``[s:H-s, s:W-s]`` and every query is compared through each of the
``(2s + 1)^2`` windows of that size within ``s`` pixels of the centre; the statistic is
the highest r over references and windows. A query that is a reference shifted by up to
``s`` pixels then scores r = 1 on the window that undoes the shift. It costs
``(2s + 1)^2`` times the products of ``s = 0``, the published statistic.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
import torch

from synthmri.config.choices import MEMORIZATION_ARITHMETIC
from synthmri.data.store import CHANNELS, SliceStore
from synthmri.metrics import memorization_int8 as exact
from synthmri.metrics.memorization_float32 import Float32, ieee_float32

#: What the functions accept as a set of images: an array [n, C, H, W] (or [n, d] already
#: flattened), a whole SliceStore, or ``(store, positions)`` for some of its rows.
Images = Union[np.ndarray, SliceStore, tuple[SliceStore, Sequence[int]]]

# Prepared (normalised float32) references are kept across query chunks up to this size, so a
# query set larger than one chunk does not re-read and re-normalise the references each pass.
DEFAULT_CACHE_BYTES = 1 << 30


class _Rows:
    """Uniform chunked access to an array or to rows of a SliceStore."""

    def __init__(self, source: Images, what: str) -> None:
        self.store: SliceStore | None = None
        self.array: np.ndarray | None = None
        if isinstance(source, SliceStore):
            self.store, self.positions = source, np.arange(len(source))
        elif isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], SliceStore):
            self.store, self.positions = source[0], np.asarray(source[1], dtype=np.int64)
        else:
            self.array = np.asarray(source)
            if self.array.ndim < 2:
                raise ValueError(f"{what}: expected images [n, C, H, W] or vectors [n, d], got shape {list(self.array.shape)}")
            if self.array.dtype.kind not in "uif":
                raise ValueError(f"{what}: expected a numeric array, got dtype {self.array.dtype}")
        self.what = what

    def __len__(self) -> int:
        return len(self.positions) if self.store is not None else len(self.array)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.store is not None else self.array.dtype

    @property
    def item_shape(self) -> tuple[int, ...]:
        if self.store is not None:
            size = self.store.image_size
            return (len(CHANNELS), size, size)
        return tuple(self.array.shape[1:])

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.store is not None:
            return self.store.read(self.positions[start:stop])
        return np.asarray(self.array[start:stop])


def resolve_channels(channels: Sequence[int | str] | None, n_channels: int) -> list[int]:
    """Channel indices from names (``"t1"``, ``"seg"``...) or indices; None means all.

    Raises:
        ValueError: an unknown name or an index outside ``0..n_channels-1``.
    """
    if channels is None:
        return list(range(n_channels))
    indices = []
    for channel in channels:
        if isinstance(channel, str):
            if channel not in CHANNELS:
                raise ValueError(f"unknown channel {channel!r}; known: {list(CHANNELS)}")
            channel = CHANNELS.index(channel)
        channel = int(channel)
        if not 0 <= channel < n_channels:
            raise ValueError(f"channel index {channel} out of range for {n_channels} channels")
        indices.append(channel)
    if not indices:
        raise ValueError("channels selects no channel")
    return indices


Window = tuple[slice, slice] | None  # rows and columns of each image that enter the vector


def shift_windows(height: int, width: int, max_shift: int) -> tuple[Window, list[Window]]:
    """The reference window and the query windows of a shift search (see the module docstring).

    Raises:
        ValueError: `max_shift` negative or leaving no pixels.
    """
    if max_shift < 0 or 2 * max_shift >= min(height, width):
        raise ValueError(f"max_shift must be in 0..{(min(height, width) - 1) // 2} for {height}x{width} images, "
                         f"got {max_shift}")
    if max_shift == 0:
        return None, [None]
    s = max_shift
    reference = (slice(s, height - s), slice(s, width - s))
    queries = [(slice(s + dy, height - s + dy), slice(s + dx, width - s + dx))
               for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
    return reference, queries


ARITHMETIC = MEMORIZATION_ARITHMETIC
KERNELS = {"int8": exact.Int8, "float32": Float32}


def select(chunk: np.ndarray, channels: list[int] | None, window: Window) -> np.ndarray:
    """The channels and the window of each image that enter its vector."""
    if channels is not None:
        chunk = chunk[:, channels]
    if window is not None:
        chunk = chunk[:, :, window[0], window[1]]
    return chunk


def choose_arithmetic(arithmetic: str, device: torch.device, dtypes: Sequence[np.dtype]) -> str:
    """``int8`` or ``float32`` for a search on `device` over images of `dtypes`.

    ``auto`` takes the exact integer path where it is faster: uint8 images (every store) and
    an int8 matrix product on the device (``torch._int_mm``: oneDNN's VNNI kernels on x86
    CPUs, int8 tensor cores on CUDA); float32 otherwise.

    Raises:
        ValueError: an unknown `arithmetic`, or ``int8`` asked for images that are not uint8
            or on a device without an int8 product.
    """
    if arithmetic not in ARITHMETIC:
        raise ValueError(f"arithmetic must be one of {list(ARITHMETIC)}, got {arithmetic!r}")
    if arithmetic == "float32":
        return "float32"
    uint8 = all(np.dtype(dtype) == np.uint8 for dtype in dtypes)
    available = uint8 and exact.int8_matmul_available(device)
    if arithmetic == "int8" and not available:
        why = (f"images of dtype {', '.join(sorted({str(np.dtype(d)) for d in dtypes}))}" if not uint8
               else f"no int8 matrix product (torch._int_mm) on {device}")
        raise ValueError(f"arithmetic 'int8' needs uint8 images and an int8 matrix product: {why}")
    return "int8" if available else "float32"


def _max_correlation_one(
    queries: _Rows,
    references: _Rows,
    channels: list[int] | None,
    chunk_size: int,
    reference_chunk_size: int,
    device: torch.device,
    cache_bytes: int,
    progress: Callable[[int, int], None] | None,
    max_shift: int = 0,
    arithmetic: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    n_queries, n_refs = len(queries), len(references)
    best_all = np.empty(n_queries, dtype=np.float64)
    index_all = np.empty(n_queries, dtype=np.int64)
    shape = references.item_shape
    if len(shape) == 1:
        r_window, q_windows = None, [None]
        d = shape[0]
    else:
        r_window, q_windows = shift_windows(shape[1], shape[2], max_shift)
        d = (shape[1] - 2 * max_shift) * (shape[2] - 2 * max_shift) * (len(channels) if channels is not None else shape[0])
    kind = KERNELS[arithmetic]
    use_cache = (n_queries > chunk_size or len(q_windows) > 1) and n_refs * d * kind.bytes_per_pixel <= cache_bytes
    kernel = kind(device, min(chunk_size, n_queries), min(reference_chunk_size, n_refs), d, use_cache)
    cache: dict[int, object] = {}
    for q_start in range(0, n_queries, chunk_size):
        q_stop = min(q_start + chunk_size, n_queries)
        raw = queries.read(q_start, q_stop)
        best = torch.full((q_stop - q_start,), -torch.inf, dtype=torch.float64, device=device)
        index = torch.zeros(q_stop - q_start, dtype=torch.int64, device=device)
        for q_window in q_windows:  # one window without a shift search
            q = kernel.queries(select(raw, channels, q_window), queries.what)
            for r_start in range(0, n_refs, reference_chunk_size):
                r = cache.get(r_start)
                if r is None:
                    r_stop = min(r_start + reference_chunk_size, n_refs)
                    r = kernel.references(select(references.read(r_start, r_stop), channels, r_window),
                                          references.what)
                    if use_cache:
                        cache[r_start] = r
                block_max, block_arg = kernel.correlations(q, r).max(dim=1)
                block_max = block_max.double()  # best is float64: exact to compare and to return
                # Strictly greater: on ties the earlier reference keeps the argmax, like np.argmax.
                better = block_max > best
                best = torch.where(better, block_max, best)
                index = torch.where(better, block_arg + r_start, index)
        best_all[q_start:q_stop] = best.clamp_(-1.0, 1.0).cpu().numpy()
        index_all[q_start:q_stop] = index.cpu().numpy()
        if progress is not None:
            progress(q_stop, n_queries)
    return best_all, index_all


def max_correlation(
    queries: Images,
    references: Images,
    chunk_size: int = 4096,
    *,
    reference_chunk_size: int | None = None,
    channels: Sequence[int | str] | None = None,
    per_channel: bool = False,
    max_shift: int = 0,
    device: str | torch.device | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    progress: Callable[[int, int], None] | None = None,
    arithmetic: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Highest Pearson correlation of each query image against all reference images.

    Args:
        queries: images to score: array [n, C, H, W] (any numeric dtype; uint8 from a
            store) or [n, d], a SliceStore, or ``(store, positions)``.
        references: the images searched (e.g. the training slices), same forms.
        chunk_size: query rows per matrix product.
        reference_chunk_size: reference rows per matrix product (default: chunk_size).
            Peak memory is about ``(chunk_size + reference_chunk_size) * d * 4`` bytes plus
            ``chunk_size * reference_chunk_size * 4`` for the similarity block.
        channels: channels that enter the flattened vector, by index or name
            (``["t1", "t1ce", "t2", "flair"]`` leaves the annotation out); default all.
        per_channel: score each selected channel on its own instead of jointly.
        max_shift: also compare every query shifted by up to this many pixels in each
            direction (see the module docstring); 0, the default, is the published statistic.
        device: torch device for the products (``"cuda"`` for a GPU); default CPU.
        cache_bytes: keep the prepared references in memory across query chunks when they
            fit in this many bytes (only matters when queries span several chunks).
        progress: called as ``progress(queries_done, n_queries)`` after each query chunk
            (with ``per_channel``, per channel pass).
        arithmetic: ``int8`` (exact integer products of uint8 images, memorization_int8),
            ``float32`` (normalised float32 rows), or ``auto`` (the default): int8 where
            the images are uint8 and the device has an int8 matrix product
            (:func:`choose_arithmetic`).

    Returns:
        ``(max_corr, argmax)``: float64 [n] and int64 [n], the highest correlation and the
        position of that reference within `references` (the first on exact ties). On the
        int8 path r is a float64 quotient of exact integers; on the float32 path two
        references within float32 rounding (~1e-6) of each other may swap. With
        ``per_channel`` both are [n, len(channels)]. A zero-variance image correlates 0
        with everything (see the module docstring).

    Raises:
        ValueError: empty inputs, mismatched image shapes, bad chunk sizes or channels,
            non-finite pixels.
    """
    q_rows, r_rows = _Rows(queries, "queries"), _Rows(references, "references")
    if len(r_rows) == 0:
        raise ValueError("references: no images to compare against")
    if q_rows.item_shape != r_rows.item_shape:
        raise ValueError(f"queries have shape {list(q_rows.item_shape)} per image, references {list(r_rows.item_shape)}")
    reference_chunk_size = reference_chunk_size or chunk_size
    if chunk_size < 1 or reference_chunk_size < 1:
        raise ValueError(f"chunk sizes must be positive, got {chunk_size} and {reference_chunk_size}")
    flat = len(q_rows.item_shape) == 1
    if flat and channels is not None:
        raise ValueError("channels needs images [n, C, H, W], got flattened vectors [n, d]")
    if flat and max_shift:
        raise ValueError("max_shift needs images [n, C, H, W], got flattened vectors [n, d]")
    if not flat:
        shift_windows(q_rows.item_shape[1], q_rows.item_shape[2], max_shift)  # validates max_shift
    selected = None if flat else resolve_channels(channels, q_rows.item_shape[0])
    device = torch.device(device) if device is not None else torch.device("cpu")
    # All channels in order need no selection (which would copy every chunk).
    joint = None if selected is None or selected == list(range(q_rows.item_shape[0])) else selected
    passes = [[c] for c in selected] if per_channel and selected is not None else [joint]
    arithmetic = choose_arithmetic(arithmetic, device, [q_rows.dtype, r_rows.dtype])
    results = []
    with torch.inference_mode(), ieee_float32():
        for channel_set in passes:
            results.append(_max_correlation_one(q_rows, r_rows, channel_set, chunk_size, reference_chunk_size,
                                                device, cache_bytes, progress, max_shift, arithmetic))
    if per_channel and selected is not None:
        return np.stack([r[0] for r in results], axis=1), np.stack([r[1] for r in results], axis=1)
    return results[0]


def summarize(values: np.ndarray, threshold: float) -> dict[str, float | int]:
    """Distribution summary of max correlations: mean, median, p99, max, share above threshold, n.

    ``share_above_threshold`` counts values strictly above `threshold`. An empty input gives
    NaN statistics and n = 0.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        nan = float("nan")
        return {"mean": nan, "median": nan, "p99": nan, "max": nan, "share_above_threshold": nan, "n": 0}
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
        "share_above_threshold": float(np.mean(values > threshold)),
        "n": int(values.size),
    }
