"""The reader study's result: the confusion table of the paper's Table 8, as CSV (and what MLflow gets).

``confusion.csv`` has one row per source (real first, then each generator)::

    source,kind,n,answered,answered_real,answered_synthetic,accuracy

`n` is the number planned, `answered` how many have an answer (fewer for a study stopped
early), `accuracy` the share of the answered ones classified correctly (empty when none).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthmri.io import atomic_write_text
from synthmri.reader.study import ReaderStudy, StudyError

log = logging.getLogger(__name__)

CONFUSION_COLUMNS = ("source", "kind", "n", "answered", "answered_real", "answered_synthetic", "accuracy")


@dataclass(frozen=True)
class StudyResult:
    """The confusion table of a finished (or stopped) study."""

    rows: list[dict[str, Any]]
    answered: int
    total: int
    reader: str
    csv_path: Path
    run_id: str | None

    @property
    def accuracy(self) -> float | None:
        correct = sum(r["answered_real"] if r["kind"] == "real" else r["answered_synthetic"] for r in self.rows)
        return correct / self.answered if self.answered else None

    def summary(self) -> str:
        """One line: progress, overall and per-source accuracy, where the table went."""
        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f}"

        per_source = ", ".join(f"{r['source']} {fmt(r['accuracy'])}" for r in self.rows)
        who = f" by {self.reader}" if self.reader else ""
        run = f"; MLflow run {self.run_id}" if self.run_id else ""
        return (f"reader-study: {self.answered}/{self.total} answered{who}; accuracy {fmt(self.accuracy)} "
                f"({per_source}); {self.csv_path}{run}")


def confusion_rows(plan: dict[str, Any], answers: dict[str, str]) -> list[dict[str, Any]]:
    """One row per source (plan order): planned n, answers given, and the share classified correctly."""
    rows = []
    for source in plan["sources"]:
        given = [answers[i["token"]] for i in plan["items"] if i["source"] == source["name"] and i["token"] in answers]
        real, synthetic = given.count("real"), given.count("synthetic")
        correct = real if source["kind"] == "real" else synthetic
        rows.append({"source": source["name"], "kind": source["kind"],
                     "n": sum(i["source"] == source["name"] for i in plan["items"]), "answered": len(given),
                     "answered_real": real, "answered_synthetic": synthetic,
                     "accuracy": correct / len(given) if given else None})
    return rows


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-.]", "_", name)


def finish(study: ReaderStudy) -> StudyResult:
    """Write ``confusion.csv`` from the answers so far.

    The stage (:mod:`synthmri.stages.reader_study`) logs it to MLflow with
    :func:`study_datasets`, :func:`study_params` and :func:`study_metrics`.

    Args:
        study: The study, finished or stopped early.

    Returns:
        The confusion table (without a run id).
    """
    answers = study.answers()
    rows = confusion_rows(study.plan, answers)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CONFUSION_COLUMNS)
    for r in rows:
        writer.writerow([r[c] if c != "accuracy" or r[c] is None else f"{r[c]:.6f}" for c in CONFUSION_COLUMNS])
    csv_path = study.out / "confusion.csv"
    atomic_write_text(csv_path, buffer.getvalue())  # csv writes None as an empty field
    reader = str(study.plan.get("reader", ""))
    return StudyResult(rows, len(answers), study.total, reader, csv_path, None)


def study_datasets(study: ReaderStudy) -> dict[str, Any]:
    """Role -> slice store of the study's sources (``real``, ``synthetic-<name>``); moved stores are skipped."""
    datasets = {}
    for source in study.plan["sources"]:
        try:
            datasets["real" if source["kind"] == "real" else f"synthetic-{_metric_key(source['name'])}"] = \
                study.store(source["name"])
        except (StudyError, OSError, ValueError) as exc:  # a store moved away since: log without its hash
            log.warning("reader study: %s", exc)
    return datasets


def study_tags(study: ReaderStudy) -> dict[str, str]:
    """The run's tags: the reader and whether every image was answered."""
    return {"synthmri.reader": str(study.plan.get("reader", "")),
            "synthmri.reader.complete": str(study.complete).lower()}


def study_params(study: ReaderStudy) -> dict[str, Any]:
    """The run's params: images per source, seed and sources."""
    return {"reader.per_source": study.plan["per_source"], "reader.seed": study.plan["seed"],
            "reader.sources": ",".join(s["name"] for s in study.plan["sources"])}


def study_metrics(result: StudyResult) -> dict[str, float]:
    """The run's metrics.

    ``reader.<source>.answered_real``, ``.answered_synthetic``, ``.accuracy`` (when any
    answered), ``.n``, plus ``reader.answered``, ``reader.total`` and ``reader.accuracy``.
    """
    metrics: dict[str, float] = {"reader.answered": result.answered, "reader.total": result.total}
    if result.accuracy is not None:
        metrics["reader.accuracy"] = result.accuracy
    for r in result.rows:
        key = f"reader.{_metric_key(r['source'])}"
        metrics.update({f"{key}.n": r["n"], f"{key}.answered_real": r["answered_real"],
                        f"{key}.answered_synthetic": r["answered_synthetic"]})
        if r["accuracy"] is not None:
            metrics[f"{key}.accuracy"] = r["accuracy"]
    return metrics
