"""Atomic file writes, safe checkpoint loads and content hashing shared by every stage.

Every file synthmri writes goes through :func:`atomic_write`: a temporary file beside the
target, fsynced, given :data:`FILE_MODE`, renamed over the target, then the directory
fsynced. A reader never sees a partial file, a crash leaves the old file or the new one, and
a failed write leaves no temporary behind.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

#: Mode of every file synthmri writes: ``rw-r--r--``, whatever the umask. Outputs (slice
#: stores, checkpoints, reports) are read by other users and containers (a shared volume, the
#: DVC cache, an MLflow artifact copy) and hold nothing secret; ``mkstemp`` would leave 0600.
FILE_MODE = 0o644

#: Errors of ``fsync`` on a directory that mean "not supported here" (some network and FUSE
#: file systems), not "the data is at risk".
_DIRECTORY_FSYNC_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def fsync_directory(directory: Path) -> None:
    """Flush `directory`'s entries (a rename into it) to disk, where the file system can."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIRECTORY_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None], *, binary: bool = True) -> None:
    """Replace `path` with what `write` writes to a file handle: all or nothing, durably.

    `write` gets a handle on a temporary file in `path`'s directory (so the rename stays on
    one file system). The file is flushed, given :data:`FILE_MODE`, fsynced and renamed over
    `path`; then the directory is fsynced, so the rename survives a crash too. If `write` or
    any step raises (KeyboardInterrupt included), the temporary file is removed and `path`
    keeps its old content.

    Args:
        path: The file to replace (its parent directories are created).
        write: Called once with the open handle.
        binary: A bytes handle; False: a text handle (UTF-8).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "wb") if binary else open(fd, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (see :func:`atomic_write`)."""
    atomic_write(path, _Writer(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text`, UTF-8 (see :func:`atomic_write`)."""
    atomic_write(path, _Writer(text), binary=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Replace `path` with pretty JSON of `obj`."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: Path, payload: Mapping[str, Any]) -> None:
    """``torch.save`` a dict to `path` atomically (see :func:`atomic_write`): every checkpoint.

    Keep payloads to tensors, numbers, strings, lists and dicts, so :func:`torch_load`
    reads them without unpickling code.
    """
    import torch

    atomic_write(path, functools.partial(torch.save, dict(payload)))


def torch_load(path: Path) -> Any:
    """Load a ``torch.save`` file on the CPU without unpickling code (``weights_only=True``).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a loadable checkpoint (foreign or corrupt).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or corrupt files
        raise ValueError(f"{path}: not a loadable checkpoint ({exc})") from None


class _Writer:
    """``write(handle)`` of fixed content: the callback of :func:`atomic_write_bytes` and ``_text``."""

    def __init__(self, content: bytes | str) -> None:
        self.content = content

    def __call__(self, handle: Any) -> None:
        handle.write(self.content)


def atomic_save_npy_parts(path: Path, parts: list[np.ndarray]) -> str:
    """Save the concatenation of `parts` (same dtype and trailing shape) as one .npy, atomically.

    The bytes equal ``np.save(path, np.concatenate(parts))``, but the parts stream straight
    to the file and the hash, without building the concatenated array: a shard of a few
    hundred MB is written, not copied twice first.

    Returns:
        The sha256 of the bytes written.

    Raises:
        ValueError: no parts, or parts that do not stack (dtype or trailing shape differ).
    """
    if not parts:
        raise ValueError(f"{path}: nothing to save")
    first = parts[0]
    if any(p.dtype != first.dtype or p.shape[1:] != first.shape[1:] for p in parts):
        raise ValueError(f"{path}: parts differ in dtype or trailing shape")
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
              "shape": (sum(len(p) for p in parts), *first.shape[1:])}
    writer = _NpyParts(header, parts)
    atomic_write(path, writer)
    return writer.digest.hexdigest()


class _NpyParts:
    """``write(handle)`` of a .npy header and its parts' bytes, hashing what it writes."""

    def __init__(self, header: dict[str, Any], parts: list[np.ndarray]) -> None:
        self.header, self.parts, self.digest = header, parts, hashlib.sha256()

    def __call__(self, handle: Any) -> None:
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, self.header)
        for block in (head.getbuffer(), *(memoryview(np.ascontiguousarray(p)).cast("B") for p in self.parts)):
            self.digest.update(block)
            handle.write(block)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def jsonable(value: Any) -> Any:
    """`value` with non-finite floats replaced by None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def read_stage_summary(path: Path, *, stage: str, required: tuple[str, ...]) -> dict[str, Any]:
    """Read a stage's ``summary.json`` (given the file or its directory) and check its keys.

    Args:
        path: the summary file or the stage's output directory.
        stage: the verb that writes it, for messages (``evaluate-segmenter``).
        required: top-level keys that must be present.

    Raises:
        FileNotFoundError: no summary there (names the file and the stage to run).
        ValueError: not valid JSON, or a required key is missing (named).
    """
    path = Path(path)
    file = path if path.suffix == ".json" else path / "summary.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: {stage} summary not found (run {stage} first)")
    try:
        summary = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from None
    missing = [key for key in required if key not in summary]
    if missing or not isinstance(summary, dict):
        raise ValueError(f"{file}: not an {stage} summary (missing {missing})")
    return summary


#: Where the Kubeflow Pipelines launcher mounts an artifact, by the scheme of its URI.
_LAUNCHER_MOUNTS = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}


def artifact_paths(value: str | Path) -> list[Path]:
    """The local paths behind one path argument, which may list several artifacts.

    A fan-in in a Kubeflow pipeline (``dsl.Collected``) hands a container a JSON artifact
    list, ``{"artifacts": [{"uri": ...}, ...]}`` (or the bare list), instead of one path.
    Each URI maps to the path the pipeline launcher mounts it at (``s3://b/k`` ->
    ``/s3/b/k``, ``minio://`` -> ``/minio/``, ``gs://`` -> ``/gcs/``); a local URI is
    its own path. Any other value is one ordinary path.

    Args:
        value: a path, or a JSON artifact list.

    Returns:
        The paths, in the list's order.

    Raises:
        ValueError: the value looks like JSON but is not an artifact list (named).
    """
    text = str(value).strip()
    if not text.startswith(("{", "[")):
        return [Path(value)]
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{text[:80]!r}: neither a path nor a JSON artifact list ({exc})") from None
    entries = parsed.get("artifacts") if isinstance(parsed, dict) else parsed
    if not isinstance(entries, list) or not all(isinstance(e, dict) and e.get("uri") for e in entries):
        raise ValueError(f"{text[:80]!r}: a JSON artifact list needs entries with a 'uri'")
    paths = []
    for entry in entries:
        uri = str(entry["uri"])
        scheme = next((s for s in _LAUNCHER_MOUNTS if uri.startswith(s)), None)
        paths.append(Path(_LAUNCHER_MOUNTS[scheme] + uri[len(scheme):]) if scheme else Path(uri.removeprefix("file://")))
    return paths


def expand_artifact_paths(values: list[str | Path] | None) -> list[Path]:
    """:func:`artifact_paths` of every value, concatenated (for repeatable path flags)."""
    return [path for value in values or [] for path in artifact_paths(value)]


def scalar_metrics(summary: Any, prefix: str = "") -> dict[str, float]:
    """The finite numbers in a nested summary, flattened to ``a.b.c`` names (booleans excluded).

    What a pipeline's metrics artifact shows: every score a stage reported, and nothing else.
    """
    metrics: dict[str, float] = {}
    if isinstance(summary, dict):
        for key, value in summary.items():
            metrics.update(scalar_metrics(value, f"{prefix}{key}."))
    elif isinstance(summary, (int, float, np.number)) and not isinstance(summary, bool):
        if np.isfinite(float(summary)):
            metrics[prefix.rstrip(".")] = float(summary)
    return metrics
