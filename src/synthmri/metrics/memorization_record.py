"""The memorization search of one evaluation, recorded so that ``share`` can reuse it.

``evaluate-synthetic`` and ``share`` run the same search: every synthetic slice and every
held-out test slice against every training slice. ``evaluate-synthetic`` writes the result
(``memorization.csv``, ``memorization_baseline.csv``) and records in its completion record
what decides it: the settings of :func:`search_settings` and the sha256 of both files,
beside the content hashes of both stores that every completion record holds.
:func:`reuse_search` gives ``share`` that result back only when all of it matches the stores
and settings ``share`` would search with, and every row checks out; otherwise it says why,
and ``share`` searches again. A result is never half reused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthmri.config import Config
from synthmri.data.splits import GENERATOR_TRAIN_SPLITS
from synthmri.records import OutputError, require_record

VERB = "evaluate-synthetic"
SYNTHETIC_FILE = "memorization.csv"
BASELINE_FILE = "memorization_baseline.csv"


class NotReusable(Exception):
    """A recorded search that does not match, or does not check out; the message says why."""


@dataclass(frozen=True)
class SearchResult:
    """Each synthetic and held-out test slice's highest r and the training slice it was reached on."""

    synthetic_corr: np.ndarray
    synthetic_train_ids: np.ndarray
    baseline_corr: np.ndarray
    baseline_train_ids: np.ndarray


def search_settings(cfg: Config, device: Any) -> dict[str, Any]:
    """What decides the search's result besides the stores: shift, reference and baseline splits, arithmetic.

    The arithmetic is the one `auto` resolves to on `device` (int8 and float32 agree to ~1e-6,
    not to the bit). The chunk sizes decide only memory and speed, so they are not here.
    """
    from synthmri.metrics.memorization import choose_arithmetic

    mem = cfg.memorization
    return {"max_shift": int(mem.max_shift), "reference_splits": list(GENERATOR_TRAIN_SPLITS),
            "baseline_split": "test", "channels": "all",
            "arithmetic": choose_arithmetic(mem.arithmetic, device, [np.uint8, np.uint8])}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_details(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The ``memorization`` section of evaluate-synthetic's completion record for the files in `out`."""
    return {**settings, "files": {name: file_sha256(Path(out) / name) for name in (SYNTHETIC_FILE, BASELINE_FILE)}}


def reuse_search(directory: Path, stores: Any, settings: dict[str, Any]) -> SearchResult:
    """The search recorded in an evaluate-synthetic output, if it is the one `share` would run.

    Args:
        directory: The evaluate-synthetic output.
        stores: The stores share opened (:class:`~synthmri.metrics.evaluate_synthetic.SyntheticStores`).
        settings: :func:`search_settings` for share's config and device.

    Raises:
        NotReusable: No completion record, another verb's output, other stores (by content
            hash), other settings, a file changed since the record, or rows that are not
            exactly the stores' slices with correlations in [-1, 1] and training slices of
            the reference splits. The message names the directory and the difference.
    """
    from synthmri.metrics.evaluate_synthetic import read_memorization_csv

    directory = Path(directory)
    try:
        record = require_record(directory, VERB)
    except OutputError as exc:
        raise NotReusable(str(exc)) from None
    inputs = record.get("inputs") if isinstance(record.get("inputs"), dict) else {}
    for role, store in (("real", stores.real), ("synthetic", stores.synthetic)):
        recorded = inputs.get(role) if isinstance(inputs.get(role), dict) else {}
        if recorded.get("content_hash") != store.content_hash:
            raise NotReusable(f"{directory}: searched another {role} store (content hash "
                              f"{str(recorded.get('content_hash'))[:12]}, this one {store.content_hash[:12]})")
    recorded = record.get("memorization") if isinstance(record.get("memorization"), dict) else {}
    for key, value in settings.items():
        if recorded.get(key) != value:
            raise NotReusable(f"{directory}: searched with {key} = {recorded.get(key)!r}, share uses {value!r}")
    files = recorded.get("files") if isinstance(recorded.get("files"), dict) else {}
    rows = {}
    for name in (SYNTHETIC_FILE, BASELINE_FILE):
        path = directory / name
        try:
            digest = file_sha256(path)
        except OSError as exc:
            raise NotReusable(f"{path}: unreadable ({exc})") from None
        if files.get(name) != digest:
            raise NotReusable(f"{path}: changed since evaluate-synthetic recorded it (sha256 differs)")
        try:
            rows[name] = read_memorization_csv(path)
        except (ValueError, IndexError) as exc:
            raise NotReusable(f"{path}: unreadable ({exc})") from None
    real, synthetic = stores.real, stores.synthetic
    reference_ids = set(real.slice_id[stores.train].tolist())
    expected = {SYNTHETIC_FILE: synthetic.slice_id.tolist(), BASELINE_FILE: real.slice_id[stores.test].tolist()}
    for name, (slice_ids, corr, train_ids) in rows.items():
        if slice_ids != expected[name]:
            raise NotReusable(f"{directory / name}: its rows are not the store's slices in the store's order")
        if not np.all(np.isfinite(corr)) or np.any(np.abs(corr) > 1.0):
            raise NotReusable(f"{directory / name}: a max_corr outside [-1, 1]")
        if not reference_ids.issuperset(train_ids):
            raise NotReusable(f"{directory / name}: a train_slice_id that is not a training slice of {real.path}")
    (_, syn_corr, syn_train), (_, base_corr, base_train) = rows[SYNTHETIC_FILE], rows[BASELINE_FILE]
    return SearchResult(syn_corr, np.asarray(syn_train, dtype=object), base_corr, np.asarray(base_train, dtype=object))
