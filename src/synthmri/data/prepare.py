"""``prepare``: BraTS volumes -> the slice store, split by subject (DESIGN.md, 'Paper fidelity').

Per subject, as in the paper and its published code:

1. read each of ``t1, t1ce, t2, flair, seg`` once (whole-file decompression, no lazy access);
2. scale every image volume by its own maximum to 0..255 (uint8);
3. map the BraTS labels to 0/51/102/204 through ``data.label_map``;
4. cut axial slices (last axis), zero-pad each symmetrically to ``pad_to`` x ``pad_to``;
5. keep a slice when more than ``min_foreground_fraction`` of its padded pixels exceed
   ``intensity_threshold`` in ``filter_channel`` (paper: 15 % above 50 in T1);
6. resample kept slices to ``size`` (images smoothly, labels nearest-neighbour).

Subjects are shuffled with ``data.seed`` and split into test / val / train *before* any
volume is decoded, from the subjects whose five files are present: a subject that later
turns out unreadable drops out of its split without reshuffling the others. Unusable
subjects are listed in ``rejected.csv``; the others are still prepared.

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
import re
import tempfile
import zlib
from collections import Counter, deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from synthmri.config import Config, DataConfig, dump_config
from synthmri.data.labels import LabelError, encode_labels
from synthmri.data.store import CHANNELS, SPLITS, SliceRow, StoreError, StoreWriter
from synthmri.io import atomic_write_text, sha256_file
from synthmri.monitoring import StageMonitor

log = logging.getLogger(__name__)

#: File-name suffix -> channel. BraTS 2020/2021 (``_t1ce``) and BraTS 2023 (``-t1c``) names.
SUFFIXES: dict[str, str] = {
    "t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg",
    "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair",
}
SPACING_COLUMNS = ("spacing_x", "spacing_y", "spacing_z")  # subjects.csv: voxel size in mm
_NIFTI = re.compile(r"^(?P<subject>.+)[_-](?P<suffix>[A-Za-z0-9]+)\.nii(\.gz)?$")


class PrepareError(StoreError):
    """Nothing could be prepared, or the source cannot make the requested split."""


@dataclass(frozen=True)
class Rejection:
    """A subject left out, the file at fault (relative to the source) and why."""

    subject: str
    file: str
    reason: str


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
class _Subject:
    name: str
    folder: str  # relative to the source
    files: dict[str, Path]  # channel -> path


@dataclass
class _Prepared:
    name: str
    hashes: dict[str, str]  # relative path -> sha256 of the file's bytes
    slices: np.ndarray | None = None  # uint8 [k, 5, size, size]
    z: list[int] = field(default_factory=list)
    total: int = 0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # voxel size in mm (x, y, z) from the t1 header
    rejection: Rejection | None = None


def find_subjects(source: Path) -> tuple[list[_Subject], list[Rejection], list[Path]]:
    """Subjects under `source`: folders of ``<id>_<channel>.nii[.gz]`` files.

    Returns:
        Complete subjects sorted by name, rejections for incomplete or ambiguous ones, and
        the files of the rejected subjects (they still count towards the source's hash).
    """
    groups: dict[tuple[Path, str], dict[str, list[Path]]] = {}
    for path in sorted(source.rglob("*.nii*")):
        match = _NIFTI.match(path.name)
        if not path.is_file() or not match or match["suffix"].lower() not in SUFFIXES:
            continue
        channel = SUFFIXES[match["suffix"].lower()]
        groups.setdefault((path.parent, match["subject"]), {}).setdefault(channel, []).append(path)
    subjects, rejected, leftover = [], [], []
    names = Counter(name for _, name in groups)
    for (folder, name), files in sorted(groups.items(), key=lambda item: (item[0][1], str(item[0][0]))):
        where = folder.relative_to(source).as_posix()
        missing = [c for c in CHANNELS if c not in files]
        doubled = [c for c in CHANNELS if len(files.get(c, [])) > 1]
        if names[name] > 1:
            rejected.append(Rejection(name, where, f"subject id {name} occurs in {names[name]} folders"))
        elif missing:
            rejected.append(Rejection(name, f"{where}/{name}_{missing[0]}.nii.gz", f"missing {', '.join(missing)}"))
        elif doubled:
            paths = ", ".join(p.name for p in files[doubled[0]])
            rejected.append(Rejection(name, where, f"more than one {doubled[0]} file: {paths}"))
        else:
            subjects.append(_Subject(name, where, {c: files[c][0] for c in CHANNELS}))
            continue
        leftover.extend(p for paths in files.values() for p in paths)
    return subjects, rejected, leftover


def split_subjects(names: list[str], data: DataConfig) -> dict[str, str]:
    """Seeded shuffle of `names`, then ``test_subjects`` to test, ``val_fraction`` of the rest to val.

    Raises:
        PrepareError: fewer than ``test_subjects + 1`` subjects.
    """
    names = sorted(names)
    rest = len(names) - data.test_subjects
    if data.test_subjects < 0 or rest < 1:
        raise PrepareError(f"{len(names)} complete subject(s): need more than data.test_subjects="
                           f"{data.test_subjects} to keep at least one training subject")
    n_val = math.floor(data.val_fraction * rest + 0.5)  # rounded half up
    if data.val_fraction > 0 and rest >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, rest - 1)  # keep at least one training subject
    order = np.random.default_rng(data.seed).permutation(len(names))
    splits = {}
    for position, index in enumerate(order):
        splits[names[index]] = "test" if position < data.test_subjects else "val" if position < data.test_subjects + n_val else "train"
    return splits


def scale_to_uint8(volume: np.ndarray) -> np.ndarray:
    """Scale by the volume's own maximum to 0..255 (rounded, negatives clipped to 0).

    Raises:
        ValueError: NaN/Inf values, or no positive value to scale by.
    """
    volume = np.asarray(volume)
    if volume.dtype.kind not in "biuf":
        raise ValueError(f"unsupported data type {volume.dtype}")
    if volume.dtype.kind == "f" and not np.isfinite(volume).all():
        raise ValueError("NaN or Inf values")
    volume = volume.astype(np.float32, copy=False)
    peak = float(volume.max(initial=0.0))
    if peak <= 0:
        raise ValueError("all-zero image (maximum <= 0)")
    scaled = volume * np.float32(255.0 / peak)
    np.rint(scaled, out=scaled)
    return np.clip(scaled, 0, 255).astype(np.uint8)


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


def _read_nifti(raw: bytes, name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """Decode a whole (optionally gzipped) NIfTI file held in memory: (voxels, voxel size in mm)."""
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    klass = nib.Nifti2Image if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Image
    image = klass.from_bytes(raw)
    data = np.asarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data, tuple(float(v) for v in image.header.get_zooms()[:3])


def _prepare_subject(subject: _Subject, source: Path, data: DataConfig) -> _Prepared:
    """Read, check, scale, slice, filter and resample one subject (runs in a worker)."""
    raw, hashes = {}, {}
    for channel, path in subject.files.items():
        rel = path.relative_to(source).as_posix()
        raw[channel] = path.read_bytes()
        hashes[rel] = hashlib.sha256(raw[channel]).hexdigest()
    result = _Prepared(subject.name, hashes)
    volumes: dict[str, np.ndarray] = {}
    for channel, path in subject.files.items():
        rel = path.relative_to(source).as_posix()
        try:
            volume, zooms = _read_nifti(raw.pop(channel), path.name)
            if volume.ndim != 3:
                raise ValueError(f"not a 3D volume (shape {list(volume.shape)})")
            if channel == "t1":
                if len(zooms) != 3 or not all(math.isfinite(v) and v > 0 for v in zooms):
                    raise ValueError(f"voxel size {list(zooms)} mm in the header is not 3 positive numbers")
                result.spacing = (zooms[0], zooms[1], zooms[2])
            first = volumes.get("t1")
            if first is not None and first.shape != volume.shape:
                raise ValueError(f"shape {list(volume.shape)} differs from t1 {list(first.shape)}")
            if channel == "seg":
                if volume.dtype.kind == "f":
                    if not np.isfinite(volume).all():
                        raise ValueError("NaN or Inf labels")
                    if np.array_equal(volume, np.rint(volume)) and np.abs(volume).max(initial=0) < 2**15:
                        volume = volume.astype(np.int16)
                volume = encode_labels(volume, data.label_map)
            else:
                volume = scale_to_uint8(volume)
            if max(volume.shape[:2]) > data.pad_to:
                raise ValueError(f"slice {volume.shape[0]}x{volume.shape[1]} larger than data.pad_to {data.pad_to}")
            volumes[channel] = volume
        except (OSError, EOFError, zlib.error, LabelError, ValueError, nib.filebasedimages.ImageFileError) as exc:
            result.rejection = Rejection(subject.name, rel, str(exc) or type(exc).__name__)
            return result
        except Exception as exc:  # nibabel raises assorted errors on corrupt headers
            result.rejection = Rejection(subject.name, rel, f"unreadable: {type(exc).__name__}: {exc}")
            return result
    stack = np.stack([volumes[c] for c in CHANNELS])  # [5, X, Y, Z]
    del volumes
    fraction = foreground_fraction(stack[CHANNELS.index(data.filter_channel)], data.intensity_threshold, data.pad_to)
    keep = np.flatnonzero(fraction > data.min_foreground_fraction)
    result.total, result.z = stack.shape[-1], keep.tolist()
    kept = np.moveaxis(stack[..., keep], -1, 0)  # [k, 5, X, Y]
    result.slices = resample_slices(pad_slices(kept, data.pad_to), data.size)
    return result


def _run(subjects: list[_Subject], source: Path, data: DataConfig, workers: int) -> Iterator[_Prepared]:
    """Prepared subjects in input order; `workers` > 1 runs them in a process pool."""
    if workers <= 1:
        for subject in subjects:
            yield _prepare_subject(subject, source, data)
        return
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: deque[futures.Future] = deque()
        for subject in subjects:  # at most 2 x workers subjects in flight (bounded memory)
            pending.append(pool.submit(_prepare_subject, subject, source, data))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _fetch_s3(uri: str, dest: Path) -> Path:
    """Download the NIfTI files under ``s3://bucket/prefix`` into `dest`, keeping relative paths.

    Credentials and endpoint come from the environment (boto3's usual chain,
    ``AWS_ENDPOINT_URL`` for MinIO).
    """
    import boto3

    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = boto3.client("s3")
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith((".nii", ".nii.gz")):
                target = dest / key[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, key, str(target))
                count += 1
    log.info("prepare: downloaded %d NIfTI files from %s", count, uri)
    return dest


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


def prepare(source: str | Path, out: Path, cfg: Config, *, workers: int = 1) -> PrepareResult:
    """Slice a BraTS dataset into a slice store at `out`, split by subject.

    Args:
        source: BraTS directory (one folder per subject, BraTS 2020/2021/2023 file names) or
            ``s3://bucket/prefix``.
        out: slice store directory; also receives ``rejected.csv``, ``subjects.csv`` and
            ``config.yaml``. Complete shards of an interrupted earlier run are reused.
        cfg: the resolved config (``cfg.data`` drives everything here).
        workers: processes reading subjects in parallel (1: in this process). Workers are
            spawned, so a calling script needs the usual ``if __name__ == "__main__":`` guard.

    Returns:
        Counts per split, rejected subjects and the manifest.

    Raises:
        PrepareError: the source is missing, has too few subjects for the split, or no
            subject could be prepared; the message names the source.
    """
    out, label = Path(out), str(source)
    with ExitStack() as stack:
        if label.startswith("s3://"):
            parent = out.parent if out.parent.is_dir() else None
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix=".prepare-source-", dir=parent))
            root = _fetch_s3(label, Path(cache))
        elif "://" in label:
            raise PrepareError(f"{label}: unsupported URI scheme (use a directory or s3://bucket/prefix)")
        else:
            root = Path(source)
            if not root.is_dir():
                raise PrepareError(f"{label}: source directory not found")
        return _prepare_dir(label, root, out, cfg, workers)


def _prepare_dir(label: str, root: Path, out: Path, cfg: Config, workers: int) -> PrepareResult:
    data = cfg.data
    subjects, rejected, leftover = find_subjects(root)
    for rejection in rejected:
        log.warning("prepare: rejected subject %s (%s): %s", rejection.subject, rejection.file, rejection.reason)
    if not subjects:
        _write_rejected(out, rejected)
        raise PrepareError(f"{label}: no complete BraTS subject found (need *_t1, *_t1ce, *_t2, *_flair, *_seg .nii.gz per subject)"
                           + (f"; {len(rejected)} incomplete, see {out / 'rejected.csv'}" if rejected else ""))
    try:
        splits = split_subjects([s.name for s in subjects], data)
    except PrepareError as exc:
        raise PrepareError(f"{label}: {exc}") from None
    hashes = {p.relative_to(root).as_posix(): sha256_file(p) for p in leftover}
    # Files are hashed as they are read; the writer's source and counts are final at close.
    writer = StoreWriter(out, image_size=data.size, source={"path": label}, shard_size=data.shard_size)
    rows, counts, slices = [], {s: 0 for s in SPLITS}, {s: 0 for s in SPLITS}
    spacings: set[tuple[float, float, float]] = set()
    total = 0
    with StageMonitor("prepare", unit="subjects", total=len(subjects)) as monitor:
        for done, result in enumerate(_run(subjects, root, data, workers), start=1):
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
            "label_map": {str(k): v for k, v in data.label_map.items()},
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
