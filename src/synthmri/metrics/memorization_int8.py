"""Pearson correlation of uint8 images in exact integer arithmetic (int8 GEMM, int32 sums).

Pearson r does not change when a constant is added to every pixel, so uint8 pixels x are
shifted into int8, x' = x - 128 (a reinterpretation of the bits after an xor). For two
shifted vectors of d pixels with sums S and sums of squares Q,

    r = (d * x'y' - Sx * Sy) / sqrt((d * Qx - Sx^2) * (d * Qy - Sy^2)),   x'y' = sum(x' * y').

The dot products of all pairs of two blocks are one int8 matrix product with int32
accumulation, which runs at several times the float32 rate (VNNI on CPUs, int8 tensor cores
on GPUs); ``- Sx * Sy`` is a rank-one correction. The per-image S and Q come from int8
products too (against a vector of ones, and the diagonal of small Gram blocks), because
widening the pixels to int64 in memory would cost more than the search's own product.

|x'y'| <= 2^14 per pixel, so an int32 running sum is exact for fewer than 2^17 = 131,072
pixels: longer vectors are split into column blocks of that size whose int32 products add
up in int64. The numerator and both variance terms are then exact integers (below 2^53 for
vectors up to 741,000 pixels, so exact in float64 too), and r is their float64 quotient: the
value a float64 computation gives, to its last bits, not float32's ~1e-6. A constant image
(variance term exactly 0) correlates 0 with everything, as on the float32 path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

#: Pixels per int32 partial product: below 2^31 / (128 * 128) = 2^17, where two black images
#: (every pixel -128 after the shift) would sum to 2^31, and a multiple of 8 for CUDA.
K_BLOCK = (1 << 17) - 8
SHIFT = 128
#: Rows per Gram block whose diagonal gives the sums of squares.
_GRAM_ROWS = 64


@dataclass(frozen=True)
class IntegerRows:
    """A block of uint8 images prepared for :func:`correlations`: shifted int8 pixels and exact sums."""

    shifted: torch.Tensor  # int8 [n, d]: pixels - 128
    sums: torch.Tensor  # int64 [n]: sum of shifted pixels
    variance: torch.Tensor  # int64 [n]: d * sum(x'^2) - sum(x')^2 (d^2 times the variance)

    @property
    def width(self) -> int:
        return self.shifted.shape[1]


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` of int8 matrices [m, k] and [n, k] with int32 accumulation, int32 [m, n].

    ``torch._int_mm``: oneDNN's s8s8s32 kernels on CPU (VNNI where the CPU has it), cuBLASLt's
    on CUDA. CUDA wants m > 16 and k, n multiples of 8: zero rows and columns pad the operands
    there (a zero pixel adds nothing to a dot product) and are cut from the result.
    """
    if a.device.type != "cuda":
        return torch._int_mm(a, b.t())
    a, b = a.contiguous(), b.contiguous()  # column blocks of a wider matrix are strided views
    m, k = a.shape
    n = b.shape[0]
    rows, inner, cols = max(m, 17), -(-k // 8) * 8, max(-(-n // 8) * 8, 8)
    if (rows, inner, cols) != (m, k, n):
        a = torch.nn.functional.pad(a, (0, inner - k, 0, rows - m))
        b = torch.nn.functional.pad(b, (0, inner - k, 0, cols - n))
    return torch._int_mm(a, b.t())[:m, :n]


def _column_blocks(width: int) -> range:
    return range(0, width, K_BLOCK)


def prepare_rows(chunk: np.ndarray, device: torch.device) -> IntegerRows:
    """Flatten uint8 images [n, ...] into :class:`IntegerRows` on `device`."""
    if chunk.dtype != np.uint8:
        raise ValueError(f"the integer path needs uint8 pixels, got {chunk.dtype}")
    flat = np.ascontiguousarray(chunk).reshape(len(chunk), -1)
    raw = torch.from_numpy(flat if flat.flags.writeable else flat.copy()).to(device)
    shifted = (raw ^ SHIFT).view(torch.int8)  # uint8 x -> int8 x - 128, bit for bit
    del raw
    n, d = shifted.shape
    sums = torch.zeros(n, dtype=torch.int64, device=device)
    squares = torch.zeros(n, dtype=torch.int64, device=device)
    for start in _column_blocks(d):
        block = shifted[:, start:start + K_BLOCK]
        ones = torch.ones((8, block.shape[1]), dtype=torch.int8, device=device)
        sums += int_matmul(block, ones)[:, 0]
        for row in range(0, n, _GRAM_ROWS):
            rows = block[row:row + _GRAM_ROWS]
            squares[row:row + _GRAM_ROWS] += int_matmul(rows, rows).diagonal()
    return IntegerRows(shifted, sums, d * squares - sums.square())


def dot_products(q: IntegerRows, r: IntegerRows) -> torch.Tensor:
    """Exact ``x'y'`` of every pair, int64 [nq, nr], from int32 products of at most `K_BLOCK` columns."""
    total: torch.Tensor | None = None
    for start in _column_blocks(q.width):
        part = int_matmul(q.shifted[:, start:start + K_BLOCK], r.shifted[:, start:start + K_BLOCK])
        total = part.to(torch.int64) if total is None else total.add_(part)
    return total


def correlations(q: IntegerRows, r: IntegerRows) -> torch.Tensor:
    """Pearson r of every query against every reference, float64 [nq, nr] (module docstring)."""
    numerator = dot_products(q, r)
    numerator.mul_(q.width).sub_(q.sums[:, None] * r.sums[None, :])  # d * x'y' - Sx * Sy, in place
    q_norm, r_norm = q.variance.double().sqrt(), r.variance.double().sqrt()
    # A constant image's variance term is exactly 0: its r is 0 against everything.
    q_inverse = torch.where(q.variance > 0, 1.0 / q_norm, torch.zeros_like(q_norm))
    r_inverse = torch.where(r.variance > 0, 1.0 / r_norm, torch.zeros_like(r_norm))
    r_value = numerator.double()
    del numerator
    return r_value.mul_(q_inverse[:, None]).mul_(r_inverse[None, :])


def int8_matmul_available(device: torch.device) -> bool:
    """Whether ``torch._int_mm`` runs on `device` (and gives the right answer on a tiny product)."""
    return _int8_matmul_works(str(torch.device(device)))


@functools.lru_cache(maxsize=None)
def _int8_matmul_works(device: str) -> bool:
    try:
        a = torch.arange(-64, 64, dtype=torch.int8, device=device).reshape(4, 32).repeat(8, 1)
        b = torch.arange(63, -65, -1, dtype=torch.int8, device=device).reshape(4, 32).repeat(8, 1)
        got = int_matmul(a, b).cpu().to(torch.int64)
        want = a.cpu().to(torch.int64) @ b.cpu().to(torch.int64).t()  # CUDA has no int64 matmul
        return bool((got == want).all())
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


class Int8:
    """The exact integer arithmetic for the search in :mod:`synthmri.metrics.memorization`.

    Args:
        device: Where the products run. The other arguments (buffer sizes of the float32
            arithmetic) are not needed: each block's int8 copy is its own tensor.
    """

    name = "int8"
    bytes_per_pixel = 1

    def __init__(self, device: torch.device, *_: object) -> None:
        self.device = device

    def queries(self, chunk: np.ndarray, what: str) -> IntegerRows:
        """Shifted int8 rows and exact sums of uint8 images."""
        return prepare_rows(chunk, self.device)

    references = queries

    @staticmethod
    def correlations(q: IntegerRows, r: IntegerRows) -> torch.Tensor:
        """r of every pair, float64 [nq, nr]."""
        return correlations(q, r)
