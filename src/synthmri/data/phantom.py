"""Phantom BraTS subjects: plausible multi-contrast brain MRI with a glioma, no patients.

Each subject is a BraTS-2021-layout folder ``BraTS2021_NNNNN`` holding ``t1``, ``t1ce``,
``t2``, ``flair`` and ``seg`` volumes (``.nii.gz``, int16). The anatomy is built in
millimetres, so every shape covers the BraTS field of view (240 x 240 x 155 mm):

* a skull-stripped ellipsoidal brain with an irregular, smooth outline;
* a CSF rim that dips into folded sulci, a grey-matter cortex over white matter, an
  interhemispheric fissure, lateral and third ventricles and deep grey nuclei;
* a tumour with a necrotic core (label 1), an enhancing rim (label 4) and surrounding
  oedema (label 2) that spreads through white matter and pushes the anatomy aside.

Tissue boundaries are partial-volume ramps one voxel wide. Each contrast maps tissues to
intensities in the order seen on real scans (T1: WM > GM > CSF; T1Gd: the enhancing rim
brightest; T2: CSF brightest, WM darkest; FLAIR: CSF suppressed, oedema brightest), then a
smooth multiplicative bias field and Rician noise are applied; the background stays 0.

Every subject draws from its own generator seeded by ``(seed, index)``, so subject *k* is
the same whatever the number of subjects, and the gzip streams carry no timestamp: the same
seed gives the same bytes.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from synthmri.config import IMAGE_CHANNELS, PhantomConfig
from synthmri.data.phantom_shapes import Waves, index_range, lobes, paint, radial, ramp
from synthmri.io import atomic_write_bytes

log = logging.getLogger(__name__)

#: Field of view of a BraTS volume in mm (240 x 240 x 155 voxels of 1 mm).
FOV_MM: tuple[float, float, float] = (240.0, 240.0, 155.0)
#: Image contrasts in file order; the segmentation is written as ``seg``.
MODALITIES: tuple[str, ...] = IMAGE_CHANNELS

# Tissue classes, and each contrast's intensity for them (relative to T1 white matter).
TISSUES: tuple[str, ...] = ("csf", "gm", "wm", "ncr", "et", "ed")
CONTRAST: dict[str, tuple[float, ...]] = {
    #        csf   gm    wm    ncr   et    ed
    "t1": (0.30, 0.62, 0.90, 0.28, 0.58, 0.55),
    "t1ce": (0.30, 0.62, 0.90, 0.24, 1.30, 0.57),
    "t2": (1.00, 0.55, 0.36, 0.88, 0.62, 0.76),
    "flair": (0.12, 0.62, 0.45, 0.40, 0.70, 1.00),
}
_MAX_ATTEMPTS = 10  # re-draws of a subject whose tumour misses a label at coarse resolution
_SLAB_VOXELS = 1 << 17  # render in z-slabs of about this many voxels (cache-sized arrays)


def subject_name(index: int) -> str:
    """BraTS-2021 subject id of phantom `index` (``BraTS2021_00000``, ...)."""
    return f"BraTS2021_{index:05d}"


def phantom_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel-to-world affine (mm) whose voxels span the BraTS field of view.

    Axes are flipped in x and y as in BraTS files (LPS voxel order in RAS world), and the
    volume centre maps to the world origin.
    """
    spacing = np.asarray(FOV_MM) / np.asarray(shape, dtype=float)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return affine


def make_phantom_subject(shape: tuple[int, int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One phantom subject as int16 volumes keyed ``t1, t1ce, t2, flair, seg``.

    Args:
        shape: voxels (x, y, z); the volume always spans the BraTS field of view.
        rng: the subject's own random generator.

    Returns:
        Volumes of `shape`; ``seg`` holds BraTS labels 0, 1 (NCR), 2 (ED) and 4 (ET), each
        tumour label with at least one voxel.

    Raises:
        RuntimeError: the shape is too coarse for every tumour label to cover a voxel.
    """
    shape = tuple(int(s) for s in shape)
    for _ in range(_MAX_ATTEMPTS):
        volumes = _Subject(shape, rng).render()
        if set(np.unique(volumes["seg"]).tolist()) == {0, 1, 2, 4}:
            return volumes
    raise RuntimeError(f"phantom: shape {shape} too coarse to hold every tumour label")


class _Subject:
    """Random anatomy of one subject (all draws happen in __init__, in a fixed order)."""

    def __init__(self, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
        self.shape, self.rng = shape, rng
        spacing = np.asarray(FOV_MM) / np.asarray(shape, dtype=float)
        self.width = float(spacing.min())  # partial-volume ramp: about one voxel
        self.semi = np.array([rng.uniform(62, 70), rng.uniform(78, 88), rng.uniform(54, 60)]) * rng.uniform(0.9, 1.06)
        self.centre = np.array([rng.uniform(-4, 4), rng.uniform(-6, 6), rng.uniform(-4, 4)])
        # Tumour in one hemisphere, well inside the brain.
        side = rng.choice([-1.0, 1.0])
        t_norm = np.array([side * rng.uniform(0.2, 0.5), rng.uniform(-0.45, 0.45), rng.uniform(-0.2, 0.4)])
        self.t_centre = self.centre + t_norm * self.semi
        self.radius = rng.uniform(15, 30)  # outer edge of the enhancing rim (mm), glioblastoma-sized
        self.core = self.radius * rng.uniform(0.55, 0.75)  # necrotic core: wide enough to see at 64 px
        self.oedema = self.radius + rng.uniform(10, 32)
        self.mass = rng.uniform(0.15, 0.4)  # how far the tumour pushes the anatomy aside
        self.tumour_lobes = lobes(rng, 4, (1.0, 3.0), 0.06)
        self.core_lobes = lobes(rng, 3, (1.0, 3.0), 0.04)
        self.oedema_lobes = lobes(rng, 5, (1.0, 4.0), 0.1)
        self.fissure_depth = self.semi[2] * rng.uniform(0.45, 0.6)
        self.sulcus_depth = rng.uniform(9, 14)
        self.vent = self.semi[0] / 66 * np.array([rng.uniform(4, 7), rng.uniform(20, 26), rng.uniform(6, 9)])
        self.bend = rng.uniform(4, 8)

        # Only the brain's bounding box is rendered; the rest of the volume is background.
        axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
        # The outline bulges by at most 5 x 0.03 (see `outline`), the mass effect by < mass x oedema / 2.
        reach = self.semi * 1.16 + self.mass * self.oedema * 0.5 + 2 * self.width
        self.crop = tuple(index_range(a, c - r, c + r) for a, c, r in zip(axes, self.centre, reach))
        # Rendering grids are ordered (z, x, y): slabs along z are contiguous, rows are long.
        self.x, self.y, self.z = (a[sl].astype(np.float32).reshape(grid)
                                  for a, sl, grid in zip(axes, self.crop, ((1, -1, 1), (1, 1, -1), (-1, 1, 1))))
        t_reach = self.oedema * 1.5 + 2 * self.width
        self.tbox = tuple(index_range(a[sl], c - t_reach, c + t_reach)
                          for a, sl, c in zip(axes, self.crop, self.t_centre))

        self.outline = Waves(rng, 5, (50.0, 120.0), 0.03, self.x, self.y)
        self.folds = Waves(rng, 8, (16.0, 28.0), 1.0, self.x, self.y)
        self.texture = Waves(rng, 4, (15.0, 40.0), 0.02, self.x, self.y)
        self.tumour_texture = Waves(rng, 6, (3.0, 8.0), 0.05, self.x, self.y)
        # Per-contrast tissue levels (jittered), separable smooth bias fields and noise levels.
        self.levels = np.array([CONTRAST[m] for m in MODALITIES]) * rng.uniform(0.94, 1.06, size=(len(MODALITIES), len(TISSUES)))
        self.levels = self.levels.astype(np.float32)
        self.bias = [[np.exp(np.polyval(np.r_[rng.normal(0, 0.1, 3), 0.0], v / (f / 2))).astype(np.float32)
                      for v, f in zip((self.x, self.y, self.z), FOV_MM)] for _ in MODALITIES]
        self.sigma = {m: rng.uniform(0.012, 0.03) for m in MODALITIES}
        self.gain = 1000.0 * rng.uniform(0.6, 1.5)

    def render(self) -> dict[str, np.ndarray]:
        """Render slab by slab, add Rician noise in the brain, return int16 volumes."""
        nx, ny, nz = (sl.stop - sl.start for sl in self.crop)
        images = np.zeros((len(MODALITIES), nz, nx, ny), dtype=np.float32)
        brain = np.zeros((nz, nx, ny), dtype=bool)
        seg = np.zeros((nz, nx, ny), dtype=np.int16)
        step = max(1, _SLAB_VOXELS // (nx * ny))
        for z0 in range(0, nz, step):
            zs = slice(z0, min(z0 + step, nz))
            images[:, zs], brain[zs], seg[zs] = self._slab(zs)
        inside = np.flatnonzero(brain)
        volumes: dict[str, np.ndarray] = {}
        for channel, image in zip(MODALITIES, images):
            signal = image.ravel()[inside]
            sigma = np.float32(self.sigma[channel])
            real = signal + self.rng.standard_normal(signal.size, dtype=np.float32) * sigma
            imag = self.rng.standard_normal(signal.size, dtype=np.float32) * sigma
            magnitude = np.sqrt(real * real + imag * imag) * np.float32(self.gain)
            noisy = np.zeros(brain.size, dtype=np.int16)
            noisy[inside] = np.rint(np.minimum(magnitude, np.iinfo(np.int16).max, out=magnitude))
            volumes[channel] = np.zeros(self.shape, dtype=np.int16)
            volumes[channel][self.crop] = noisy.reshape(brain.shape).transpose(1, 2, 0)
        volumes["seg"] = np.zeros(self.shape, dtype=np.int16)
        volumes["seg"][self.crop] = seg.transpose(1, 2, 0)
        return volumes

    def _near(self, zs: slice, centre: np.ndarray, half: np.ndarray) -> tuple[slice, ...] | None:
        """Slab-local (z, x, y) index box around a structure at brain-relative `centre` (mm).

        The box is widened by the largest displacement of the mass effect, so a structure
        the tumour pushes aside still falls inside it.
        """
        reach = np.asarray(half) + self.mass * self.oedema * 0.5 + 2 * self.width
        where = self.centre + np.asarray(centre)
        box = [index_range(a.ravel(), c - r, c + r) for a, c, r in zip((self.x, self.y, self.z), where, reach)]
        lo, hi = max(box[2].start, zs.start), min(box[2].stop, zs.stop)
        if lo >= hi:
            return None
        return slice(lo - zs.start, hi - zs.start), box[0], box[1]

    def _slab(self, zs: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise-free contrasts [4, z, x, y], brain mask and labels of the z-slab `zs`."""
        f32, w = np.float32, self.width
        z = self.z[zs]
        # Mass effect: sample the anatomy nearer the tumour centre (a monotone radial warp).
        dx, dy, dz = self.x - f32(self.t_centre[0]), self.y - f32(self.t_centre[1]), z - f32(self.t_centre[2])
        push = np.exp((dx * dx + dy * dy + dz * dz) * f32(-1.0 / self.oedema**2))
        push *= f32(-self.mass)
        push += f32(1.0)
        off = self.t_centre - self.centre
        ax, ay, az = dx * push + f32(off[0]), dy * push + f32(off[1]), dz * push + f32(off[2])
        # Depth below the brain surface (mm, along the ray from the centre).
        nx, ny, nz = ax * f32(1 / self.semi[0]), ay * f32(1 / self.semi[1]), az * f32(1 / self.semi[2])
        r = np.sqrt(nx * nx + ny * ny + nz * nz) + f32(1e-6)
        nx *= f32(self.semi[0])
        ny *= f32(self.semi[1])
        nz *= f32(self.semi[2])
        depth = self.outline(z) + f32(1.0)
        depth -= r
        depth *= np.sqrt(nx * nx + ny * ny + nz * nz) / r
        del nx, ny, nz, r, push
        brain = depth > 0
        # Interhemispheric fissure and folded sulci: thin CSF clefts lined with grey matter.
        fissure = np.abs(ax)
        fissure += np.maximum(depth - f32(self.fissure_depth), 0)
        fissure += np.maximum(f32(-0.1 * self.semi[2]) - az, 0)
        sulci = np.abs(self.folds(z))
        sulci *= f32(1 / self.folds.grad_rms)
        sulci += np.maximum(depth - f32(self.sulcus_depth), 0)
        np.minimum(depth, fissure, out=depth)
        np.minimum(depth, sulci, out=depth)
        del fissure, sulci
        tissue = {t: i for i, t in enumerate(TISSUES)}
        fractions = np.zeros((len(TISSUES),) + depth.shape, dtype=np.float32)
        outer = ramp(depth - f32(1.0), w)
        fractions[tissue["wm"]] = ramp(depth - f32(3.8), w)
        fractions[tissue["gm"]] = outer - fractions[tissue["wm"]]
        fractions[tissue["csf"]] = f32(1.0) - outer
        del outer, depth
        # Deep grey nuclei (thalami) and the ventricular system, moved by the mass effect.
        vx, vy, vz = (f32(v) for v in self.vent)
        structures = [("gm", 0.7, (s * 10, -8, -2), (7.5, 11, 7.5), 7.5) for s in (-1, 1)]
        structures += [("csf", 1.0, (s * (vx + 2.5), 2, 10 - self.bend / 2), (vx, vy, vz + self.bend / 2), vx) for s in (-1, 1)]
        structures += [("csf", 1.0, (0, -4, -2), (1.5, 10, 7), 1.5)]
        for name, weight, centre, half, thickness in structures:
            box = self._near(zs, centre, half)
            if box is None:
                continue
            bx, by, bz = (a[box] - f32(c) for a, c in zip((ax, ay, az), centre))
            if name == "csf" and thickness == vx:  # lateral ventricles bend down at both ends
                t2 = (by / vy) ** 2
                bz += f32(self.bend) * t2 - f32(self.bend / 2)
                q = (bx / vx) ** 2 + t2 + (bz / vz) ** 2
            else:
                q = (bx / f32(half[0])) ** 2 + (by / f32(half[1])) ** 2 + (bz / f32(half[2])) ** 2
            share = ramp((f32(1) - np.sqrt(q)) * f32(thickness), w)
            if weight != 1.0:
                share *= f32(weight)
            paint(fractions, box, tissue[name], share)
        del ax, ay, az
        seg = np.zeros(brain.shape, dtype=np.int16)
        tumour = self._tumour(zs, dx, dy, dz, fractions, brain, seg)
        images = (self.levels @ fractions.reshape(len(TISSUES), -1)).reshape((len(MODALITIES),) + brain.shape)
        if tumour is not None:
            box, tumour_texture = tumour
            images[(slice(None),) + box] *= tumour_texture
        texture = self.texture(z)
        texture += f32(1.0)
        texture *= brain
        for image, (bx, by, bz) in zip(images, self.bias):
            image *= texture
            image *= bz[zs] * (bx * by)
        return images, brain, seg

    def _tumour(self, zs, dx, dy, dz, fractions, brain, seg):
        """Paint oedema, enhancing rim and necrotic core in the tumour box of this slab."""
        lo, hi = max(self.tbox[2].start, zs.start), min(self.tbox[2].stop, zs.stop)
        if lo >= hi:
            return None
        box = (slice(lo - zs.start, hi - zs.start), self.tbox[0], self.tbox[1])
        f32, w = np.float32, self.width
        tx, ty, tz = dx[:, box[1]], dy[:, :, box[2]], dz[box[0]]
        d = np.sqrt(tx * tx + ty * ty + tz * tz) + f32(1e-6)
        ux, uy, uz = tx / d, ty / d, tz / d
        shell = radial(ux, uy, uz, self.tumour_lobes)
        et_sdf = f32(self.radius) * shell - d
        ncr_sdf = f32(self.core) * shell * radial(ux, uy, uz, self.core_lobes) - d
        ed_sdf = f32(self.oedema) * radial(ux, uy, uz, self.oedema_lobes) - d
        index = {t: i for i, t in enumerate(TISSUES)}
        sub = fractions[(slice(None),) + box]  # a view
        in_brain = brain[box]
        # Oedema follows white matter, partly grey matter, never CSF.
        ed_weight = ramp(ed_sdf, 3 * w) * (sub[index["wm"]] + f32(0.5) * sub[index["gm"]]) * in_brain
        paint(sub, (), index["ed"], ed_weight)
        paint(sub, (), index["et"], ramp(et_sdf, w) * in_brain)
        paint(sub, (), index["ncr"], ramp(ncr_sdf, w) * in_brain)
        labels = np.zeros(d.shape, dtype=np.int16)
        labels[ed_weight > 0.5] = 2
        labels[et_sdf > 0] = 4
        labels[ncr_sdf > 0] = 1
        seg[box] = labels * in_brain
        # Heterogeneous tumour core: a fine texture weighted by the core's share.
        texture = self.tumour_texture(self.z[zs][box[0]], box[1], box[2])
        texture *= sub[index["ncr"]] + sub[index["et"]]
        texture += f32(1.0)
        return box, texture


def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A ``.nii.gz`` file's bytes with a zero gzip timestamp (same data, same bytes)."""
    image = nib.Nifti1Image(data, affine)
    image.set_data_dtype(data.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def write_phantom_dataset(out: Path, cfg: PhantomConfig, *, progress: Callable[[int], None] | None = None) -> list[Path]:
    """Write `cfg.subjects` phantom subjects in the BraTS 2021 layout.

    Args:
        out: dataset directory (created); subject folders already there are overwritten.
        cfg: number of subjects, volume shape and seed.
        progress: called with the number of subjects written after each one.

    Returns:
        The subject directories, ``out/BraTS2021_00000`` onwards, in order.

    Raises:
        ValueError: a non-positive subject count or a shape that is not three positive sizes.
    """
    out = Path(out)
    shape = tuple(int(s) for s in cfg.shape)
    if cfg.subjects < 1:
        raise ValueError(f"phantom.subjects must be positive, got {cfg.subjects}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"phantom.shape must be three sizes of at least 8 voxels, got {list(cfg.shape)}")
    affine = phantom_affine(shape)
    paths = []
    for index in range(cfg.subjects):
        name = subject_name(index)
        rng = np.random.default_rng([cfg.seed, index])
        volumes = make_phantom_subject(shape, rng)
        folder = out / name
        for channel, data in volumes.items():
            atomic_write_bytes(folder / f"{name}_{channel}.nii.gz", nifti_gz_bytes(data, affine))
        paths.append(folder)
        if progress is not None:
            progress(index + 1)
    log.info("phantom: wrote %d subjects of shape %s to %s", len(paths), "x".join(map(str, shape)), out)
    return paths
