"""The float32 arithmetic of the memorization search: centred, L2-normalised rows.

Pearson r of two flattened images is the dot product of their centred, L2-normalised
versions, so all pairs of a query block against a reference block are one float32 matrix
product. The path for images that are not uint8, and the fallback where a device has no int8
product (:mod:`synthmri.metrics.memorization_int8`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

# A centred vector whose norm is below this fraction of the raw vector's norm is treated as
# constant: float32 rounding of the mean leaves residue ~eps*|x|, far below this, while the
# smallest real variation of a uint8 image (one pixel off by 1) is far above it.
ZERO_VARIANCE_RTOL = 1e-6


# Columns per partial matrix product (see similarities).
K_BLOCK = 2048


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row [n, 1] via torch's cascaded sum, a few rows at a time.


    Not ``torch.linalg.vector_norm``: on CPU it accumulates float32 sequentially, which on
    MR slices (a large constant background after centring) is off by ~1e-5 relative at
    64x64x5, while the cascaded sum stays at ~1e-7. Row blocks bound the squared temporary.
    """
    out = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)
    step = max(1, (1 << 24) // max(x.shape[1], 1))  # ~64 MB of float32 squares at a time
    for start in range(0, x.shape[0], step):
        out[start : start + step] = x[start : start + step].square().sum(dim=1, keepdim=True)
    return out.sqrt_()


def similarities(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``q @ r.T``, accumulated over column blocks of `K_BLOCK`.


    A GEMM kernel that runs down the whole vector in one float32 register (cuBLAS tiles,
    MKL's small-matrix path) drifts ~1e-5 at 64x64x5 and more on full-size slices; adding
    block products of 2048 columns keeps every running sum short (~2e-6), and ``addmm_``
    adds into the result in place, so large blocks cost about what one product does.
    """
    total = torch.mm(q[:, :K_BLOCK], r[:, :K_BLOCK].t())
    for start in range(K_BLOCK, q.shape[1], K_BLOCK):
        total.addmm_(q[:, start : start + K_BLOCK], r[:, start : start + K_BLOCK].t())
    return total


def prepare_rows(chunk: np.ndarray, device: torch.device, what: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """Flatten, centre and L2-normalise each image of `chunk` [n, ...] (float32 on `device`).

    With `buffer` (float32 [>= n, d] on `device`) the result is written into its first rows:
    reusing one buffer per side saves the page faults of a fresh allocation per chunk, which
    on CPU cost as much as all the arithmetic of the preparation.
    """
    # Move the raw (often uint8) bytes first: 4x less traffic to a GPU than float32.
    chunk = np.ascontiguousarray(chunk).reshape(len(chunk), -1)
    if not chunk.flags.writeable:  # a read-only memmap view: torch wants writable memory
        chunk = chunk.copy()
    raw = torch.from_numpy(chunk).to(device)
    if buffer is not None and buffer.shape[0] >= raw.shape[0] and buffer.shape[1] == raw.shape[1]:
        x = buffer[: raw.shape[0]]
        x.copy_(raw)
    else:
        x = raw.to(torch.float32)
    if raw.dtype.is_floating_point and not torch.isfinite(x).all():
        raise ValueError(f"{what}: images contain NaN or infinite values")
    mean = x.mean(dim=1, keepdim=True)
    x -= mean
    norm = row_norms(x)
    # |raw|^2 = d*mean^2 + |centred|^2: the raw norm for the zero-variance test without another pass.
    size = torch.sqrt(x.shape[1] * mean.square() + norm.square())
    constant = norm <= ZERO_VARIANCE_RTOL * size
    # One pass scales the rows and zeroes the constant ones (r = 0 against everything).
    x *= torch.where(constant, torch.zeros_like(norm), 1.0 / norm)
    return x


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Run float32 matmuls at full precision (a caller may have enabled TF32 globally)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class Float32:
    """The float32 arithmetic for the search in :mod:`synthmri.metrics.memorization`.

    Args:
        device: Where the products run.
        n_queries: The most query rows prepared at once (one reusable buffer).
        n_refs: The most reference rows prepared at once.
        d: Pixels per image vector.
        cached: Whether prepared references are kept (then each gets its own tensor).
    """

    name = "float32"
    bytes_per_pixel = 4

    def __init__(self, device: torch.device, n_queries: int, n_refs: int, d: int, cached: bool) -> None:
        self.device = device
        self.q_buffer = torch.empty((n_queries, d), dtype=torch.float32, device=device)
        self.r_buffer = None if cached else torch.empty((n_refs, d), dtype=torch.float32, device=device)

    def queries(self, chunk: np.ndarray, what: str) -> torch.Tensor:
        """Normalised query rows (in the reusable buffer)."""
        return prepare_rows(chunk, self.device, what, self.q_buffer)

    def references(self, chunk: np.ndarray, what: str) -> torch.Tensor:
        """Normalised reference rows."""
        return prepare_rows(chunk, self.device, what, self.r_buffer)

    @staticmethod
    def correlations(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """r of every pair, float32 [nq, nr]."""
        return similarities(q, r)
