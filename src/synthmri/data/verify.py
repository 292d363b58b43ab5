"""Verification of a slice store before anything reads it (docs/design.md, "The slice store").

:class:`~synthmri.data.store.SliceStore` calls these on every open:

- :func:`check_manifest`: manifest.json has the fields and types a reader relies on, and shard
  names that stay inside ``shards/``;
- :func:`check_content_hash`: the exact bytes of index.csv, with the manifest's shard hashes,
  give the manifest's ``content_hash`` (so an edited index, e.g. test slices relabelled
  ``train``, is refused, and the hash stages record is the hash of what they read);
- :func:`check_index`: every index row points inside its shard, no two rows share a slot, and
  the slices per split (and subjects) are those the manifest counts;
- :func:`verify_shards`: every shard's sha256 is the manifest's.

Hashing is the only cost proportional to the store's size, so a shard already hashed is not
hashed again while its (size, mtime_ns, inode) stay the same: within a process (a memo) and
across processes (one small JSON per store under :func:`cache_dir`, outside the store, whose
directory is a DVC output). A shard whose mtime is within :data:`RACY_NS` of the moment it was
looked at is never remembered: a same-size rewrite in the same clock tick would keep its stat.

:class:`StoreError` lives here, not in ``store.py``, so that ``store.py`` can use this module
without an import circle; ``synthmri.data.store`` re-exports it.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthmri.config import SLICE_CHANNELS
from synthmri.io import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

CACHE_VERSION = 1
#: Shards modified less than this long before they were looked at are hashed but not remembered.
RACY_NS = 2_000_000_000
#: At most this many shards are hashed at once (hashlib and reads release the GIL).
HASH_THREADS = 4
_SHARD_NAME = re.compile(r"shard-\d{5,}\.npy")
_HEX64 = re.compile(r"[0-9a-f]{64}")

#: Shards verified in this process: real path -> ([size, mtime_ns, inode], sha256).
_MEMO: dict[str, tuple[list[int], str]] = {}


class StoreError(ValueError):
    """A store that is missing, incomplete, corrupt or written with the wrong shapes."""


def signature(path: Path) -> list[int]:
    """What the verification cache compares: [size, mtime_ns, inode]."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_manifest(store: Path, manifest: Any) -> None:
    """Raise StoreError (naming manifest.json and the field) unless the manifest is well formed."""
    where = store / "manifest.json"

    def bad(what: str) -> StoreError:
        return StoreError(f"{where}: {what} (a damaged or hand-edited manifest; rebuild or restore the store)")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    if manifest.get("channels") != list(SLICE_CHANNELS):
        raise bad(f"channels {manifest.get('channels')!r}, expected {list(SLICE_CHANNELS)}")
    if not _is_int(manifest.get("image_size")) or manifest["image_size"] < 1:
        raise bad(f"image_size {manifest.get('image_size')!r} is not a positive integer")
    if not isinstance(manifest.get("content_hash"), str) or not _HEX64.fullmatch(manifest["content_hash"]):
        raise bad("content_hash missing or not a sha256")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise bad("'shards' is not a list")
    for number, info in enumerate(shards):
        if not (isinstance(info, dict) and isinstance(info.get("name"), str) and _SHARD_NAME.fullmatch(info["name"])
                and _is_int(info.get("count")) and info["count"] >= 0
                and isinstance(info.get("sha256"), str) and _HEX64.fullmatch(info["sha256"])):
            raise bad(f"shard entry {number} is not {{name: shard-NNNNN.npy, count, sha256}}: {info!r}")
    if len({info["name"] for info in shards}) != len(shards):
        raise bad("a shard is listed twice")
    counts = manifest.get("counts")
    if not (isinstance(counts, dict) and _is_int(counts.get("slices")) and isinstance(counts.get("splits"), dict)
            and all(_is_int(n) for n in counts["splits"].values())):
        raise bad("'counts' lacks slices or splits")
    if sum(info["count"] for info in shards) != counts["slices"]:
        raise bad(f"its shards hold {sum(info['count'] for info in shards)} slices, counts.slices says {counts['slices']}")


def check_content_hash(store: Path, manifest: dict[str, Any], index_bytes: bytes) -> None:
    """Raise StoreError naming index.csv unless sha256(index.csv + shard hashes) is the content_hash."""
    digest = hashlib.sha256(index_bytes)
    for info in manifest["shards"]:
        digest.update(info["sha256"].encode())
    if digest.hexdigest() != manifest["content_hash"]:
        raise StoreError(
            f"{store / 'index.csv'}: does not match the store's manifest.json (its content_hash covers index.csv "
            "and the shard hashes): index.csv or manifest.json was edited after the store was written; "
            "rebuild the store or restore it (dvc checkout / dvc pull)")


def check_index(store: Path, manifest: dict[str, Any], split: np.ndarray, subject: np.ndarray,
                shard: np.ndarray, row: np.ndarray) -> None:
    """Raise StoreError naming index.csv unless its rows fit the shards and the manifest's counts."""
    where = store / "index.csv"
    counts = np.array([info["count"] for info in manifest["shards"]], dtype=np.int64)
    outside = (shard < 0) | (shard >= len(counts)) | (row < 0)
    outside[~outside] = row[~outside] >= counts[shard[~outside]]
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise StoreError(f"{where}: line {first + 2} points at shard {shard[first]} row {row[first]}, outside the "
                         f"{len(counts)} shard(s) manifest.json lists")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    if len(np.unique(offsets[shard] + row)) != len(row):
        raise StoreError(f"{where}: two rows point at the same slice of a shard")
    names, numbers = np.unique(split, return_counts=True)
    found = {str(name): int(n) for name, n in zip(names, numbers)}
    recorded = {str(name): int(n) for name, n in manifest["counts"]["splits"].items() if n}
    if found != recorded:
        raise StoreError(f"{where}: slices per split {found}, manifest.json counts {recorded}")
    subjects = manifest["counts"].get("subjects")
    if _is_int(subjects) and len(np.unique(subject)) != subjects:
        raise StoreError(f"{where}: {len(np.unique(subject))} subjects, manifest.json counts {subjects}")


def cache_dir() -> Path | None:
    """Where verified stores are remembered: $SYNTHMRI_CACHE_DIR/verified, else
    $XDG_CACHE_HOME/synthmri/verified, else ~/.cache/synthmri/verified (None without a home)."""
    if os.environ.get("SYNTHMRI_CACHE_DIR"):
        return Path(os.environ["SYNTHMRI_CACHE_DIR"]) / "verified"
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no $HOME and no passwd entry
        return None
    return base / "synthmri" / "verified"


def cache_file(root: Path) -> Path | None:
    """The cache file of the store whose real (absolute, symlink-free) path is `root`."""
    directory = cache_dir()
    if directory is None:
        return None
    return directory / f"{hashlib.sha256(str(root).encode()).hexdigest()[:32]}.json"


def _read_cache(file: Path | None, root: Path) -> dict[str, tuple[list[int], str]]:
    if file is None:
        return {}
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("version") != CACHE_VERSION or record.get("store") != str(root):
        return {}
    shards = record.get("shards")
    return {name: (entry["stat"], entry["sha256"]) for name, entry in (shards if isinstance(shards, dict) else {}).items()
            if isinstance(entry, dict) and isinstance(entry.get("stat"), list) and isinstance(entry.get("sha256"), str)}


def _write_cache(file: Path | None, root: Path, manifest: dict[str, Any], known: dict[str, tuple[list[int], str]]) -> None:
    if file is None or Path(os.path.realpath(file)).is_relative_to(root):
        return  # never write inside the store: it is a DVC output
    record = {"version": CACHE_VERSION, "store": str(root), "content_hash": manifest["content_hash"],
              "shards": {name: {"stat": sig, "sha256": digest} for name, (sig, digest) in known.items()}}
    try:
        atomic_write_json(file, record)
    except OSError as exc:
        log.debug("slice store %s: verification not cached in %s (%s)", root, file, exc)


def _digest(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read shard ({exc.strerror or exc})") from None


def verify_shards(store: Path, manifest: dict[str, Any], *, use_cache: bool = True) -> dict[str, list[int]]:
    """Check every shard's sha256 against the manifest, hashing only shards not verified before.

    Args:
        store: the store directory.
        manifest: its parsed manifest (checked by :func:`check_manifest`).
        use_cache: False re-hashes every shard (what was verified is still remembered).

    Returns:
        Each shard's signature (:func:`signature`) as verified.

    Raises:
        StoreError: a shard is missing, unreadable or has another sha256 (names the shard's path).
    """
    root = Path(os.path.realpath(store))
    file = cache_file(root)
    cached = _read_cache(file, root) if use_cache else {}
    now = time.time_ns()
    signatures: dict[str, list[int]] = {}
    known: dict[str, tuple[list[int], str]] = {}
    todo: list[dict[str, Any]] = []
    for info in manifest["shards"]:
        path = store / "shards" / info["name"]
        try:
            sig = signatures[info["name"]] = signature(path)
        except FileNotFoundError:
            raise StoreError(f"{path}: shard missing (slice store {store} is incomplete; rebuild or restore it)") from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot read shard ({exc.strerror or exc})") from None
        remembered = [_MEMO.get(str(root / "shards" / info["name"])), cached.get(info["name"])] if use_cache else []
        if any(entry is not None and entry == (sig, info["sha256"]) for entry in remembered):
            known[info["name"]] = (sig, info["sha256"])
        else:
            todo.append(info)
    paths = [store / "shards" / info["name"] for info in todo]
    with futures.ThreadPoolExecutor(max(1, min(len(todo), HASH_THREADS, os.cpu_count() or 1))) as pool:
        digests = list(pool.map(_digest, paths))
    for info, path, digest in zip(todo, paths, digests):
        if digest != info["sha256"]:
            raise StoreError(f"{path}: sha256 mismatch: the shard is corrupt or was modified after slice store {store} "
                             f"was written (manifest.json records {info['sha256'][:12]}…, the file hashes to "
                             f"{digest[:12]}…); rebuild the store or restore it (dvc checkout / dvc pull)")
        if now - signatures[info["name"]][1] > RACY_NS:
            known[info["name"]] = (signatures[info["name"]], digest)
    for name, entry in known.items():
        _MEMO[str(root / "shards" / name)] = entry
    if known != {name: entry for name, entry in cached.items() if name in signatures}:
        _write_cache(file, root, manifest, known)
    return signatures
