"""Score trained segmenters in 3D on the real test subjects (the ``evaluate-segmenter`` stage).

Each test slice is segmented in 2D, the slices of a subject are restacked in z order (the
index's ``z``, never file order) and the volume is scored against the restacked reference:
3D Dice, maximum Hausdorff distance (the paper's published code) and its 95th percentile
(the BraTS challenge's), in mm, for every :data:`STRUCTURES` entry: the labels ET (204),
ED (102) and NCR/NET (51), and the BraTS regions WT (all tumour) and TC (NCR + ET). The
third BraTS region, ET, is the ET label itself. ``mean_dice`` is the paper's: the mean over
the three labels.

Empty masks follow ``evaluation.convention`` (:mod:`synthmri.metrics.segmentation`,
:mod:`synthmri.segmenters.summaries`): ``paper`` (the authors' code) leaves undefined
scores (NaN; ``nan`` in per_subject.csv) out of every mean and records how many subjects
each mean covers (``subjects_scored``); ``penalise`` scores both empty as Dice 1 and
distance 0, one empty as Dice 0 and the volume's diagonal in mm. The summary records its
``convention`` and the ``dataset`` it was scored on (layout, test subjects).

Which slices form the volume (``evaluation.eval_slices``):

* ``filtered`` (the paper): the slices in the store, i.e. those that passed the preparation
  filter (more than 15 % foreground), stacked consecutively in z order.
* ``all``: a volume of the subject's full depth with every stored slice at its own z. A
  store that holds only filtered slices has no data for the others: they are filled with
  background in both prediction and reference, so tumour outside the filtered slices is
  not scored, but the z geometry (gaps, volume depth) is the original one. The depth is
  the subject's ``slices_total`` in the store's ``subjects.csv`` (written by ``prepare``),
  else the manifest's source ``shape[2]``, else the subject's largest z + 1.

Voxel spacing, per subject: ``subjects.csv``'s ``spacing_x/y/z`` (the NIfTI header, written
by ``prepare``), else the manifest's ``spacing``, else 1 mm on every axis (and the summary
says so). The stored in-plane pixel is ``spacing * pad_to / image_size`` because slices are
padded to ``pad_to`` and resampled to ``image_size``.

Repeats: a train-segmenter output with ``repeat-*/model.pt`` (``--repeats N``) is scored
repeat by repeat into ``out/repeat-*/``; ``out/summary.json`` then holds the mean over
repeats and their sd (population under ``paper``, sample under ``penalise``), and lists the
per-repeat summaries under ``runs``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from synthmri.config import Config
from synthmri.data.labels import STRUCTURES
from synthmri.data.store import IMAGE_CHANNELS, SliceStore, StoreError
from synthmri.io import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonable
from synthmri.metrics.segmentation import dice, hausdorff
from synthmri.segmenters import get_architecture
from synthmri.segmenters.inference import find_checkpoints, load_segmenter, model_info, segment
from synthmri.segmenters.summaries import (  # noqa: F401 (gather_evaluations, evaluation_runs: re-exported)
    EXAMPLE,
    SCORES,
    aggregate_repeats,
    dataset_info,
    evaluation_runs,
    gather_evaluations,
    mean_dice,
    subject_means,
)
from synthmri.segmenters.train import device
from synthmri.segmenters.volumes import restack, subject_depths, subject_spacings

log = logging.getLogger(__name__)

PER_SUBJECT_COLUMNS = ("subject", "structure", *SCORES)


@dataclass(frozen=True)
class EvaluationSummary:
    """The scores of one evaluation (``summary`` is what summary.json holds)."""

    summary: dict[str, Any]
    per_subject: list[dict[str, Any]]
    spacing_note: str
    filled_slices: int
    out: Path
    run_id: str = ""
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """A few lines for the command line."""
        s = self.summary
        sd = s.get("sd") or {}
        repeats = s.get("repeats", 1)

        def number(value: float | None, digits: int) -> str:
            return "undefined" if value is None else f"{value:.{digits}f}"

        def cell(score: str, name: str, digits: int, unit: str = "") -> str:
            spread = (sd.get(score) or {}).get(name)
            text = number(s[score][name], digits) + (f" ± {spread:.{digits}f}" if spread is not None else "")
            return f"{name} {text}{unit}"

        lines = [
            f"{s['model']['name']}: {s['subjects']} test subjects, {s['eval_slices']} slices, "
            f"{repeats} repeat(s), mean Dice {number(s['mean_dice'], 4)}, convention {s.get('convention')}",
            "  Dice       " + "  ".join(cell("dice", k, 4) for k in STRUCTURES),
            "  HD max     " + "  ".join(cell("hausdorff", k, 2, " mm") for k in STRUCTURES),
            "  HD95       " + "  ".join(cell("hausdorff95", k, 2, " mm") for k in STRUCTURES),
            f"  spacing: {self.spacing_note}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  wrote {self.out / 'summary.json'} and per_subject.csv")
        return "\n".join(lines)


def score_volumes(pred: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float],
                  convention: str = "penalise") -> dict[str, dict[str, float]]:
    """Dice, maximum and 95th-percentile Hausdorff (mm) of every structure of two label volumes.

    `convention` decides empty masks (:mod:`synthmri.metrics.segmentation`); the evaluation
    passes ``evaluation.convention``.
    """
    return {
        name: {"dice": dice(pred, reference, values, convention=convention),
               "hausdorff": hausdorff(pred, reference, values, spacing=spacing, convention=convention),
               "hausdorff95": hausdorff(pred, reference, values, percentile=95, spacing=spacing,
                                        convention=convention)}
        for name, values in STRUCTURES.items()
    }


@dataclass(frozen=True)
class EvaluationSetup:
    """What every checkpoint of one evaluation shares.

    Attributes:
        checkpoints: The ``model.pt`` files (one per repeat).
        store: The real slice store.
        spacings: Voxel size (z, row, column) in mm per subject.
        spacing_note: Where the spacings came from.
        depths: Volume depth per subject (``eval_slices=all`` only; else empty).
        dev: Where the networks run.
    """

    checkpoints: list[Path]
    store: SliceStore
    spacings: dict[str, tuple[float, float, float]]
    spacing_note: str
    depths: dict[str, int]
    dev: torch.device


def prepare_evaluation(model: Path, data: Path, cfg: Config) -> EvaluationSetup:
    """Find the checkpoints, open the store and read each test subject's spacing and depth.

    Raises:
        FileNotFoundError: No checkpoint at `model`.
        StoreError: The store is incomplete, has no test slices or a bad voxel spacing.
    """
    checkpoints = find_checkpoints(model)
    store = SliceStore(data)
    if len(store.indices("test")) == 0:
        raise StoreError(f"{store.path}: no 'test' slices to evaluate")
    spacings, spacing_note = subject_spacings(store, cfg.data.pad_to)
    depths = subject_depths(store) if cfg.evaluation.eval_slices == "all" else {}
    return EvaluationSetup(checkpoints, store, spacings, spacing_note, depths, device())


def test_subjects(store: SliceStore) -> list[str]:
    """The test subjects, sorted."""
    test = store.indices("test")
    return sorted(set(store.subject[test].tolist()))


def evaluation_tags(info: dict[str, Any], convention: str, repeats: int | None = None) -> dict[str, str]:
    """The MLflow tags of an evaluation run: of one checkpoint (`repeats` None) or of the mean over repeats."""
    tags = {"synthmri.train": str(info["train"]), "synthmri.arch": info["arch"],
            "synthmri.augment": str(info["augment"]).lower(), "synthmri.convention": convention}
    if repeats is not None:
        return {**tags, "synthmri.repeats": str(repeats)}
    generator = "+".join(info["synthetic"]) if info["train"] != "real" and info["synthetic"] else "real"
    return {**tags, "synthmri.model": info["name"], "synthmri.generator": generator,
            "synthmri.generator_version": ",".join(info["synthetic_versions"])}


def evaluate_checkpoint(network: torch.nn.Module, info: dict[str, Any], setup: EvaluationSetup, out: Path,
                        cfg: Config, progress: Callable[[int], None] | None = None) -> EvaluationSummary:
    """Segment, restack and score every test subject with one network; write ``out``.

    Args:
        network: The loaded segmenter (:func:`load_segmenter`).
        info: Its :func:`model_info`.
        setup: The evaluation's store, spacings and depths (:func:`prepare_evaluation`).
        out: Output directory: ``per_subject.csv``, ``summary.json``, ``example.npz``.
        cfg: ``evaluation`` (eval_slices, batch_size, convention).
        progress: Called with the number of subjects scored so far.

    Returns:
        The EvaluationSummary (``run_id`` empty: the caller tracks).
    """
    store, dev = setup.store, setup.dev
    mode, convention = cfg.evaluation.eval_slices, cfg.evaluation.convention
    test = store.indices("test")
    subjects = test_subjects(store)
    rows: list[dict[str, Any]] = []
    filled = 0
    for number, subject in enumerate(subjects, start=1):
        positions = test[store.subject[test] == subject]
        slices = store.read(positions)
        pred = segment(network, slices, cfg.evaluation.batch_size, dev, get_architecture(info["arch"]).normalization)
        z = store.z[positions]
        try:
            pred_volume, fill = restack(z, pred, mode, setup.depths.get(subject))
            ref_volume, _ = restack(z, slices[:, IMAGE_CHANNELS], mode, setup.depths.get(subject))
        except ValueError as exc:
            raise StoreError(f"{store.path}: test subject {subject}: {exc}") from None
        filled += fill
        for name, scores in score_volumes(pred_volume, ref_volume, setup.spacings[subject], convention).items():
            rows.append({"subject": subject, "structure": name, **scores})
        if number == 1:  # the first subject by sorted id: every evaluated model shows the same slice
            write_example(out / EXAMPLE, store.slice_id[positions], z, slices, pred)
        if progress is not None:
            progress(number)
    means, counts = subject_means(rows, convention)
    summary = {"model": info, "data_hash": store.content_hash, "eval_slices": mode, "subjects": len(subjects),
               "convention": convention, "dataset": dataset_info(store), **means,
               "mean_dice": mean_dice(means["dice"], convention), "subjects_scored": counts,
               "repeats": 1, "runs": []}
    summary = jsonable(summary)  # undefined means (NaN) as null: what summary.json holds
    notes = [f"{filled} slices not in the store were scored as background (eval_slices=all)"] if filled else []
    _write_outputs(out, summary, rows)
    return EvaluationSummary(summary=summary, per_subject=rows, spacing_note=setup.spacing_note,
                             filled_slices=filled, out=out, notes=notes)


def combine_repeats(results: list[EvaluationSummary], checkpoints: list[Path], out: Path) -> EvaluationSummary:
    """The mean over repeats (and their sd) of per-repeat evaluations, written to ``out``."""
    runs = [f"{path.parent.name}/summary.json" for path in checkpoints]
    summary = aggregate_repeats([r.summary for r in results], runs)
    rows = [{"run": r.summary["model"]["name"], **row} for r in results for row in r.per_subject]
    _write_outputs(out, summary, rows)
    notes = sorted({n for r in results for n in r.notes})
    return EvaluationSummary(summary=summary, per_subject=rows, spacing_note=results[0].spacing_note,
                             filled_slices=sum(r.filled_slices for r in results), out=out, notes=notes)


def evaluate_segmenter(model: Path, data: Path, out: Path, cfg: Config) -> EvaluationSummary:
    """Segment the test subjects of `data` with every repeat of `model` and score them in 3D (untracked).

    The ``evaluate-segmenter`` stage (:func:`synthmri.stages.evaluate_segmenter.run`) does
    the same with an MLflow run per checkpoint and one for the mean over repeats.

    Args:
        model: train-segmenter output directory (``model.pt``, or ``repeat-*/model.pt``)
            or a ``model.pt``.
        data: the real slice store; its ``test`` split is scored.
        out: output directory: ``per_subject.csv`` (subject, structure, dice, hausdorff,
            hausdorff95) and ``summary.json`` (model, data_hash, eval_slices, subjects, dice,
            hausdorff, hausdorff95 per structure as means over subjects, mean_dice, convention,
            dataset, subjects_scored, repeats, runs and, over repeats, sd), ``example.npz`` (one
            test slice with its prediction, :func:`write_example`). Several repeats write
            ``out/repeat-*/`` each.
        cfg: ``evaluation`` (eval_slices, batch_size, convention) and ``data.pad_to``.

    Returns:
        The EvaluationSummary (of the aggregate when there are several repeats).

    Raises:
        FileNotFoundError: no checkpoint at `model`.
        StoreError: the store is incomplete, has no test slices or a bad voxel spacing.
    """
    out = Path(out)
    setup = prepare_evaluation(model, data, cfg)
    several = len(setup.checkpoints) > 1
    results = []
    for path in setup.checkpoints:
        network, checkpoint = load_segmenter(path, setup.dev)
        results.append(evaluate_checkpoint(network, model_info(checkpoint, path), setup,
                                           out / path.parent.name if several else out, cfg))
    return combine_repeats(results, setup.checkpoints, out) if several else results[0]


def write_example(path: Path, slice_ids: np.ndarray, z: np.ndarray, slices: np.ndarray, pred: np.ndarray) -> str:
    """Save one subject's slice with the largest tumour area (lowest z among ties) and its prediction.

    Args:
        path: the ``.npz`` to write: ``image`` (uint8 [4, H, W]), ``truth`` and ``prediction``
            (annotation values, uint8 [H, W]), ``slice_id`` and ``z``.
        slice_ids: the subject's slice ids.
        z: their positions in the volume.
        slices: its stored slices (uint8 [n, 5, H, W]), in the order of `z`.
        pred: the predicted annotation values (uint8 [n, H, W]), same order.

    Returns:
        The chosen slice's id.
    """
    area = (slices[:, IMAGE_CHANNELS] > 0).sum(axis=(1, 2))
    pick = int(np.lexsort((z, -area))[0])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, image=slices[pick, :IMAGE_CHANNELS], truth=slices[pick, IMAGE_CHANNELS],
                        prediction=pred[pick], slice_id=str(slice_ids[pick]), z=int(z[pick]))
    atomic_write_bytes(path, buffer.getvalue())
    return str(slice_ids[pick])


def _write_outputs(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write ``per_subject.csv`` (with a ``run`` column for repeats) and ``summary.json`` to `out`."""
    columns = (("run",) if rows and "run" in rows[0] else ()) + PER_SUBJECT_COLUMNS
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "dice": f"{row['dice']:.6f}", "hausdorff": f"{row['hausdorff']:.4f}",
                         "hausdorff95": f"{row['hausdorff95']:.4f}"})
    atomic_write_text(out / "per_subject.csv", buffer.getvalue())
    atomic_write_json(out / "summary.json", jsonable(summary))
    log.info("evaluation: %s", json.dumps({k: summary[k] for k in ("dice", "hausdorff", "mean_dice")}))
