"""The promotion gate's evidence, read as hostile input and bound to the version it judges.

Evidence is the output of two stages: ``evaluate-synthetic`` (memorization) and
``evaluate-segmenter`` (Dice of segmenters trained on real-only and synthetic-only data).
Each output carries its completion record (:mod:`synthmri.records`), which names what it was
made from: the synthetic store and the generator that sampled it (registry name, version,
and the sha256 of ``generator.pt``), and for an evaluation the stores its segmenter trained
on. The gate takes nothing on trust:

- the record must exist and be of the right stage (no record, no provenance: refused);
- the generator in it must be the registered version under judgement, by checkpoint hash
  (a tag ``train-generator`` set at registration), not merely by version number;
- every number the criteria use must be present, a number, and in its range;

and each refusal names the file and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthmri.records import OutputError, find_record, read_json_file


class EvidenceError(ValueError):
    """Evidence the gate refuses; the message names the file and the field."""


@dataclass(frozen=True)
class GatedVersion:
    """The registered generator version under judgement.

    Attributes:
        name: Registered model name (``synthmri-ddpm``).
        version: Version number, as a string.
        checkpoint_sha256: sha256 of its ``generator.pt``, from the version's tag.
    """

    name: str
    version: str
    checkpoint_sha256: str


def field_of(document: Any, dotted: str, file: Path) -> Any:
    """The value at `dotted` (``synthetic.share_above_threshold``) in `document`, or EvidenceError."""
    value = document
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise EvidenceError(f"{file}: field {dotted!r} is missing")
        value = value[part]
    return value


def number_in(document: Any, dotted: str, file: Path, low: float, high: float) -> float:
    """The number at `dotted`, checked to be finite and in [`low`, `high`]."""
    value = field_of(document, dotted, file)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EvidenceError(f"{file}: field {dotted!r} is {value!r}, not a finite number")
    if not low <= value <= high:
        raise EvidenceError(f"{file}: field {dotted!r} is {value!r}, outside [{low:g}, {high:g}]")
    return float(value)


def count_of(document: Any, dotted: str, file: Path) -> int:
    """The positive whole number at `dotted`."""
    value = field_of(document, dotted, file)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvidenceError(f"{file}: field {dotted!r} is {value!r}, not a positive count")
    return value


def summary_file(path: Path) -> Path:
    """The summary.json a path names (the file itself, or the one in a directory)."""
    return path if path.suffix == ".json" else path / "summary.json"


def read_summary(path: Path) -> dict[str, Any]:
    """A stage's summary.json as a JSON object, or EvidenceError naming the file."""
    file = summary_file(Path(path))
    if not file.is_file():
        raise FileNotFoundError(f"{file}: summary not found")
    try:
        summary = read_json_file(file)
    except OutputError as exc:
        raise EvidenceError(str(exc)) from None
    if not isinstance(summary, dict):
        raise EvidenceError(f"{file}: not a JSON object")
    return summary


def record_for(file: Path, root: Path, verb: str) -> tuple[dict[str, Any], Path]:
    """The completion record that covers `file`: in its folder or a parent, up to `root`."""
    root = Path(root) if Path(root).is_dir() else Path(root).parent
    try:
        found = find_record(Path(file).parent, root)
    except OutputError as exc:
        raise EvidenceError(str(exc)) from None
    if found is None:
        raise EvidenceError(f"{root}: no completion.json from {verb}, so the evidence has no provenance "
                            f"(written by hand, or by a {verb} that did not finish); run {verb} to make it")
    record, record_file = found
    if record["verb"] != verb:
        raise EvidenceError(f"{record_file}: field 'verb' is {record['verb']!r}, not {verb!r}: this is not "
                            f"{verb} output")
    return record, record_file


def check_generator(generator: Any, where: str, gated: GatedVersion) -> None:
    """`generator` (a store's manifest entry, as recorded) must be `gated`'s checkpoint."""
    if not isinstance(generator, dict) or not generator.get("checkpoint_sha256"):
        raise EvidenceError(f"{where}: no 'checkpoint_sha256', so it cannot be tied to {gated.name} "
                            f"version {gated.version}")
    if generator["checkpoint_sha256"] != gated.checkpoint_sha256:
        raise EvidenceError(
            f"{where}: comes from the checkpoint with sha256 {str(generator['checkpoint_sha256'])[:16]}... "
            f"({generator.get('registered_name') or generator.get('name')} version {generator.get('version')}), not "
            f"{gated.name} version {gated.version} ({gated.checkpoint_sha256[:16]}...)")
    for key, expected in (("registered_name", gated.name), ("version", gated.version)):
        if generator.get(key) is not None and str(generator[key]) != expected:
            raise EvidenceError(f"{where}: field {key!r} is {generator[key]!r}, not {expected!r}")


def check_memorization(summary: dict[str, Any], path: Path, gated: GatedVersion) -> dict[str, Any]:
    """The memorization summary at `path`, its numbers checked and its record bound to `gated`.

    Returns:
        The summary, with ``real_hash``/``synthetic_hash`` taken from the record.
    """
    file = summary_file(Path(path))
    for share in ("synthetic.share_above_threshold", "baseline.share_above_threshold"):
        number_in(summary, share, file, 0.0, 1.0)
    number_in(summary, "threshold", file, -1.0, 1.0)
    count_of(summary, "synthetic.n", file)
    count_of(summary, "baseline.n", file)
    record, record_file = record_for(file, Path(path), "evaluate-synthetic")
    inputs = record.get("inputs")
    synthetic = field_of(inputs, "synthetic", record_file) if isinstance(inputs, dict) else None
    real = field_of(inputs, "real", record_file) if isinstance(inputs, dict) else None
    if not isinstance(synthetic, dict) or not isinstance(real, dict):
        raise EvidenceError(f"{record_file}: field 'inputs' does not name the real and synthetic stores")
    check_generator(synthetic.get("generator"), f"{record_file}: inputs.synthetic.generator", gated)
    return {**summary, "real_hash": real.get("content_hash"), "synthetic_hash": synthetic.get("content_hash")}


def check_evaluation(summary: dict[str, Any], file: Path, root: Path, train: str,
                     gated: GatedVersion | None) -> None:
    """One evaluate-segmenter summary: its Dice in [0, 1] and its training bound to `train` data.

    For ``synthetic`` training every store the segmenter trained on must come from `gated`;
    for ``real`` training none may be synthetic.
    """
    number_in(summary, "mean_dice", file, 0.0, 1.0)
    record, record_file = record_for(file, root, "evaluate-segmenter")
    data = field_of(record, "inputs.real.content_hash", record_file)
    if summary.get("data_hash") is not None and summary["data_hash"] != data:
        raise EvidenceError(f"{file}: field 'data_hash' is {summary['data_hash']!r}, but {record_file} says the "
                            f"test store read was {data!r}")
    models = field_of(record, "models", record_file)
    if not isinstance(models, list) or not models:
        raise EvidenceError(f"{record_file}: field 'models' names no trained segmenter")
    for number, model in enumerate(models):
        where = f"{record_file}: models[{number}].training"
        training = field_of(model, "training", record_file) if isinstance(model, dict) else None
        if not isinstance(training, dict) or training.get("train") != train:
            found = training.get("train") if isinstance(training, dict) else training
            raise EvidenceError(f"{where}: field 'train' is {found!r}; the gate needs a segmenter trained on "
                                f"{train!r} slices only")
        stores = training.get("synthetic") or []
        if train == "real" and stores:
            raise EvidenceError(f"{where}: a real-only baseline that also trained on synthetic stores")
        if train == "synthetic":
            if not stores:
                raise EvidenceError(f"{where}: field 'synthetic' names no store")
            for index, store in enumerate(stores):
                check_generator(store.get("generator") if isinstance(store, dict) else None,
                                f"{where}.synthetic[{index}].generator", gated)
