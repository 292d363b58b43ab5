"""The slice store: the one on-disk contract between every stage (docs/design.md, "The slice store").

A store is a directory::

    manifest.json              written last; its presence marks a complete store
    index.csv                  slice_id,subject,z,split,shard,row  (one row per slice)
    shards/shard-NNNNN.npy     uint8 [n, 5, H, W], memory-mappable

Shards are written to a temporary name and renamed. While a store is being written, each
finished shard also gets a sidecar in ``.partial/`` with its rows and sha256, so a killed
writer can resume from complete shards and produce identical bytes.

Opening a store verifies it (synthmri.data.verify): manifest, index.csv against the
manifest's content hash, and every shard's sha256, the last cached outside the store.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from synthmri.config import SLICE_CHANNELS, SLICE_SPLITS
from synthmri.data.labels import LABEL_VALUES
from synthmri.data.verify import StoreError, check_content_hash, check_index, check_manifest, signature, verify_shards
from synthmri.io import atomic_save_npy_parts, atomic_write_json, atomic_write_text, sha256_file

SCHEMA_VERSION = 1
CHANNELS: tuple[str, ...] = SLICE_CHANNELS
IMAGE_CHANNELS = 4  # the first four channels are MR contrasts; the fifth is the annotation
INDEX_COLUMNS = ("slice_id", "subject", "z", "split", "shard", "row")
SPLITS: tuple[str, ...] = SLICE_SPLITS


@dataclass(frozen=True)
class SliceRow:
    """Where one slice came from. `z` is -1 and `subject` the generator for synthetic slices."""

    slice_id: str
    subject: str
    z: int
    split: str


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.npy"


class StoreWriter:
    """Append slices in order; shards are flushed atomically, the manifest written on close.

    Args:
        out: store directory (created).
        image_size: H = W of every slice.
        source: provenance for the manifest (e.g. ``{"path": ..., "content_hash": ...}``).
        shard_size: slices per shard.
        generator: for synthetic stores, ``{"name": ..., "version": ...}``.
        extra: more manifest fields (e.g. the split seed, the label map).
        resume: keep shards a killed earlier writer completed; slices re-added for them are
            checked against the recorded ids and not rewritten.

    Use as a context manager; an exception leaves the store incomplete (no manifest).
    """

    def __init__(
        self,
        out: Path,
        *,
        image_size: int,
        source: dict[str, Any],
        shard_size: int = 1024,
        generator: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        resume: bool = True,
    ) -> None:
        if shard_size < 1:
            raise StoreError(f"shard_size must be positive, got {shard_size}")
        self.out = Path(out)
        self.image_size = int(image_size)
        self.source = source
        self.generator = generator
        self.extra = extra or {}
        self.shard_size = int(shard_size)
        self._shards_dir = self.out / "shards"
        self._partial = self.out / ".partial"
        # The store is incomplete from here until close(): drop a stale manifest first.
        (self.out / "manifest.json").unlink(missing_ok=True)
        if not resume and self.out.exists():
            shutil.rmtree(self._shards_dir, ignore_errors=True)
            shutil.rmtree(self._partial, ignore_errors=True)
            (self.out / "index.csv").unlink(missing_ok=True)
        self._shards_dir.mkdir(parents=True, exist_ok=True)
        self._partial.mkdir(parents=True, exist_ok=True)
        self._done: list[dict[str, Any]] = self._load_completed() if resume else []
        self._buffer: list[np.ndarray] = []
        self._rows: list[SliceRow] = []
        self._count = 0  # slices added so far, including those skipped on resume
        self._writer: futures.ThreadPoolExecutor | None = None
        self._writing: list[futures.Future] = []

    def _load_completed(self) -> list[dict[str, Any]]:
        """Sidecars of consecutive complete shards whose bytes still match their sha256."""
        done = []
        number = 0
        while (sidecar := self._partial / f"shard-{number:05d}.json").is_file():
            record = json.loads(sidecar.read_text())
            shard = self._shards_dir / shard_name(number)
            if not shard.is_file() or sha256_file(shard) != record["sha256"]:
                break
            done.append(record)
            number += 1
        return done

    @property
    def resumed_slices(self) -> int:
        """How many leading slices are already in complete shards from an earlier run."""
        return sum(len(r["rows"]) for r in self._done)

    def add(self, slices: np.ndarray, rows: Sequence[SliceRow]) -> None:
        """Append `slices` (uint8 [n, 5, H, W]) with one SliceRow each."""
        slices = np.asarray(slices)
        expected = (len(CHANNELS), self.image_size, self.image_size)
        if slices.ndim != 4 or slices.shape[1:] != expected:
            raise StoreError(f"{self.out}: slices must be [n, {expected[0]}, {expected[1]}, {expected[2]}], got {list(slices.shape)}")
        if slices.dtype != np.uint8:
            raise StoreError(f"{self.out}: slices must be uint8, got {slices.dtype}")
        if len(rows) != len(slices):
            raise StoreError(f"{self.out}: {len(slices)} slices but {len(rows)} index rows")
        for start in range(0, len(slices), self.shard_size):
            self._add_chunk(slices[start : start + self.shard_size], rows[start : start + self.shard_size])

    def _add_chunk(self, slices: np.ndarray, rows: Sequence[SliceRow]) -> None:
        position = 0
        while position < len(slices):
            shard_number = self._count // self.shard_size
            room = self.shard_size - self._count % self.shard_size
            take = min(room, len(slices) - position)
            part, part_rows = slices[position : position + take], rows[position : position + take]
            if shard_number < len(self._done):
                # Already written by an earlier run: the stream must be the same.
                offset = self._count % self.shard_size
                recorded = [r[0] for r in self._done[shard_number]["rows"][offset : offset + take]]
                if recorded != [r.slice_id for r in part_rows]:
                    raise StoreError(
                        f"{self.out}: resumed shard {shard_number} holds other slices than this run produces; "
                        "delete the store or run without resume"
                    )
            else:
                self._buffer.append(part)
                self._rows.extend(part_rows)
            self._count += take
            position += take
            if self._count % self.shard_size == 0 and self._buffer:
                self._flush()

    def _flush(self) -> None:
        """Hand the full buffer to the writer thread as the next shard.

        Writing and hashing a shard (hundreds of MB at full size) runs beside the producer,
        which goes on filling the next shard: ``prepare``'s workers are not held up while the
        main process writes. At most one shard is in the writer's hands while the next fills,
        so memory stays at two shards. The record's sidecar, which a resumed writer trusts, is
        written only after its shard is on disk.
        """
        record = {
            "shard": shard_name(len(self._done)),
            "count": sum(len(part) for part in self._buffer),
            "sha256": None,  # set by the writer thread
            "rows": [[r.slice_id, r.subject, r.z, r.split] for r in self._rows],
        }
        self._done.append(record)
        parts, self._buffer, self._rows = self._buffer, [], []
        if self._writer is None:
            self._writer = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        while self._writing:  # the previous shard first: bounded memory, errors in order
            self._writing.pop(0).result()
        self._writing.append(self._writer.submit(self._save_shard, record, parts))

    def _save_shard(self, record: dict[str, Any], parts: list[np.ndarray]) -> None:
        number = int(record["shard"][len("shard-"):-len(".npy")])
        record["sha256"] = atomic_save_npy_parts(self._shards_dir / record["shard"], parts)
        atomic_write_json(self._partial / f"shard-{number:05d}.json", record)

    def _finish_writing(self) -> None:
        """Wait for the writer thread; re-raise its first error."""
        try:
            while self._writing:
                self._writing.pop(0).result()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True, cancel_futures=True)
                self._writer = None

    def close(self) -> dict[str, Any]:
        """Flush the last shard, write index.csv, then manifest.json; returns the manifest."""
        if self._buffer:
            self._flush()
        self._finish_writing()
        if self._count < self.resumed_slices:
            raise StoreError(f"{self.out}: this run produced {self._count} slices, fewer than the {self.resumed_slices} already stored")
        # Shards beyond what this run produced are stale leftovers of a different earlier run.
        for stale in self._shards_dir.glob("shard-*.npy"):
            if stale.name not in {r["shard"] for r in self._done}:
                stale.unlink()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        splits: dict[str, int] = {}
        subjects: set[str] = set()
        for number, record in enumerate(self._done):
            for row_number, (slice_id, subject, z, split) in enumerate(record["rows"]):
                writer.writerow([slice_id, subject, z, split, number, row_number])
                splits[split] = splits.get(split, 0) + 1
                subjects.add(subject)
        index_text = buffer.getvalue()
        atomic_write_text(self.out / "index.csv", index_text)
        shards = [{"name": r["shard"], "count": r["count"], "sha256": r["sha256"]} for r in self._done]
        content = hashlib.sha256(index_text.encode())
        for shard in shards:
            content.update(shard["sha256"].encode())
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "channels": list(CHANNELS),
            "image_size": self.image_size,
            "label_values": list(LABEL_VALUES),
            "source": self.source,
            "generator": self.generator,
            "counts": {"slices": self._count, "subjects": len(subjects), "splits": splits},
            "shards": shards,
            "content_hash": content.hexdigest(),
            **self.extra,
        }
        atomic_write_json(self.out / "manifest.json", manifest)
        shutil.rmtree(self._partial, ignore_errors=True)
        return manifest

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Stop after the shard being written (on the way out of a failure): no write goes on
        after the caller has moved on or removed the store. Completed shards stay for a resume."""
        with contextlib.suppress(Exception):
            self._finish_writing()


class SliceStore:
    """Read a complete slice store, verified first; shards are memory-mapped on first use.

    Opening checks the manifest, that index.csv is the one the manifest's content hash covers
    (so :attr:`content_hash` is the hash of what is read) and fits the shards and counts, and
    every shard's sha256; shards already hashed with the same size, mtime and inode are not
    hashed again (synthmri.data.verify). Any failure is a StoreError naming the file.

    Args:
        path: the store directory.
        verify: False skips the hashes (for tests of the writer only; library code never does).

    Attributes:
        path: the store directory.
        manifest: the parsed manifest.json.
        slice_id, subject, split: numpy arrays of str, one entry per slice (index order).
        z, shard, row: numpy int arrays, one entry per slice.
    """

    def __init__(self, path: Path, verify: bool = True) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            why = "a writer was interrupted" if (self.path / ".partial").exists() else "not a slice store"
            raise StoreError(f"{self.path}: manifest.json missing ({why})")
        try:
            self.manifest = json.loads(manifest_path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{manifest_path}: not valid JSON ({exc})") from None
        version = self.manifest.get("schema_version") if isinstance(self.manifest, dict) else None
        if version != SCHEMA_VERSION:
            raise StoreError(f"{manifest_path}: schema_version {version!r}, expected {SCHEMA_VERSION}")
        check_manifest(self.path, self.manifest)
        index_path = self.path / "index.csv"
        try:
            index_bytes = index_path.read_bytes()
        except OSError as exc:
            raise StoreError(f"{index_path}: cannot read ({exc.strerror or exc})") from None
        if verify:  # the bytes parsed below are the bytes hashed here
            check_content_hash(self.path, self.manifest, index_bytes)
        self._load_index(index_bytes)
        self._shards: dict[int, np.ndarray] = {}
        self._verified: dict[str, list[int]] | None = verify_shards(self.path, self.manifest) if verify else None

    def _load_index(self, data: bytes) -> None:
        index_path = self.path / "index.csv"
        try:
            table = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise StoreError(f"{index_path}: not a readable CSV ({exc})") from None
        header, rows = (table[0], table[1:]) if table else (None, [])
        if tuple(header or ()) != INDEX_COLUMNS:
            raise StoreError(f"{index_path}: header {header}, expected {list(INDEX_COLUMNS)}")
        if (bad := next((n for n, r in enumerate(rows) if len(r) != len(INDEX_COLUMNS)), None)) is not None:
            raise StoreError(f"{index_path}: line {bad + 2} has {len(rows[bad])} fields, expected {len(INDEX_COLUMNS)}")
        columns = list(zip(*rows)) or [()] * len(INDEX_COLUMNS)
        self.slice_id = np.asarray(columns[0], dtype=str)
        self.subject = np.asarray(columns[1], dtype=str)
        self.split = np.asarray(columns[3], dtype=str)
        try:
            self.z, self.shard, self.row = (np.asarray(columns[c], dtype=np.int64) for c in (2, 4, 5))
        except ValueError as exc:
            raise StoreError(f"{index_path}: z, shard and row must be integers ({exc})") from None
        if len(self.slice_id) != self.manifest["counts"]["slices"]:
            raise StoreError(f"{index_path}: {len(self.slice_id)} rows, manifest says {self.manifest['counts']['slices']}")
        check_index(self.path, self.manifest, self.split, self.subject, self.shard, self.row)

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])

    def __len__(self) -> int:
        return len(self.slice_id)

    def indices(self, split: str | Iterable[str] | None = None) -> np.ndarray:
        """Positions (index order) of the slices in `split` (a name, several, or all)."""
        if split is None:
            return np.arange(len(self))
        wanted = [split] if isinstance(split, str) else list(split)
        return np.flatnonzero(np.isin(self.split, wanted))

    def subjects(self, split: str | None = None) -> list[str]:
        """Sorted unique subjects, optionally of one split."""
        return sorted(set(self.subject[self.indices(split)].tolist()))

    def _shard(self, number: int) -> np.ndarray:
        if number not in self._shards:
            info = self.manifest["shards"][number]
            path = self.path / "shards" / info["name"]
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                changed = self._verified is not None and signature(path) != self._verified[info["name"]]
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path}: cannot read shard ({exc})") from None
            if changed:
                raise StoreError(f"{path}: changed since slice store {self.path} was opened and verified; open it again")
            expected = (info["count"], len(CHANNELS), self.image_size, self.image_size)
            if array.shape != expected or array.dtype != np.uint8:
                raise StoreError(f"{path}: shape {list(array.shape)} {array.dtype}, manifest says uint8 {list(expected)}")
            self._shards[number] = array
        return self._shards[number]

    def read(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Slices at `positions` as uint8 [n, 5, H, W], in the order given."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), len(CHANNELS), self.image_size, self.image_size), dtype=np.uint8)
        shards = self.shard[positions]
        for number in np.unique(shards):
            where = np.flatnonzero(shards == number)
            rows = self.row[positions[where]]
            order = np.argsort(rows)  # ascending rows read memory-mapped pages in order
            out[where[order]] = self._shard(int(number))[rows[order]]
        return out

    def iter_batches(self, positions: Sequence[int] | np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (positions, slices) in batches of `batch_size`."""
        positions = np.asarray(positions, dtype=np.int64)
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            yield chunk, self.read(chunk)

    def verify(self) -> None:
        """Verify again, re-hashing every shard (no cache); raise StoreError naming the bad file."""
        check_manifest(self.path, self.manifest)
        check_content_hash(self.path, self.manifest, (self.path / "index.csv").read_bytes())
        self._verified = verify_shards(self.path, self.manifest, use_cache=False)
