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
from typing import Any

import mlflow
import numpy as np
import torch

from synthmri.config import Config
from synthmri.data.labels import LABEL_VALUES, STRUCTURES
from synthmri.data.store import IMAGE_CHANNELS, SliceStore, StoreError
from synthmri.io import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonable
from synthmri.metrics.segmentation import dice, hausdorff
from synthmri.monitoring import StageMonitor
from synthmri.segmenters import get_architecture
from synthmri.segmenters.data import prepare_batch
from synthmri.segmenters.summaries import (  # noqa: F401 (gather_evaluations, evaluation_runs: re-exported)
    EXAMPLE,
    SCORES,
    aggregate_repeats,
    dataset_info,
    evaluation_runs,
    gather_evaluations,
    mean_dice,
    mlflow_metrics,
    subject_means,
)
from synthmri.segmenters.train import REPEAT_GLOB, device
from synthmri.tracking import stage_run

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


def load_segmenter(path: Path, dev: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a train-segmenter checkpoint (``model.pt`` or its directory), in eval mode.

    A directory of several repeats gives its first repeat's network.

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: the file is not a segmenter checkpoint (keys missing).
    """
    file = find_checkpoints(Path(path))[0]
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    missing = [k for k in ("arch", "model_args", "state_dict") if k not in checkpoint]
    if missing:
        raise ValueError(f"{file}: not a segmenter checkpoint (missing {missing})")
    model = get_architecture(checkpoint["arch"]).build(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(dev).eval(), checkpoint


def find_checkpoints(model: Path) -> list[Path]:
    """The checkpoints of a train-segmenter output: ``model.pt``, or one per ``repeat-*``.

    Raises:
        FileNotFoundError: neither is there.
    """
    model = Path(model)
    if model.is_file():
        return [model]
    if (model / "model.pt").is_file():
        return [model / "model.pt"]
    repeats = sorted(p / "model.pt" for p in model.glob(REPEAT_GLOB) if (p / "model.pt").is_file())
    if repeats:
        return repeats
    raise FileNotFoundError(f"{model / 'model.pt'}: segmenter checkpoint not found (run train-segmenter first)")


def volume_spacing(source: Any, pad_to: int, image_size: int) -> tuple[float, float, float]:
    """Voxel size (z, row, column) in mm of a restacked volume from the source voxel size (x, y, z).

    Stored rows run along the source x axis and columns along y (``prepare`` slices the
    last axis); in-plane pixels grow by ``pad_to / image_size`` through the resampling.

    Raises:
        StoreError: `source` is not 3 positive numbers.
    """
    try:
        x, y, z = (float(v) for v in source)
    except (TypeError, ValueError):
        raise StoreError(f"voxel spacing must be 3 numbers (x, y, z mm), got {source!r}") from None
    if not all(v > 0 and np.isfinite(v) for v in (x, y, z)):
        raise StoreError(f"voxel spacing must be 3 positive numbers (x, y, z mm), got {source!r}")
    zoom = int(pad_to) / int(image_size)
    return (z, x * zoom, y * zoom)


def subject_spacings(store: SliceStore, pad_to: int) -> tuple[dict[str, tuple[float, float, float]], str]:
    """Volume voxel size (z, row, column) in mm per subject of `store`, and where it came from.

    Args:
        store: the real slice store.
        pad_to: the padded slice side, used when the manifest does not record ``pad_to``.

    Returns:
        subject -> spacing (every subject of the store), and a note for the summary.
    """
    manifest = store.manifest
    padded, size = int(manifest.get("pad_to") or pad_to), store.image_size
    resampling = f"in-plane x {padded}/{size} (padding, resampling)"
    table = store.path / "subjects.csv"
    if table.is_file():
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "spacing_x" in rows[0]:
            spacings = {}
            for row in rows:
                source = (row["spacing_x"], row["spacing_y"], row["spacing_z"])
                try:
                    spacings[row["subject"]] = volume_spacing(source, padded, size)
                except StoreError as exc:
                    raise StoreError(f"{table}: subject {row['subject']}: {exc}") from None
            missing = sorted(set(store.subjects()) - set(spacings))
            if missing:
                raise StoreError(f"{table}: no voxel spacing for subjects {missing[:5]}")
            distinct = sorted({tuple(float(row[f"spacing_{a}"]) for a in "xyz") for row in rows})
            sources = "; ".join("x".join(f"{v:g}" for v in d) for d in distinct[:3])
            return spacings, f"source voxels {sources} mm from subjects.csv, {resampling}"
    source = manifest.get("spacing")
    if source is not None:
        spacing = volume_spacing(source, padded, size)
        return ({subject: spacing for subject in store.subjects()},
                f"source voxels {'x'.join(f'{float(v):g}' for v in source)} mm from the manifest, {resampling}")
    return ({subject: (1.0, 1.0, 1.0) for subject in store.subjects()},
            "the store records no voxel spacing; 1 mm assumed on every axis (distances in voxels)")


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


def restack(z: np.ndarray, slices: np.ndarray, mode: str = "filtered", depth: int | None = None) -> tuple[np.ndarray, int]:
    """Stack one subject's 2D slices into a volume ordered by z.

    Args:
        z: slice positions (one per slice, any order).
        slices: [n, H, W] arrays in the same order as `z`.
        mode: ``filtered`` stacks the slices consecutively in z order; ``all`` places each
            at its z in a zero volume of `depth` slices.
        depth: volume depth for ``all`` (default: the largest z + 1).

    Returns:
        The volume [D, H, W] and the number of slices filled with zeros.

    Raises:
        ValueError: z values repeat or lie outside the depth, or `mode` is unknown.
    """
    z = np.asarray(z, dtype=np.int64)
    values, counts = np.unique(z, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"slices repeat z positions {values[counts > 1].tolist()}")
    order = np.argsort(z, kind="stable")
    if mode == "filtered":
        return slices[order], 0
    if mode != "all":
        raise ValueError(f"mode must be 'filtered' or 'all', got {mode!r}")
    depth = int(z.max()) + 1 if depth is None else int(depth)
    if len(z) and (z.min() < 0 or z.max() >= depth):
        raise ValueError(f"z positions {int(z.min())}..{int(z.max())} do not fit a depth of {depth}")
    volume = np.zeros((depth, *slices.shape[1:]), dtype=slices.dtype)
    volume[z] = slices
    return volume, depth - len(z)


def subject_depths(store: SliceStore) -> dict[str, int]:
    """Source volume depth per subject: ``subjects.csv`` (slices_total), else manifest ``shape``; {} if neither."""
    table = store.path / "subjects.csv"
    if table.is_file():
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "slices_total" in rows[0]:
            return {row["subject"]: int(row["slices_total"]) for row in rows}
    shape = store.manifest.get("shape")
    if shape:
        return {subject: int(shape[2]) for subject in store.subjects()}
    return {}


@torch.no_grad()
def segment(model: torch.nn.Module, slices: np.ndarray, batch_size: int, dev: torch.device | str,
            normalization: str = "zscore") -> np.ndarray:
    """Annotation values (uint8 [n, H, W]) predicted for stored slices (uint8 [n, 5, H, W]).

    `normalization` is the network's input normalisation (its architecture's, see
    :data:`synthmri.segmenters.data.NORMALIZATIONS`).
    """
    values = torch.tensor(LABEL_VALUES, dtype=torch.uint8)
    out = np.empty((len(slices), *slices.shape[2:]), dtype=np.uint8)
    for start in range(0, len(slices), batch_size):
        images, _ = prepare_batch(slices[start:start + batch_size], None, dev, normalization)
        classes = model(images).argmax(dim=1).cpu()
        out[start:start + batch_size] = values[classes].numpy()
    return out


def model_info(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """What the evaluation records of the model: architecture, data mix, setting, seed, name."""
    trained = checkpoint.get("config", {}).get("segmenter", {})
    return {
        "arch": checkpoint["arch"], "train": checkpoint.get("train"), "augment": bool(trained.get("augment", False)),
        "seed": checkpoint.get("seed"), "synthetic": list(checkpoint.get("synthetic") or []),
        "real_share": checkpoint.get("real_share"), "name": checkpoint.get("name") or path.parent.name,
        "synthetic_versions": list(checkpoint.get("synthetic_versions") or []), "repeat": checkpoint.get("repeat"),
    }


def _evaluate_checkpoint(checkpoint_path: Path, store: SliceStore, out: Path, cfg: Config,
                         spacings: dict[str, tuple[float, float, float]], spacing_note: str,
                         depths: dict[str, int], dev: torch.device) -> EvaluationSummary:
    """Segment, restack and score every test subject with one checkpoint; write out/ and one MLflow run."""
    mode, convention = cfg.evaluation.eval_slices, cfg.evaluation.convention
    network, checkpoint = load_segmenter(checkpoint_path, dev)
    info = model_info(checkpoint, checkpoint_path)
    test = store.indices("test")
    subjects = sorted(set(store.subject[test].tolist()))
    rows: list[dict[str, Any]] = []
    filled = 0
    tags = {"synthmri.train": str(info["train"]), "synthmri.arch": info["arch"],
            "synthmri.augment": str(info["augment"]).lower(), "synthmri.model": info["name"],
            "synthmri.generator": "+".join(info["synthetic"]) if info["train"] != "real" and info["synthetic"]
            else "real", "synthmri.generator_version": ",".join(info["synthetic_versions"]),
            "synthmri.convention": convention}
    with stage_run(cfg, stage="evaluate-segmenter", experiment="evaluation", run_name=f"{info['name']}-eval",
                   datasets={"real": store}, tags=tags) as run, \
            StageMonitor("evaluate-segmenter", unit="subjects", total=len(subjects), instance=info["name"]) as monitor:
        for number, subject in enumerate(subjects, start=1):
            positions = test[store.subject[test] == subject]
            slices = store.read(positions)
            pred = segment(network, slices, cfg.evaluation.batch_size, dev,
                           get_architecture(info["arch"]).normalization)
            z = store.z[positions]
            try:
                pred_volume, fill = restack(z, pred, mode, depths.get(subject))
                ref_volume, _ = restack(z, slices[:, IMAGE_CHANNELS], mode, depths.get(subject))
            except ValueError as exc:
                raise StoreError(f"{store.path}: test subject {subject}: {exc}") from None
            filled += fill
            for name, scores in score_volumes(pred_volume, ref_volume, spacings[subject], convention).items():
                rows.append({"subject": subject, "structure": name, **scores})
            if number == 1:  # the first subject by sorted id: every evaluated model shows the same slice
                write_example(out / EXAMPLE, store.slice_id[positions], z, slices, pred)
            monitor.progress(number)
        means, counts = subject_means(rows, convention)
        summary = {"model": info, "data_hash": store.content_hash, "eval_slices": mode, "subjects": len(subjects),
                   "convention": convention, "dataset": dataset_info(store), **means,
                   "mean_dice": mean_dice(means["dice"], convention), "subjects_scored": counts,
                   "repeats": 1, "runs": []}
        summary = jsonable(summary)  # undefined means (NaN) as null: what summary.json holds
        notes = [f"{filled} slices not in the store were scored as background (eval_slices=all)"] if filled else []
        _write_outputs(out, summary, rows)
        mlflow.log_params({"eval.spacing_source": spacing_note[:500], "eval.filled_slices": filled})
        _log_metrics(summary)
        mlflow.log_artifact(str(out / "summary.json"))
        mlflow.log_artifact(str(out / "per_subject.csv"))
        mlflow.log_artifact(str(out / EXAMPLE))
        run_id = run.info.run_id
    return EvaluationSummary(summary=summary, per_subject=rows, spacing_note=spacing_note, filled_slices=filled,
                             out=out, run_id=run_id, notes=notes)


def evaluate_segmenter(model: Path, data: Path, out: Path, cfg: Config) -> EvaluationSummary:
    """Segment the test subjects of `data` with every repeat of `model`, score them in 3D and record it.

    Args:
        model: train-segmenter output directory (``model.pt``, or ``repeat-*/model.pt``)
            or a ``model.pt``.
        data: the real slice store; its ``test`` split is scored.
        out: output directory: ``per_subject.csv`` (subject, structure, dice, hausdorff,
            hausdorff95) and ``summary.json`` (model, data_hash, eval_slices, subjects, dice,
            hausdorff, hausdorff95 per structure as means over subjects, mean_dice, convention,
            dataset, subjects_scored, repeats, runs and, over repeats, sd), ``example.npz`` (one test slice with its prediction,
            :func:`write_example`). Several repeats write ``out/repeat-*/`` each.
        cfg: ``evaluation`` (eval_slices, batch_size, convention), ``data.pad_to`` and ``tracking``.

    Returns:
        The EvaluationSummary (of the aggregate when there are several repeats).

    Raises:
        FileNotFoundError: no checkpoint at `model`.
        StoreError: the store is incomplete, has no test slices or a bad voxel spacing.
    """
    out = Path(out)
    checkpoints = find_checkpoints(model)
    store = SliceStore(data)
    if len(store.indices("test")) == 0:
        raise StoreError(f"{store.path}: no 'test' slices to evaluate")
    spacings, spacing_note = subject_spacings(store, cfg.data.pad_to)
    depths = subject_depths(store) if cfg.evaluation.eval_slices == "all" else {}
    dev = device()
    if len(checkpoints) == 1:
        return _evaluate_checkpoint(checkpoints[0], store, out, cfg, spacings, spacing_note, depths, dev)

    results = [_evaluate_checkpoint(path, store, out / path.parent.name, cfg, spacings, spacing_note, depths, dev)
               for path in checkpoints]
    runs = [f"{path.parent.name}/summary.json" for path in checkpoints]
    summary = aggregate_repeats([r.summary for r in results], runs)
    rows = [{"run": r.summary["model"]["name"], **row} for r in results for row in r.per_subject]
    _write_outputs(out, summary, rows)
    info = summary["model"]
    with stage_run(cfg, stage="evaluate-segmenter", experiment="evaluation", run_name=f"{info['name']}-eval",
                   datasets={"real": store}, tags={"synthmri.train": str(info["train"]), "synthmri.arch": info["arch"],
                                                   "synthmri.augment": str(info["augment"]).lower(),
                                                   "synthmri.repeats": str(len(results)),
                                                   "synthmri.convention": summary["convention"]}) as run:
        _log_metrics(summary)
        mlflow.log_artifact(str(out / "summary.json"))
        run_id = run.info.run_id
    notes = sorted({n for r in results for n in r.notes})
    return EvaluationSummary(summary=summary, per_subject=rows, spacing_note=spacing_note,
                             filled_slices=sum(r.filled_slices for r in results), out=out, run_id=run_id, notes=notes)


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


def _log_metrics(summary: dict[str, Any]) -> None:
    """Log a summary's defined scores as MLflow metrics; name the undefined ones in a tag."""
    metrics, undefined = mlflow_metrics(summary)
    mlflow.log_metrics(metrics)
    if undefined:
        mlflow.set_tag("synthmri.undefined_metrics", ",".join(undefined))


def _write_outputs(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
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
