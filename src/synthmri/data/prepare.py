"""``prepare``: BraTS volumes -> the slice store, split by subject (docs/fidelity.md).

The source is a directory or ``s3://bucket/prefix`` (downloaded by :mod:`.sources`), in a
BraTS 2020, 2021 or 2023 layout (:mod:`.layouts`). Per subject (:mod:`.slicing`), as in the
paper and its published code:

1. read each of ``t1, t1ce, t2, flair, seg`` once (whole-file decompression, no lazy access),
   and check it: a 3D numeric finite volume on t1's grid (shape and affine), labels in the map;
   then turn its voxel axes to the canonical ``LPS`` (BraTS's own: a no-op for BraTS files,
   axes permuted and flipped for others, so one store never mixes orientations);
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
prepared. A store is only completed (``manifest.json`` written) when every split the split
made (train always; test and val when it assigned subjects to them) holds slices: otherwise
:class:`PrepareError` names the empty split. Subjects run in ``workers`` threads; the
main thread hands shards to a writer thread in subject order, so the store's bytes do not depend on the worker
count or on an interruption. Progress
goes to optional callbacks; the ``prepare`` stage (:mod:`synthmri.stages.prepare`) wires
them to its monitors.

``subjects.csv`` records per subject its split, the slices kept and examined, the voxel
size in mm from the T1 header along the canonical axes (``spacing_x, spacing_y, spacing_z``),
which the 3D evaluation needs for Hausdorff distances in mm, and the source's voxel axes
(``orientation``, e.g. ``LPS``, ``RAS``); the manifest's ``spacing`` holds the voxel size too
when every subject shares one, and its ``orientation`` the canonical axes and a count of the
source orientations.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from synthmri.config import Config, dump_config
from synthmri.data.layouts import Rejection, find_subjects
from synthmri.data.slicing import (  # noqa: F401 (pad_slices, resample_slices, foreground_fraction, gunzip: re-exported)
    CANONICAL_ORIENTATION,
    foreground_fraction,
    freed_memory_kept,
    gunzip,
    pad_slices,
    prepare_subjects,
    resample_slices,
)
from synthmri.data.sources import fetch_s3, is_s3_uri
from synthmri.data.splits import SplitError, assign_splits, split_subjects  # noqa: F401 (split_subjects: re-exported)
from synthmri.data.store import SPLITS, SliceRow, StoreError, StoreWriter
from synthmri.io import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

SPACING_COLUMNS = ("spacing_x", "spacing_y", "spacing_z")  # subjects.csv: voxel size in mm
SUBJECT_COLUMNS = ("subject", "split", "slices_kept", "slices_total", *SPACING_COLUMNS, "orientation")


class PrepareError(StoreError):
    """Nothing could be prepared, a split ended without slices, or the source cannot make the requested split."""


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


#: Reports progress: (done, total).
Progress = Callable[[int, int], None]


def prepare(source: str | Path, out: Path, cfg: Config, *, workers: int = 1, endpoint_url: str | None = None,
            download_dir: Path | None = None, progress: Progress | None = None,
            download_progress: Progress | None = None) -> PrepareResult:
    """Slice a BraTS dataset into a slice store at `out`, split by subject.

    Args:
        source: BraTS directory (one folder per subject, BraTS 2020/2021/2023 file names) or
            ``s3://bucket/prefix``.
        out: slice store directory; also receives ``rejected.csv``, ``subjects.csv`` and
            ``config.yaml``. Complete shards of an interrupted earlier run are reused.
        cfg: the resolved config (``cfg.data`` drives everything here).
        workers: subjects read in parallel, in threads (1: one after the other).
        endpoint_url: S3 endpoint for an ``s3://`` source (default ``$AWS_ENDPOINT_URL``);
            credentials come from the environment only.
        download_dir: where an ``s3://`` source is downloaded and kept. By default a folder
            beside `out`, kept when the run fails (a re-run resumes the download) and removed
            when it succeeds.
        progress: called with (subjects done, subjects) as subjects are prepared.
        download_progress: called with (files done, files) as an ``s3://`` source downloads.

    Returns:
        Counts per split, rejected subjects and the manifest.

    Raises:
        PrepareError: the source is missing, has too few subjects for the split, lacks some
            of the authors' test subjects under ``data.split: published`` (named), or a split
            the split made (train always) ends without slices (named); the message names the
            source, and no ``manifest.json`` is left in `out`.
        SourceError: an ``s3://`` source cannot be listed or downloaded (named).
    """
    with source_directory(source, out, workers=workers, endpoint_url=endpoint_url, download_dir=download_dir,
                          progress=download_progress) as root:
        with freed_memory_kept():  # the same volume-sized buffers, reused for every subject
            return prepare_directory(str(source), root, out, cfg, workers=workers, progress=progress)


@contextlib.contextmanager
def source_directory(source: str | Path, out: Path, *, workers: int = 1, endpoint_url: str | None = None,
                     download_dir: Path | None = None, progress: Progress | None = None) -> Iterator[Path]:
    """The local directory of `source`: the directory itself, or an ``s3://`` source downloaded.

    The download happens on entry. Its folder (default: ``.<out name>.download`` beside
    `out`) is removed on a clean exit unless `download_dir` was given, and kept after an
    error so that a re-run resumes it.

    Args:
        source: BraTS directory or ``s3://bucket/prefix``.
        out: The slice store directory (names the default download folder).
        workers: Subject workers of the preparation (the download uses twice as many, at least 4).
        endpoint_url: S3 endpoint for an ``s3://`` source.
        download_dir: Where to download and keep an ``s3://`` source.
        progress: Called with (files done, files) during the download.

    Yields:
        The directory to prepare.

    Raises:
        PrepareError: an unsupported URI scheme or a missing directory.
        SourceError: an ``s3://`` source cannot be listed or downloaded (named).
    """
    out, label = Path(out), str(source)
    if is_s3_uri(label):
        root = Path(download_dir) if download_dir is not None else out.parent / f".{out.name}.download"
        fetched = fetch_s3(label, root, endpoint_url=endpoint_url, workers=max(4, 2 * workers), progress=progress)
        log.info("prepare: %s: %d files (%d downloaded, %d already complete) in %s", label, fetched.files,
                 fetched.downloaded, fetched.skipped, root)
        yield root
        if download_dir is None:
            shutil.rmtree(root, ignore_errors=True)
        return
    if "://" in label:
        raise PrepareError(f"{label}: unsupported URI scheme (use a directory or s3://bucket/prefix)")
    root = Path(source)
    if not root.is_dir():
        raise PrepareError(f"{label}: source directory not found")
    yield root


def prepare_directory(label: str, root: Path, out: Path, cfg: Config, *, workers: int = 1,
                      progress: Progress | None = None) -> PrepareResult:
    """Slice the BraTS directory `root` into a slice store at `out` (see :func:`prepare`).

    Args:
        label: The source as given (recorded in the manifest and named in errors).
        root: The local directory of subject folders.
        out: Slice store directory.
        cfg: The resolved config.
        workers: Subjects read in parallel, in threads.
        progress: Called with (subjects done, subjects) as subjects are prepared.

    Returns:
        Counts per split, rejected subjects and the manifest.

    Raises:
        PrepareError: Too few subjects for the split, or a split the split made has no slices
            (none prepared included); ``manifest.json`` is not written then.
    """
    out = Path(out)
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
        _abandon(out, rejected)
        raise PrepareError(f"{label}: no complete BraTS subject found (need five files per subject: "
                           f"<id>_{{t1,t1ce,t2,flair,seg}}.nii.gz, or <id>-{{t1n,t1c,t2w,t2f,seg}}.nii.gz for 2023)"
                           + (f"; {len(rejected)} incomplete, see {out / 'rejected.csv'}" if rejected else ""))
    try:
        plan = assign_splits([s.name for s in subjects], data, layout.name, incomplete=[r.subject for r in rejected])
    except SplitError as exc:
        if rejected:
            _abandon(out, rejected)
        raise PrepareError(f"{label}: {exc}") from None
    splits = plan.assignment
    hashes = {p.relative_to(root).as_posix(): sha256_file(p) for p in leftover}
    # Files are hashed as they are read; the writer's source and counts are final at close.
    writer = StoreWriter(out, image_size=data.size, source={"path": label}, shard_size=data.shard_size)
    rows, counts, slices = [], {s: 0 for s in SPLITS}, {s: 0 for s in SPLITS}
    spacings: set[tuple[float, float, float]] = set()
    orientations: dict[str, int] = {}
    total = 0
    subject_results = prepare_subjects(subjects, root, data, label_map, workers)
    try:
        for done, result in enumerate(subject_results, start=1):
            hashes.update(result.hashes)
            if result.rejection is not None:
                rejected.append(result.rejection)
                log.warning("prepare: rejected subject %s (%s): %s", result.name, result.rejection.file, result.rejection.reason)
            else:
                split = splits[result.name]
                writer.add(result.slices, [SliceRow(f"{result.name}_z{z:03d}", result.name, z, split) for z in result.z])
                rows.append([result.name, split, len(result.z), result.total, *(f"{v:g}" for v in result.spacing),
                             result.orientation])
                spacings.add(result.spacing)
                orientations[result.orientation] = orientations.get(result.orientation, 0) + 1
                counts[split] += 1
                slices[split] += len(result.z)
                total += result.total
            if progress is not None:
                progress(done, len(subjects))
        _write_rejected(out, rejected)
        if not rows:
            _abandon(out, rejected)
            raise PrepareError(f"{label}: none of {len(subjects)} subject(s) could be prepared; see {out / 'rejected.csv'}")
        atomic_write_text(out / "subjects.csv", _csv(sorted(rows), list(SUBJECT_COLUMNS)))
        _check_splits(label, out, splits, counts, slices, total)
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
            # The voxel axes of every slice, and how many subjects' sources had which axes.
            "orientation": {"canonical": CANONICAL_ORIENTATION, "source": dict(sorted(orientations.items()))},
        }
        manifest = writer.close()
    except BaseException:
        subject_results.close()  # no new subject starts; those in hand finish
        writer.abort()  # the shard in the writer's hands finishes; a resume keeps it
        raise
    result = PrepareResult(out, label, counts, slices, total, rejected, manifest)
    log.info("prepare: %s", result.summary())
    return result


def _check_splits(label: str, out: Path, splits: dict[str, str], counts: dict[str, int], slices: dict[str, int],
                  total: int) -> None:
    """Refuse a store in which a split the subject split made holds no slice.

    Raises:
        PrepareError: naming the first empty split, its subjects and why they gave no slices.
    """
    needed = [s for s in SPLITS if s == "train" or s in splits.values()]
    for split in needed:
        if slices[split]:
            continue
        planned = sum(v == split for v in splits.values())
        why = (f"all {planned} of its subject(s) were rejected, see {out / 'rejected.csv'}" if not counts[split]
               else f"the foreground filter kept none of its {counts[split]} prepared subject(s)' slices")
        (out / "manifest.json").unlink(missing_ok=True)
        raise PrepareError(f"{label}: no slices in the {split} split ({why}); the split needs "
                           f"{', '.join(needed)}; kept {sum(slices.values())} of {total} slices in all. "
                           "The store is left incomplete (no manifest.json)")


def _abandon(out: Path, rejected: list[Rejection]) -> None:
    """Write ``rejected.csv`` for a failed run and drop any earlier manifest: no complete-looking store."""
    _write_rejected(out, rejected)
    (out / "manifest.json").unlink(missing_ok=True)


def _write_rejected(out: Path, rejected: list[Rejection]) -> None:
    rows = [[r.subject, r.file, r.reason] for r in sorted(rejected, key=lambda r: (r.subject, r.file))]
    atomic_write_text(out / "rejected.csv", _csv(rows, ["subject", "file", "reason"]))
