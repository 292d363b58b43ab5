"""Completion records: what a finished stage output says about how it was made.

A stage that finishes writes ``completion.json`` into its output (see
:mod:`synthmri.stages.outputs`): the verb, every input by content hash (with the generator
that made each synthetic store), the config's hash, the seed and the MLflow runs. These
functions read and compare records; they are the contract between a stage and whatever
consumes its output (a later attempt deciding "already finished", ``evaluate-segmenter``
refusing an unfinished training run, the promotion gate binding evidence to a model).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synthmri.config import Config

RECORD_NAME = "completion.json"
RUNNING_NAME = ".synthmri-running.json"
RECORD_SCHEMA = 1


class OutputError(ValueError):
    """An output that is missing its completion record, or that a stage may not write over."""


def config_sha256(cfg: "Config") -> str:
    """sha256 of the resolved config as canonical JSON: equal configs, equal hashes."""
    from synthmri.config import to_dict

    text = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def store_provenance(store: Any) -> dict[str, Any]:
    """What a stage records about a store it read: path, content hash, generator (None: real)."""
    return {"path": str(store.path), "content_hash": store.content_hash, "generator": store.manifest.get("generator")}


def read_json_file(file: Path) -> Any:
    """Parsed JSON of `file`; OutputError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise OutputError(f"{file}: unreadable ({exc})") from None


def read_record(directory: Path) -> dict[str, Any] | None:
    """The completion record in `directory`, or None when there is none.

    Raises:
        OutputError: The record exists but is not valid JSON or has no verb (names the file).
    """
    file = Path(directory) / RECORD_NAME
    if not file.is_file():
        return None
    record = read_json_file(file)
    if not isinstance(record, dict) or not isinstance(record.get("verb"), str):
        raise OutputError(f"{file}: not a completion record (no 'verb')")
    return record


def find_record(folder: Path, root: Path) -> tuple[dict[str, Any], Path] | None:
    """The completion record covering `folder`: its own, or the nearest parent's up to `root`.

    An output with repeats (``repeat-00/``, ...) has one record at its top for all of them.

    Returns:
        The record and its file, or None when no folder up to `root` has one.

    Raises:
        OutputError: A record on the way is unreadable.
    """
    folder, root = Path(folder), Path(root)
    while True:
        record = read_record(folder)
        if record is not None:
            return record, folder / RECORD_NAME
        if folder == root or folder.parent == folder or root not in folder.parents:
            return None
        folder = folder.parent


def require_record(directory: Path, verb: str) -> dict[str, Any]:
    """The completion record of a finished `verb` output in `directory`.

    Raises:
        OutputError: No record (the stage was killed or failed, or this is not its output), or
            the record is another verb's; the message names the directory.
    """
    directory = Path(directory)
    record = read_record(directory)
    if record is None:
        why = ("it was killed or failed before finishing" if (directory / RUNNING_NAME).is_file()
               else "it did not finish there, or this is not its output")
        raise OutputError(f"{directory}: no {RECORD_NAME} from {verb} ({why}); run {verb} again")
    if record["verb"] != verb:
        raise OutputError(f"{directory}: {record['verb']} output, not a {verb} output")
    return record


def finished_record(out: Path, verb: str, cfg: "Config", inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The completion record of `verb` at `out` if it was made from these inputs, this config and seed."""
    try:
        record = read_record(Path(out))
    except OutputError:
        return None
    if record is None or record.get("verb") != verb:
        return None
    expected = {"inputs": _by_content(inputs), "config_sha256": config_sha256(cfg), "seed": int(cfg.seed)}
    found = {"inputs": _by_content(record.get("inputs")), "config_sha256": record.get("config_sha256"),
             "seed": record.get("seed")}
    return record if found == expected else None


def _by_content(value: Any) -> Any:
    """`value` as JSON reads it back, without paths: inputs are the same when their contents are."""
    if isinstance(value, dict):
        return {key: _by_content(item) for key, item in value.items() if key != "path"}
    if isinstance(value, (list, tuple)):
        return [_by_content(item) for item in value]
    return json.loads(json.dumps(value, default=str))


#: The model-version tag holding the sha256 of the registered ``generator.pt``: set by
#: ``train-generator`` at registration, recorded in every synthetic store's manifest by
#: ``generate``, and compared by the promotion gate.
CHECKPOINT_TAG = "synthmri.checkpoint_sha256"
