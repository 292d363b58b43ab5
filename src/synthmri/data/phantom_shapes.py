"""Shape primitives of the phantom anatomy (:mod:`.phantom`): ramps, plane waves and lobed outlines.

Everything works in millimetres on float32 grids ordered (z, x, y); the random draws happen
in the constructors and helpers, in the order the caller makes them.
"""

from __future__ import annotations

import numpy as np


def ramp(signed_mm: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction inside a boundary: 0 outside, 1 inside, linear over `width` mm."""
    out = signed_mm * np.float32(1.0 / width)
    out += np.float32(0.5)
    np.maximum(out, 0.0, out=out)
    return np.minimum(out, 1.0, out=out)


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` random directions, uniform on the sphere: [n, 3] unit vectors."""
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Waves:
    """A sum of random plane waves on the crop grid, evaluated separably (no 3D cosines).

    cos(k.r + phase) = cos(kx x + ky y) cos(kz z + phase) - sin(kx x + ky y) sin(kz z + phase):
    the in-plane factors are tabulated once, so a slab costs four multiply-adds per wave.
    Grids are ordered (z, x, y) with `x` shaped (1, nx, 1) and `y` shaped (1, 1, ny).
    """

    def __init__(self, rng: np.random.Generator, n: int, wavelength: tuple[float, float],
                 amplitude: float, x: np.ndarray, y: np.ndarray) -> None:
        self.k = unit_vectors(rng, n) * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
        self.phase = rng.uniform(0, 2 * np.pi, size=n)
        self.amp = (amplitude * rng.uniform(0.5, 1.0, size=n)).astype(np.float32)
        # RMS gradient of the sum: |value| / grad_rms approximates the distance to its zero set.
        self.grad_rms = float(np.sqrt(np.sum(self.amp.astype(float) ** 2 * np.sum(self.k**2, axis=1)) / 2))
        plane = [np.float32(k[0]) * x + np.float32(k[1]) * y for k in self.k]
        self.cos_xy = [np.cos(p) for p in plane]
        self.sin_xy = [np.sin(p) for p in plane]

    def __call__(self, z: np.ndarray, ix: slice = slice(None), iy: slice = slice(None)) -> np.ndarray:
        """The sum at z-coordinates `z` (shaped (nz, 1, 1)) on the in-plane window (ix, iy)."""
        out = np.zeros((z.shape[0],) + self.cos_xy[0][:, ix, iy].shape[1:], dtype=np.float32)
        for k, phase, amp, c, s in zip(self.k, self.phase, self.amp, self.cos_xy, self.sin_xy):
            arg = k[2] * z + phase
            out += c[:, ix, iy] * (amp * np.cos(arg)).astype(np.float32)
            out -= s[:, ix, iy] * (amp * np.sin(arg)).astype(np.float32)
        return out


def lobes(rng: np.random.Generator, n: int, freq: tuple[float, float], amp: float) -> list[tuple]:
    """Random smooth functions of a unit direction: (wave vector, phase, amplitude) terms."""
    return [(k * rng.uniform(*freq), rng.uniform(0, 2 * np.pi), amp * rng.uniform(0.5, 1.0))
            for k in unit_vectors(rng, n)]


def radial(ux: np.ndarray, uy: np.ndarray, uz: np.ndarray, terms: list[tuple]) -> np.ndarray:
    """1 + a smooth function of direction: an irregular, star-shaped outline."""
    out = np.ones(np.broadcast_shapes(ux.shape, uy.shape, uz.shape), dtype=np.float32)
    for k, phase, amp in terms:
        out += np.float32(amp) * np.cos(np.float32(k[0]) * ux + np.float32(k[1]) * uy + np.float32(k[2]) * uz + np.float32(phase))
    return out


def paint(fractions: np.ndarray, box: tuple[slice, ...], tissue: int, weight: np.ndarray) -> None:
    """In `box`, replace a share `weight` of every tissue by `tissue` (fractions sum to 1)."""
    region = fractions[(slice(None),) + tuple(box)]
    region *= 1.0 - weight
    region[tissue] += weight


def index_range(coords: np.ndarray, lo: float, hi: float) -> slice:
    """Slice of the sorted `coords` within [lo, hi] (never empty)."""
    a, b = np.searchsorted(coords, [lo, hi])
    a = int(min(a, len(coords) - 1))
    return slice(a, int(max(b, a + 1)))
