"""One subject's five volumes to the slices ``prepare`` keeps (steps 1-6 of :mod:`.prepare`).

Read each file whole, check it (3D, numeric, finite, on t1's grid, labels in the map), turn
it to the canonical voxel order :data:`CANONICAL_ORIENTATION` (axes permuted and flipped to
the closest match of t1's affine, no resampling), scale images to 0..255, encode labels, cut,
pad, filter and resample axial slices.
:func:`prepare_subjects` runs subjects in worker threads and yields them in input order.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import functools
import gzip
import hashlib
import io
import math
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import nibabel as nib
import numpy as np

from synthmri.config import DataConfig
from synthmri.data.labels import LabelError, check_labels, encode_labels
from synthmri.data.layouts import Rejection, Subject
from synthmri.data.store import CHANNELS

#: Largest difference between a modality's affine and t1's that still counts as the same grid.
AFFINE_TOLERANCE = 1e-4

#: Voxel axes of every prepared volume: x towards the patient's Left, y Posterior, z Superior
#: (world RAS+, as nibabel names axes). It is how every BraTS release stores its voxels, so
#: BraTS (and phantom) volumes are used as stored; others are permuted and flipped to it.
CANONICAL_ORIENTATION = "LPS"


@dataclass
class PreparedSubject:
    """One subject after :func:`prepare_subject`: its slices, or why it was rejected.

    Attributes:
        name: The subject id.
        hashes: Relative path -> sha256 of each file's bytes.
        slices: The kept slices, uint8 [k, 5, size, size] (None when rejected).
        z: The kept slices' axial indices.
        total: Axial slices examined.
        spacing: Voxel size in mm along the canonical x, y, z axes, from the t1 header.
        orientation: The source's voxel axes (``aff2axcodes`` of t1's affine, e.g. ``RAS``).
        rejection: Why the subject was left out, or None.
    """

    name: str
    hashes: dict[str, str]  # relative path -> sha256 of the file's bytes
    slices: np.ndarray | None = None  # uint8 [k, 5, size, size]
    z: list[int] = field(default_factory=list)
    total: int = 0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # voxel size in mm (x, y, z) from the t1 header
    orientation: str = CANONICAL_ORIENTATION  # the source's voxel axes (e.g. RAS) before reorientation
    rejection: Rejection | None = None


def pad_slices(slices: np.ndarray, pad_to: int) -> np.ndarray:
    """Zero-pad [..., H, W] symmetrically to pad_to x pad_to (an odd remainder goes after)."""
    h, w = slices.shape[-2:]
    if h > pad_to or w > pad_to:
        raise ValueError(f"slice {h}x{w} larger than data.pad_to {pad_to}")
    top, left = (pad_to - h) // 2, (pad_to - w) // 2
    out = np.zeros(slices.shape[:-2] + (pad_to, pad_to), dtype=slices.dtype)
    out[..., top : top + h, left : left + w] = slices
    return out


def _resampling_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of antialiased linear resampling (a triangle filter widened by the
    scale factor when shrinking; pixel centres aligned as with ``align_corners=False``)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5  # output pixel centres in input pixels
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resample_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """Resample uint8 [n, 5, P, P] to [n, 5, size, size].

    Images use antialiased linear interpolation (rounded to uint8); the annotation channel
    uses nearest neighbour (centre-aligned), so its values stay in the label set.
    """
    pad_to = slices.shape[-1]
    if pad_to == size:
        return slices
    along = np.ascontiguousarray(_resampling_matrix(pad_to, size).T)  # [P, size]
    n = slices.shape[0] * 4
    # Two plain GEMMs: resample the last axis, transpose, resample the other one.
    rows = slices[:, :4].reshape(n * pad_to, pad_to).astype(np.float32) @ along
    rows = np.ascontiguousarray(rows.reshape(n, pad_to, size).transpose(0, 2, 1)).reshape(n * size, pad_to)
    images = (rows @ along).reshape(n, size, size).transpose(0, 2, 1).reshape(slices.shape[0], 4, size, size)
    np.rint(images, out=images)
    np.clip(images, 0, 255, out=images)
    nearest = np.minimum(np.floor((np.arange(size) + 0.5) * (pad_to / size)).astype(np.int64), pad_to - 1)
    out = np.empty(slices.shape[:2] + (size, size), dtype=np.uint8)
    out[:, :4] = images
    out[:, 4] = slices[:, 4][:, nearest][:, :, nearest]
    return out


def foreground_fraction(channel: np.ndarray, threshold: float, pad_to: int) -> np.ndarray:
    """Per axial slice of [X, Y, Z], the share of the padded pad_to^2 pixels above `threshold`."""
    above = (channel > threshold).sum(axis=(0, 1), dtype=np.int64)
    if threshold < 0:  # padding zeros count too
        above = above + (pad_to * pad_to - channel.shape[0] * channel.shape[1])
    return above / float(pad_to * pad_to)


@functools.cache
def gzip_decompressor() -> tuple[str, Callable[[bytes], bytes], tuple[type[Exception], ...]]:
    """``(name, decompress, errors)``: ISA-L's igzip where the ``isal`` package is installed, else zlib.

    `errors` are the decompressor's own errors for a corrupt deflate stream.

    igzip inflates the same deflate streams about three times faster than zlib on x86 and
    ARM, and checks the same CRC32 and length trailer, so the bytes that come out are the
    same; only its error for a corrupt stream differs (see :func:`gunzip`).
    """
    try:
        from isal import igzip, isal_zlib
    except ImportError:
        return "zlib", gzip.decompress, (zlib.error,)
    return "isal", igzip.decompress, (isal_zlib.error,)


def gunzip(raw: bytes, name: str) -> bytes:
    """The file's bytes decompressed in one call when `name` ends in ``.gz``, else as they are.

    Raises:
        zlib.error: A corrupt deflate stream (ISA-L's own error is turned into zlib's, so
            callers see the same error from either decompressor).
        gzip.BadGzipFile: Not a gzip file, or a failed CRC or length check.
        EOFError: The file ends early.
    """
    if not name.endswith(".gz"):
        return raw
    _, decompress, errors = gzip_decompressor()
    try:
        return decompress(raw)
    except errors as exc:  # isal's IsalError is neither OSError nor zlib.error
        if isinstance(exc, zlib.error):
            raise
        raise zlib.error(f"{type(exc).__name__}: {exc}") from None


def read_nifti(raw: bytes, name: str) -> tuple[nib.Nifti1Header, np.ndarray]:
    """Decode a whole (optionally gzipped) NIfTI-1 or NIfTI-2 file held in memory.

    Returns:
        The header (affine, voxel size) and the voxels. Without intensity scaling in the
        header (the usual case) the voxels are a view of the decompressed bytes, not a copy.
    """
    raw = gunzip(raw, name)
    klass = nib.Nifti2Image if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Image
    header = klass.header_class.from_fileobj(io.BytesIO(raw))
    slope, inter = header.get_slope_inter()
    dtype, shape, offset = header.get_data_dtype(), header.get_data_shape(), int(header.get_data_offset())
    unscaled = slope in (None, 1.0) and inter in (None, 0.0)
    if unscaled and offset >= header.sizeof_hdr and offset + dtype.itemsize * math.prod(shape) <= len(raw):
        return header, np.ndarray(shape, dtype=dtype, buffer=raw, offset=offset, order="F")
    image = klass.from_bytes(raw)  # scaled or short: nibabel applies the scaling, or raises
    return image.header, np.asarray(image.dataobj)


def checked_voxels(header: nib.Nifti1Header, data: np.ndarray, reference: nib.Nifti1Header | None) -> np.ndarray:
    """The voxels of one file, checked: 3D, numeric, finite, on the reference's (t1's) grid.

    Raises:
        ValueError: what is wrong, in words.
    """
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"not a 3D volume (shape {list(data.shape)})")
    if data.dtype.kind not in "biuf":
        raise ValueError(f"non-numeric voxel type {data.dtype}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise ValueError("NaN or Inf voxels")
    if reference is not None:
        if data.shape != reference.get_data_shape()[:3]:
            raise ValueError(f"shape {list(data.shape)} differs from t1 {list(reference.get_data_shape()[:3])}")
        affine, expected = header.get_best_affine(), reference.get_best_affine()
        if not np.allclose(affine, expected, rtol=0.0, atol=AFFINE_TOLERANCE):
            raise ValueError(f"affine differs from t1's (largest difference {float(np.abs(affine - expected).max()):.3g})")
    return data


def orientation_transform(affine: np.ndarray) -> tuple[str, np.ndarray | None]:
    """The voxel axes of `affine` and how to turn them to :data:`CANONICAL_ORIENTATION`.

    Returns:
        The axis codes (e.g. ``RAS``) and a nibabel orientation transform, or None when the
        voxels are already canonical.

    Raises:
        ValueError: an affine without three independent axes.
    """
    ornt = nib.orientations.io_orientation(affine)
    if np.isnan(ornt).any():
        raise ValueError("affine has no three independent axes: voxel orientation unknown")
    codes = "".join(nib.orientations.ornt2axcodes(ornt))
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(tuple(CANONICAL_ORIENTATION)))
    if (transform == [[0, 1], [1, 1], [2, 1]]).all():
        return codes, None
    return codes, transform


def to_uint8(part: np.ndarray, peak: float) -> np.ndarray:
    """``part`` scaled by ``255 / peak`` in float32, rounded half to even, clipped to 0..255.

    `peak` is the volume's maximum, so nothing exceeds 255 and only negatives need clipping.
    """
    scaled = np.multiply(part, np.float32(255.0 / peak), dtype=np.float32)
    np.rint(scaled, out=scaled)
    if part.dtype.kind != "u" and part.min(initial=0) < 0:
        np.maximum(scaled, 0, out=scaled)
    return scaled.astype(np.uint8)


def foreground(volume: np.ndarray, peak: float, data: DataConfig) -> np.ndarray:
    """:func:`foreground_fraction` of the scaled volume, per axial slice, without scaling all of it.

    For integer voxels the threshold moves into voxel units: scaling is monotonic, so a voxel
    is foreground when it reaches the smallest value whose scaled value exceeds the threshold.
    """
    threshold = data.intensity_threshold
    if threshold < 0:  # every pixel, the padding too, is above a negative threshold
        return np.ones(volume.shape[-1])
    if volume.dtype.kind not in "iu" or peak > 1 << 20:
        return foreground_fraction(to_uint8(volume, peak), threshold, data.pad_to)
    scaled = to_uint8(np.arange(int(peak) + 1, dtype=np.int64), peak)  # every value the volume can hold
    first_above = int(np.searchsorted(scaled, threshold, side="right"))
    return (volume >= first_above).sum(axis=(0, 1), dtype=np.int64) / float(data.pad_to * data.pad_to)


def prepare_subject(subject: Subject, source: Path, data: DataConfig, label_map: dict[int, int]) -> PreparedSubject:
    """Read, check, scale, slice, filter and resample one subject (runs in a worker).

    Every check looks at the whole volume; the work after the foreground filter (scaling,
    label encoding, padding) touches only the kept slices.
    """
    result = PreparedSubject(subject.name, hashes={})
    voxels: dict[str, np.ndarray] = {}
    peaks: dict[str, float] = {}
    reference, transform = None, None
    for channel in CHANNELS:
        path = subject.files[channel]
        rel = path.relative_to(source).as_posix()
        try:
            raw = path.read_bytes()
            result.hashes[rel] = hashlib.sha256(raw).hexdigest()
            header, volume = read_nifti(raw, path.name)
            del raw
            volume = checked_voxels(header, volume, reference)
            if channel == "t1":
                reference = header
                zooms = tuple(float(v) for v in header.get_zooms()[:3])
                if len(zooms) != 3 or not all(math.isfinite(v) and v > 0 for v in zooms):
                    raise ValueError(f"voxel size {list(zooms)} mm in the header is not 3 positive numbers")
                result.orientation, transform = orientation_transform(header.get_best_affine())
                if transform is not None:  # canonical axis j is source axis i
                    zooms = tuple(zooms[int(np.flatnonzero(transform[:, 0] == j)[0])] for j in range(3))
                result.spacing = (zooms[0], zooms[1], zooms[2])
            if transform is not None:  # every modality shares t1's affine (checked above)
                volume = nib.orientations.apply_orientation(volume, transform)
            if max(volume.shape[:2]) > data.pad_to:
                raise ValueError(f"slice {volume.shape[0]}x{volume.shape[1]} larger than data.pad_to {data.pad_to}")
            if channel == "seg":
                if volume.dtype.kind == "f":
                    if not np.array_equal(volume, np.rint(volume)):
                        raise LabelError("non-integer label values")
                    volume = volume.astype(np.int32)
                check_labels(volume, label_map)
            else:
                peaks[channel] = float(np.float32(volume.max()))
                if peaks[channel] <= 0:
                    raise ValueError("all-zero image (maximum <= 0)")
            voxels[channel] = volume
        except (OSError, EOFError, zlib.error, LabelError, ValueError, nib.filebasedimages.ImageFileError) as exc:
            result.rejection = Rejection(subject.name, rel, str(exc) or type(exc).__name__)
            return result
        except Exception as exc:  # nibabel raises assorted errors on corrupt headers
            result.rejection = Rejection(subject.name, rel, f"unreadable: {type(exc).__name__}: {exc}")
            return result
    fraction = foreground(voxels[data.filter_channel], peaks[data.filter_channel], data)
    keep = np.flatnonzero(fraction > data.min_foreground_fraction)
    result.total, result.z = int(fraction.size), keep.tolist()
    h, w = voxels["t1"].shape[:2]
    top, left = (data.pad_to - h) // 2, (data.pad_to - w) // 2
    padded = np.zeros((len(keep), len(CHANNELS), data.pad_to, data.pad_to), dtype=np.uint8)
    for index, channel in enumerate(CHANNELS):
        if channel == "seg":
            part = encode_labels(voxels[channel][..., keep], label_map, check=False)  # checked whole above
        else:
            part = to_uint8(voxels[channel][..., keep], peaks[channel])
        padded[:, index, top:top + h, left:left + w] = np.moveaxis(part, -1, 0)  # [k, X, Y]
    result.slices = resample_slices(padded, data.size)
    return result


#: glibc's mallopt parameters (malloc.h), its defaults, and what prepare sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DEFAULT_THRESHOLD = 128 * 1024
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """While inside, let the allocator reuse freed volumes instead of returning them to the kernel.

    prepare allocates and frees the same few buffers per subject (a decompressed file, a
    volume, the kept slices: up to tens of MB each). By default glibc serves every block
    above 128 kB from a fresh ``mmap`` and unmaps it on free, so every file pays again for
    zero-filled pages: page faults that cost more system time than inflating the files.
    Inside, blocks up to 32 MB come from the heap and the heap is not trimmed; on the way
    out the defaults come back and the heap is trimmed. Yields whether glibc took the
    settings (other C libraries: nothing changes).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield False
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    kept = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    try:
        yield kept
    finally:
        if kept:
            mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
            mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)
            trim(0)


def prepare_subjects(subjects: list[Subject], source: Path, data: DataConfig, label_map: dict[int, int],
         workers: int) -> Iterator[PreparedSubject]:
    """Prepared subjects in input order; `workers` > 1 runs that many subjects at once, in threads.

    Threads, not processes: the work is ISA-L's inflate and numpy, which release the GIL, so
    threads run side by side without a process start-up each or a copy of every subject's
    slices through a pipe (which cost prepare a third of its time in worker processes).
    """
    if workers <= 1:
        for subject in subjects:
            yield prepare_subject(subject, source, data, label_map)
        return
    with futures.ThreadPoolExecutor(workers, thread_name_prefix="prepare") as pool:
        pending: deque[futures.Future] = deque()
        try:
            for subject in subjects:  # at most 2 x workers subjects in flight (bounded memory)
                pending.append(pool.submit(prepare_subject, subject, source, data, label_map))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # stopped early (an error, Ctrl-C): start nothing more
            for future in pending:
                future.cancel()
        while pending:
            yield pending.popleft().result()
