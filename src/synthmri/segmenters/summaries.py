"""Evaluation summaries: means over subjects and repeats under a metric convention, and their files.

``evaluate-segmenter`` scores every test subject (:mod:`synthmri.segmenters.evaluate`); this
module turns the per-subject scores into the numbers of ``summary.json`` and of MLflow, and
reads summaries back (one run, an aggregate of repeats, or a gathered grid).

The convention (``evaluation.convention``, recorded in every summary as ``convention``):

* ``paper`` (the authors' code): an undefined score (NaN: Dice of a structure absent from
  both prediction and reference, Hausdorff when either is empty) drops out of the mean over
  subjects (``nanmean``); ``subjects_scored`` says how many subjects each mean covers. The
  sd over repeats is the population sd (``ddof=0``).
* ``penalise``: every score is finite (see :mod:`synthmri.metrics.segmentation`), means are
  plain means and the sd over repeats is the sample sd (``ddof=1``).

Under either, an sd needs two repeats with a defined mean: with fewer it is None (null).
A summary written before conventions existed has no ``convention``: it was ``penalise``.
Undefined means are written as null (strict JSON has no NaN) and are not logged as MLflow
metrics (their names go to the tag ``synthmri.undefined_metrics``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from synthmri.data.labels import EVAL_LABELS, STRUCTURES
from synthmri.io import atomic_write_bytes, atomic_write_json, jsonable
from synthmri.records import RECORD_NAME, find_record

SCORES: tuple[str, ...] = ("dice", "hausdorff", "hausdorff95")
#: One fixed test slice with its prediction, for the report's figures (see ``evaluate.write_example``).
EXAMPLE = "example.npz"
#: The convention of a summary that does not record one (written before conventions existed).
LEGACY_CONVENTION = "penalise"


def convention_of(summary: dict[str, Any]) -> str:
    """The metric convention a summary's numbers use."""
    return str(summary.get("convention") or LEGACY_CONVENTION)


def _floats(values: Iterable[Any]) -> np.ndarray:
    """`values` as float64, None (a null in JSON) as NaN."""
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def mean_over(values: Iterable[Any], convention: str) -> tuple[float, int]:
    """The mean of `values` under `convention`, and how many values it covers.

    ``paper`` leaves undefined values (NaN or None) out (NaN when none is left);
    ``penalise`` takes the plain mean of all of them.
    """
    array = _floats(values)
    if convention == "penalise":
        return float(np.mean(array)), len(array)
    defined = array[~np.isnan(array)]
    return (float(np.mean(defined)) if len(defined) else float("nan")), len(defined)


def repeat_sd(values: Iterable[Any], convention: str) -> float | None:
    """Sd over repeats of their defined values: population (``paper``) or sample (``penalise``).

    Returns:
        The sd, or None with fewer than two defined values.
    """
    array = _floats(values)
    defined = array[~np.isnan(array)]
    if len(defined) < 2:
        return None
    return float(np.std(defined, ddof=0 if convention == "paper" else 1))


def subject_means(rows: list[dict[str, Any]], convention: str) -> tuple[dict[str, dict[str, float]],
                                                                          dict[str, dict[str, int]]]:
    """score -> structure -> mean over the rows (subjects) of that structure, and the subject counts."""
    means: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for score in SCORES:
        means[score], counts[score] = {}, {}
        for name in STRUCTURES:
            means[score][name], counts[score][name] = mean_over(
                [r[score] for r in rows if r["structure"] == name], convention)
    return means, counts


def mean_dice(dice: dict[str, Any], convention: str) -> float:
    """The paper's mean Dice: the mean over the labels ET, ED and NCR/NET."""
    return mean_over([dice[k] for k in EVAL_LABELS], convention)[0]


def dataset_info(store: Any) -> dict[str, Any]:
    """What a summary records of the real store it was scored on: release layout and subjects.

    Args:
        store: the real :class:`~synthmri.data.store.SliceStore`.

    Returns:
        ``layout`` (what ``prepare`` detected: brats2020, brats2021, ...; None for a store
        without one), ``source`` (the prepared directory or URI), ``split`` (how ``prepare``
        split the subjects, as its manifest records it; None if it does not),
        ``training_subjects`` (the non-test subjects, which train the generators) and
        ``test_subjects`` (sorted ids).
    """
    manifest = store.manifest
    test = store.subjects("test")
    counts = manifest.get("subjects")
    if isinstance(counts, dict) and counts:
        training = sum(int(n) for split, n in counts.items() if split != "test")
    else:
        training = len(store.subjects()) - len(test)
    return {"layout": manifest.get("layout"), "source": (manifest.get("source") or {}).get("path"),
            "split": manifest.get("split"), "training_subjects": training, "test_subjects": test}


def mlflow_metrics(summary: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """MLflow metrics of a summary and the names of those left out because they are undefined.

    Metrics: ``dice_ET``, ``hausdorff_WT``, ... and ``mean_dice``; their ``_sd`` over repeats;
    ``dice_ET_n``, ... the subjects each mean covers (one run).
    """
    metrics: dict[str, float] = {}
    undefined: list[str] = []

    def put(name: str, value: Any) -> None:
        if value is None or not math.isfinite(float(value)):
            undefined.append(name)
        else:
            metrics[name] = float(value)

    for score in SCORES:
        for name in STRUCTURES:
            put(f"{score}_{name}", summary[score][name])
    put("mean_dice", summary["mean_dice"])
    for score, counts in (summary.get("subjects_scored") or {}).items():
        metrics.update({f"{score}_{name}_n": float(n) for name, n in counts.items() if isinstance(n, int)})
    sd = summary.get("sd") or {}
    for score in SCORES:
        metrics.update({f"{score}_{name}_sd": v for name, v in (sd.get(score) or {}).items() if v is not None})
    if sd.get("mean_dice") is not None:
        metrics["mean_dice_sd"] = sd["mean_dice"]
    return metrics, undefined


def aggregate_repeats(summaries: list[dict[str, Any]], runs: list[str]) -> dict[str, Any]:
    """One summary of several repeats: each score's mean over repeats and its sd.

    The mean and sd follow the repeats' convention (see the module docstring);
    ``subjects_scored`` lists each repeat's counts.

    Args:
        summaries: per-repeat summaries of the same model setting on the same data.
        runs: where each per-repeat summary.json lies, relative to the aggregate's directory.

    Raises:
        ValueError: the repeats differ in anything but seed and name (architecture, data mix,
            setting, test data, slice mode or convention).
    """
    first = summaries[0]
    fixed = ("arch", "train", "augment", "synthetic", "real_share")
    for other in summaries[1:]:
        differs = [k for k in fixed if other["model"].get(k) != first["model"].get(k)]
        differs += [k for k in ("data_hash", "eval_slices", "subjects") if other[k] != first[k]]
        differs += ["convention"] if convention_of(other) != convention_of(first) else []
        if differs:
            raise ValueError(f"repeats {first['model']['name']} and {other['model']['name']} differ in {differs}")
    convention = convention_of(first)
    model = {**first["model"], "seeds": [s["model"]["seed"] for s in summaries],
             "name": re.sub(r"-[rs]\d+$", "", first["model"]["name"])}
    summary: dict[str, Any] = {"model": model, "data_hash": first["data_hash"], "eval_slices": first["eval_slices"],
                               "subjects": first["subjects"], "convention": convention,
                               **({"dataset": first["dataset"]} if "dataset" in first else {}),
                               "repeats": len(summaries), "runs": runs}
    sd: dict[str, Any] = {}
    for score in SCORES:
        summary[score] = {k: mean_over([s[score][k] for s in summaries], convention)[0] for k in STRUCTURES}
        sd[score] = {k: repeat_sd([s[score][k] for s in summaries], convention) for k in STRUCTURES}
    summary["mean_dice"] = mean_over([s["mean_dice"] for s in summaries], convention)[0]
    sd["mean_dice"] = repeat_sd([s["mean_dice"] for s in summaries], convention)
    summary["sd"] = sd
    if all("subjects_scored" in s for s in summaries):
        summary["subjects_scored"] = {score: {k: [s["subjects_scored"][score][k] for s in summaries]
                                              for k in STRUCTURES} for score in SCORES}
    return jsonable(summary)


def gather_evaluations(evaluations: list[Path], out: Path) -> dict[str, Any]:
    """Copy several evaluate-segmenter outputs into one directory that lists them.

    A pipeline fans a grid of segmenter runs out and back in; what comes back is many small
    output directories. This puts their ``summary.json``, ``per_subject.csv`` and ``example.npz`` under
    ``out/runs/NNN-<model name>/`` (with the ``completion.json`` that covers the run) and writes ``out/summary.json`` with ``runs``: the form
    the report and the promotion gate read, settings and repeats kept apart.

    Args:
        evaluations: evaluate-segmenter outputs (directories or summary.json files); an
            output that itself lists runs contributes each of them.
        out: the gathered directory (created).

    Returns:
        The written summary: ``stage``, ``evaluations`` (count) and ``runs``.

    Raises:
        FileNotFoundError: an evaluation has no summary.json (named).
        ValueError: no evaluations, or a file that is not an evaluate-segmenter summary.
    """
    if not evaluations:
        raise ValueError("gather: no evaluations given")
    out = Path(out)
    runs: list[str] = []
    for path in evaluations:
        for summary in evaluation_runs(Path(path)):
            source = Path(summary.pop("_path"))
            rel = f"runs/{len(runs):03d}-{summary['model'].get('name') or source.parent.name}"
            atomic_write_json(out / rel / "summary.json", jsonable(summary))
            for name in ("per_subject.csv", EXAMPLE):
                if (source.parent / name).is_file():
                    atomic_write_bytes(out / rel / name, (source.parent / name).read_bytes())
            # The record that says what the run was made from travels with it (the gate needs it).
            found = find_record(source.parent, Path(path) if Path(path).is_dir() else Path(path).parent)
            if found is not None:
                atomic_write_bytes(out / rel / RECORD_NAME, found[1].read_bytes())
            runs.append(f"{rel}/summary.json")
    gathered = {"stage": "gather", "evaluations": len(runs), "runs": runs}
    atomic_write_json(out / "summary.json", gathered)
    return gathered


def evaluation_runs(path: Path) -> list[dict[str, Any]]:
    """The single-run evaluate-segmenter summaries at `path`, following ``runs`` lists.

    Args:
        path: an evaluate-segmenter or gather output (directory or summary.json).

    Returns:
        One summary per run, each with its file under ``_path``.

    Raises:
        FileNotFoundError: a summary is missing (named).
        ValueError: a file is not an evaluate-segmenter summary (named).
    """
    file = path if path.suffix == ".json" else path / "summary.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: evaluate-segmenter summary not found (run evaluate-segmenter first)")
    try:
        summary = json.loads(file.read_text())
    except ValueError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from None
    if isinstance(summary, dict) and summary.get("runs"):
        return [run for rel in summary["runs"] for run in evaluation_runs(file.parent / rel)]
    if not isinstance(summary, dict) or not isinstance(summary.get("model"), dict) or "mean_dice" not in summary:
        raise ValueError(f"{file}: not an evaluate-segmenter summary (needs model and mean_dice)")
    summary["_path"] = str(file)
    return [summary]
