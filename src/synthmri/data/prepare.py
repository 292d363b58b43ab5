"""``prepare``: BraTS volumes -> the slice store, split by subject (DESIGN.md, 'Paper fidelity').

The source is a directory or ``s3://bucket/prefix`` (downloaded by :mod:`.sources`), in a
BraTS 2020, 2021 or 2023 layout (:mod:`.layouts`). Per subject, as in the paper and its
published code:

1. read each of ``t1, t1ce, t2, flair, seg`` once (whole-file decompression, no lazy access),
   and check it: a 3D numeric finite volume on t1's grid (shape and affine), labels in the map;
2. scale every image volume by its own maximum to 0..255 (uint8);
3. map the BraTS labels to 0/51/102/204 through ``data.label_map`` (default: the layout's);
4. cut axial slices (last axis), zero-pad each symmetrically to ``pad_to`` x ``pad_to``;
5. keep a slice when more than ``min_foreground_fraction`` of its padded pixels exceed
   ``intensity_threshold`` in ``filter_channel`` (paper: 15 % above 50 in T1);
6. resample kept slices to ``size`` (images smoothly, labels nearest-neighbour).

Subjects are split into test / val / train (:mod:`.splits`: the authors' published test
subjects of BraTS 2020/2021 with ``data.split: published``, else a shuffle with ``data.seed``;
val drawn with the seed from the rest) *before* any volume is decoded, from the subjects
whose five files are present: a subject that later turns out unreadable drops out of its
split without reshuffling the others; the manifest's ``split`` records which split was made.
Unusable subjects are listed in ``rejected.csv`` (subject, file, reason); the others are still
prepared. Subjects run in ``workers`` processes; the parent writes shards in subject order,
so the store's bytes do not depend on the worker count or on an interruption.

``subjects.csv`` records per subject its split, the slices kept and examined, and the
voxel size in mm from the T1 header (``spacing_x, spacing_y, spacing_z``), which the 3D
evaluation needs for Hausdorff distances in mm; the manifest's ``spacing`` holds it too
when every subject shares one.
"""

from __future__ import annotations

import concurrent.futures as futures
import csv
import gzip
import hashlib
import io
import logging
import math
import multiprocessing
import shutil
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from synthmri.config import Config, DataConfig, dump_config
from synthmri.data.labels import LabelError, check_labels, encode_labels
from synthmri.data.layouts import Rejection, Subject, find_subjects
from synthmri.data.sources import fetch_s3, is_s3_uri
from synthmri.data.splits import SplitError, assign_splits, split_subjects  # noqa: F401 (split_subjects: re-exported)
from synthmri.data.store import CHANNELS, SPLITS, SliceRow, StoreError, StoreWriter
from synthmri.io import atomic_write_text, sha256_file
from synthmri.monitoring import StageMonitor

log = logging.getLogger(__name__)

SPACING_COLUMNS = ("spacing_x", "spacing_y", "spacing_z")  # subjects.csv: voxel size in mm

#: Largest difference between a modality's affine and t1's that still counts as the same grid.
AFFINE_TOLERANCE = 1e-4


class PrepareError(StoreError):
    """Nothing could be prepared, or the source cannot make the requested split."""


@dataclass
class PrepareResult:
    """What ``prepare`` wrote.

    Attributes:
        out: the slice store directory.
        source: the source path or URI as given.
        subjects: prepared subjects per split.
        slices: kept slices per split.
        slices_total: axial slices examined (kept or not) over the prepared subjects.
        rejected: the subjects left out.
        manifest: the store's manifest.
    """

    out: Path
    source: str
    subjects: dict[str, int]
    slices: dict[str, int]
    slices_total: int
    rejected: list[Rejection] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a person: subjects and slices per split, rejections."""
        splits = ", ".join(f"{s} {self.subjects.get(s, 0)}/{self.slices.get(s, 0)}" for s in SPLITS)
        kept = sum(self.slices.values())
        line = (f"prepared {sum(self.subjects.values())} subjects into {self.out} "
                f"(subjects/slices: {splits}); kept {kept} of {self.slices_total} slices")
        if self.rejected:
            line += f"; rejected {len(self.rejected)} subject(s), see {self.out / 'rejected.csv'}"
        return line

    def exit_code(self, strict: bool = False) -> int:
        """0, or 1 when `strict` and any subject was rejected."""
        return 1 if strict and self.rejected else 0


@dataclass
class _Prepared:
    name: str
    hashes: dict[str, str]  # relative path -> sha256 of the file's bytes
    slices: np.ndarray | None = None  # uint8 [k, 5, size, size]
    z: list[int] = field(default_factory=list)
    total: int = 0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # voxel size in mm (x, y, z) from the t1 header
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


def gunzip(raw: bytes, name: str) -> bytes:
    """The file's bytes decompressed in one call when `name` ends in ``.gz``, else as they are."""
    return gzip.decompress(raw) if name.endswith(".gz") else raw


def _read_nifti(raw: bytes, name: str) -> tuple[nib.Nifti1Header, np.ndarray]:
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


def _checked_voxels(header: nib.Nifti1Header, data: np.ndarray, reference: nib.Nifti1Header | None) -> np.ndarray:
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


def _to_uint8(part: np.ndarray, peak: float) -> np.ndarray:
    """``part`` scaled by ``255 / peak`` in float32, rounded half to even, clipped to 0..255.

    `peak` is the volume's maximum, so nothing exceeds 255 and only negatives need clipping.
    """
    scaled = np.multiply(part, np.float32(255.0 / peak), dtype=np.float32)
    np.rint(scaled, out=scaled)
    if part.dtype.kind != "u" and part.min(initial=0) < 0:
        np.maximum(scaled, 0, out=scaled)
    return scaled.astype(np.uint8)


def _foreground(volume: np.ndarray, peak: float, data: DataConfig) -> np.ndarray:
    """:func:`foreground_fraction` of the scaled volume, per axial slice, without scaling all of it.

    For integer voxels the threshold moves into voxel units: scaling is monotonic, so a voxel
    is foreground when it reaches the smallest value whose scaled value exceeds the threshold.
    """
    threshold = data.intensity_threshold
    if threshold < 0:  # every pixel, the padding too, is above a negative threshold
        return np.ones(volume.shape[-1])
    if volume.dtype.kind not in "iu" or peak > 1 << 20:
        return foreground_fraction(_to_uint8(volume, peak), threshold, data.pad_to)
    scaled = _to_uint8(np.arange(int(peak) + 1, dtype=np.int64), peak)  # every value the volume can hold
    first_above = int(np.searchsorted(scaled, threshold, side="right"))
    return (volume >= first_above).sum(axis=(0, 1), dtype=np.int64) / float(data.pad_to * data.pad_to)


def _prepare_subject(subject: Subject, source: Path, data: DataConfig, label_map: dict[int, int]) -> _Prepared:
    """Read, check, scale, slice, filter and resample one subject (runs in a worker).

    Every check looks at the whole volume; the work after the foreground filter (scaling,
    label encoding, padding) touches only the kept slices.
    """
    result = _Prepared(subject.name, hashes={})
    voxels: dict[str, np.ndarray] = {}
    peaks: dict[str, float] = {}
    reference = None
    for channel in CHANNELS:
        path = subject.files[channel]
        rel = path.relative_to(source).as_posix()
        try:
            raw = path.read_bytes()
            result.hashes[rel] = hashlib.sha256(raw).hexdigest()
            header, volume = _read_nifti(raw, path.name)
            del raw
            volume = _checked_voxels(header, volume, reference)
            if channel == "t1":
                reference = header
                zooms = tuple(float(v) for v in header.get_zooms()[:3])
                if len(zooms) != 3 or not all(math.isfinite(v) and v > 0 for v in zooms):
                    raise ValueError(f"voxel size {list(zooms)} mm in the header is not 3 positive numbers")
                result.spacing = (zooms[0], zooms[1], zooms[2])
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
    fraction = _foreground(voxels[data.filter_channel], peaks[data.filter_channel], data)
    keep = np.flatnonzero(fraction > data.min_foreground_fraction)
    result.total, result.z = int(fraction.size), keep.tolist()
    h, w = voxels["t1"].shape[:2]
    top, left = (data.pad_to - h) // 2, (data.pad_to - w) // 2
    padded = np.zeros((len(keep), len(CHANNELS), data.pad_to, data.pad_to), dtype=np.uint8)
    for index, channel in enumerate(CHANNELS):
        if channel == "seg":
            part = encode_labels(voxels[channel][..., keep], label_map, check=False)  # checked whole above
        else:
            part = _to_uint8(voxels[channel][..., keep], peaks[channel])
        padded[:, index, top:top + h, left:left + w] = np.moveaxis(part, -1, 0)  # [k, X, Y]
    result.slices = resample_slices(padded, data.size)
    return result


def _run(subjects: list[Subject], source: Path, data: DataConfig, label_map: dict[int, int],
         workers: int) -> Iterator[_Prepared]:
    """Prepared subjects in input order; `workers` > 1 runs them in a process pool."""
    if workers <= 1:
        for subject in subjects:
            yield _prepare_subject(subject, source, data, label_map)
        return
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: deque[futures.Future] = deque()
        for subject in subjects:  # at most 2 x workers subjects in flight (bounded memory)
            pending.append(pool.submit(_prepare_subject, subject, source, data, label_map))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _content_hash(hashes: dict[str, str]) -> str:
    """sha256 over ``<relative path>\\t<file sha256>\\n`` lines in sorted path order."""
    digest = hashlib.sha256()
    for rel in sorted(hashes):
        digest.update(f"{rel}\t{hashes[rel]}\n".encode())
    return digest.hexdigest()


def _csv(rows: list[list[Any]], header: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def prepare(source: str | Path, out: Path, cfg: Config, *, workers: int = 1, endpoint_url: str | None = None,
            download_dir: Path | None = None) -> PrepareResult:
    """Slice a BraTS dataset into a slice store at `out`, split by subject.

    Args:
        source: BraTS directory (one folder per subject, BraTS 2020/2021/2023 file names) or
            ``s3://bucket/prefix``.
        out: slice store directory; also receives ``rejected.csv``, ``subjects.csv`` and
            ``config.yaml``. Complete shards of an interrupted earlier run are reused.
        cfg: the resolved config (``cfg.data`` drives everything here).
        workers: processes reading subjects in parallel (1: in this process). Workers are
            spawned, so a calling script needs the usual ``if __name__ == "__main__":`` guard.
        endpoint_url: S3 endpoint for an ``s3://`` source (default ``$AWS_ENDPOINT_URL``);
            credentials come from the environment only.
        download_dir: where an ``s3://`` source is downloaded and kept. By default a folder
            beside `out`, kept when the run fails (a re-run resumes the download) and removed
            when it succeeds.

    Returns:
        Counts per split, rejected subjects and the manifest.

    Raises:
        PrepareError: the source is missing, has too few subjects for the split, lacks some
            of the authors' test subjects under ``data.split: published`` (named), or no
            subject could be prepared; the message names the source.
        SourceError: an ``s3://`` source cannot be listed or downloaded (named).
    """
    out, label = Path(out), str(source)
    if is_s3_uri(label):
        root = Path(download_dir) if download_dir is not None else out.parent / f".{out.name}.download"
        with StageMonitor("download", unit="files", instance=out.name) as monitor:
            fetched = fetch_s3(label, root, endpoint_url=endpoint_url, workers=max(4, 2 * workers),
                               progress=lambda done, total: monitor.progress(done, total))
        log.info("prepare: %s: %d files (%d downloaded, %d already complete) in %s", label, fetched.files,
                 fetched.downloaded, fetched.skipped, root)
        result = _prepare_dir(label, root, out, cfg, workers)
        if download_dir is None:
            shutil.rmtree(root, ignore_errors=True)
        return result
    if "://" in label:
        raise PrepareError(f"{label}: unsupported URI scheme (use a directory or s3://bucket/prefix)")
    root = Path(source)
    if not root.is_dir():
        raise PrepareError(f"{label}: source directory not found")
    return _prepare_dir(label, root, out, cfg, workers)


def _prepare_dir(label: str, root: Path, out: Path, cfg: Config, workers: int) -> PrepareResult:
    data = cfg.data
    try:
        layout, subjects, rejected, leftover = find_subjects(root, data.layout)
    except StoreError as exc:
        raise PrepareError(f"{label}: {exc}") from None
    label_map = dict(data.label_map) if data.label_map is not None else dict(layout.label_map)
    log.info("prepare: %s layout, label map %s", layout.name, label_map)
    for rejection in rejected:
        log.warning("prepare: rejected subject %s (%s): %s", rejection.subject, rejection.file, rejection.reason)
    if not subjects:
        _write_rejected(out, rejected)
        raise PrepareError(f"{label}: no complete BraTS subject found (need five files per subject: "
                           f"<id>_{{t1,t1ce,t2,flair,seg}}.nii.gz, or <id>-{{t1n,t1c,t2w,t2f,seg}}.nii.gz for 2023)"
                           + (f"; {len(rejected)} incomplete, see {out / 'rejected.csv'}" if rejected else ""))
    try:
        plan = assign_splits([s.name for s in subjects], data, layout.name, incomplete=[r.subject for r in rejected])
    except SplitError as exc:
        if rejected:
            _write_rejected(out, rejected)
        raise PrepareError(f"{label}: {exc}") from None
    splits = plan.assignment
    hashes = {p.relative_to(root).as_posix(): sha256_file(p) for p in leftover}
    # Files are hashed as they are read; the writer's source and counts are final at close.
    writer = StoreWriter(out, image_size=data.size, source={"path": label}, shard_size=data.shard_size)
    rows, counts, slices = [], {s: 0 for s in SPLITS}, {s: 0 for s in SPLITS}
    spacings: set[tuple[float, float, float]] = set()
    total = 0
    with StageMonitor("prepare", unit="subjects", total=len(subjects)) as monitor:
        for done, result in enumerate(_run(subjects, root, data, label_map, workers), start=1):
            hashes.update(result.hashes)
            if result.rejection is not None:
                rejected.append(result.rejection)
                log.warning("prepare: rejected subject %s (%s): %s", result.name, result.rejection.file, result.rejection.reason)
            else:
                split = splits[result.name]
                writer.add(result.slices, [SliceRow(f"{result.name}_z{z:03d}", result.name, z, split) for z in result.z])
                rows.append([result.name, split, len(result.z), result.total, *(f"{v:g}" for v in result.spacing)])
                spacings.add(result.spacing)
                counts[split] += 1
                slices[split] += len(result.z)
                total += result.total
            monitor.progress(done)
        _write_rejected(out, rejected)
        if not rows:
            raise PrepareError(f"{label}: none of {len(subjects)} subject(s) could be prepared; see {out / 'rejected.csv'}")
        atomic_write_text(out / "subjects.csv", _csv(sorted(rows), ["subject", "split", "slices_kept", "slices_total",
                                                                    *SPACING_COLUMNS]))
        dump_config(cfg, out / "config.yaml")
        writer.source = {"path": label, "content_hash": _content_hash(hashes)}
        writer.extra = {
            "split_seed": data.seed,
            "split": plan.record,  # published (the authors' test subjects) or seeded; see synthmri.data.splits
            "layout": layout.name,
            "label_map": {str(k): v for k, v in label_map.items()},
            "pad_to": data.pad_to,
            "filter": {"channel": data.filter_channel, "intensity_threshold": data.intensity_threshold,
                       "min_foreground_fraction": data.min_foreground_fraction},
            "subjects": dict(counts),
            # One voxel size (x, y, z mm) shared by every subject, else null: then each
            # subject's own is in subjects.csv.
            "spacing": list(next(iter(spacings))) if len(spacings) == 1 else None,
        }
        manifest = writer.close()
    result = PrepareResult(out, label, counts, slices, total, rejected, manifest)
    log.info("prepare: %s", result.summary())
    return result


def _write_rejected(out: Path, rejected: list[Rejection]) -> None:
    rows = [[r.subject, r.file, r.reason] for r in sorted(rejected, key=lambda r: (r.subject, r.file))]
    atomic_write_text(out / "rejected.csv", _csv(rows, ["subject", "file", "reason"]))
