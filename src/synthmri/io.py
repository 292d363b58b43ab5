"""Atomic file writes and content hashing shared by every stage."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    """Write through `write(fileobj)` to a temporary file beside `path`, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data`; readers never see a partial file."""
    _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8); readers never see a partial file."""
    _atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_json(path: Path, obj: Any) -> None:
    """Replace `path` with pretty JSON of `obj`."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: Path, array: np.ndarray) -> str:
    """Save `array` as .npy atomically and return the sha256 of the bytes written."""
    digest = hashlib.sha256()

    class _Hashing:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            digest.update(data)
            return self.handle.write(data)

    def write(handle):
        np.save(_Hashing(handle), np.ascontiguousarray(array), allow_pickle=False)

    _atomic_write(path, write, "wb")
    return digest.hexdigest()


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
