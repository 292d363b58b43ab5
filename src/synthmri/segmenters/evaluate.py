"""Score a trained segmenter in 3D on the real test subjects (the ``evaluate-segmenter`` stage).

Each test slice is segmented in 2D, the slices of a subject are restacked in z order (the
index's ``z``, never file order) and the volume is scored against the restacked reference:
3D Dice and maximum Hausdorff distance per label, ET (204), ED (102) and NCR/NET (51),
as the paper's published code does.

Which slices form the volume (``evaluation.eval_slices``):

* ``filtered`` (the paper): the slices in the store, i.e. those that passed the preparation
  filter (more than 15 % foreground), stacked consecutively in z order.
* ``all``: a volume of the subject's full depth with every stored slice at its own z. A
  store that holds only filtered slices has no data for the others: they are filled with
  background in both prediction and reference, so tumour outside the filtered slices is
  not scored, but the z geometry (gaps, volume depth) is the original one. The depth is
  the subject's ``slices_total`` in the store's ``subjects.csv`` (written by ``prepare``),
  else the manifest's source ``shape[2]``, else the subject's largest z + 1.

Voxel spacing: the manifest's ``spacing`` (source voxel size in mm, x y z) when present;
the stored in-plane pixel is ``spacing * pad_to / image_size`` because slices are padded to
``pad_to`` and resampled to ``image_size``. Without it every axis is taken as 1 mm and
the summary says so.
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
from synthmri.data.labels import LABEL_NAMES, LABEL_VALUES
from synthmri.data.store import IMAGE_CHANNELS, SliceStore, StoreError
from synthmri.io import atomic_write_json, atomic_write_text
from synthmri.metrics.segmentation import dice, hausdorff
from synthmri.monitoring import StageMonitor
from synthmri.segmenters import get_architecture
from synthmri.segmenters.data import prepare_batch
from synthmri.segmenters.train import device
from synthmri.tracking import stage_run

log = logging.getLogger(__name__)

#: Scored labels in the order of the paper's tables.
EVAL_LABELS: tuple[str, ...] = ("ET", "ED", "NCR")


@dataclass(frozen=True)
class EvaluationSummary:
    """The scores of one evaluation (``summary`` is what summary.json holds)."""

    summary: dict[str, Any]
    per_subject: list[dict[str, Any]]
    spacing: tuple[float, float, float]
    spacing_note: str
    filled_slices: int
    out: Path
    run_id: str = ""
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """A few lines for the command line."""
        s = self.summary
        lines = [
            f"{s['model']['name']}: {s['subjects']} test subjects, {s['eval_slices']} slices, "
            f"mean Dice {s['mean_dice']:.4f}",
            "  Dice       " + "  ".join(f"{k} {s['dice'][k]:.4f}" for k in EVAL_LABELS),
            "  Hausdorff  " + "  ".join(f"{k} {s['hausdorff'][k]:.2f} mm" for k in EVAL_LABELS),
            f"  spacing {'x'.join(f'{v:g}' for v in self.spacing)} mm (z, row, column): {self.spacing_note}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  wrote {self.out / 'summary.json'} and {self.out / 'per_subject.csv'}")
        return "\n".join(lines)


def load_segmenter(path: Path, dev: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a train-segmenter checkpoint (``model.pt`` or its directory), in eval mode.

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: the file is not a segmenter checkpoint (keys missing).
    """
    path = Path(path)
    file = path / "model.pt" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: segmenter checkpoint not found (run train-segmenter first)")
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    missing = [k for k in ("arch", "model_args", "state_dict") if k not in checkpoint]
    if missing:
        raise ValueError(f"{file}: not a segmenter checkpoint (missing {missing})")
    model = get_architecture(checkpoint["arch"]).build(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(dev).eval(), checkpoint


def slice_spacing(manifest: dict[str, Any], pad_to: int) -> tuple[tuple[float, float, float], str]:
    """Voxel size (z, row, column) in mm of a restacked volume, and where it came from.

    Args:
        manifest: the store manifest; ``spacing`` (or ``voxel_spacing``) is the source
            voxel size in mm as (x, y, z), with stored rows along x and columns along y.
        pad_to: the side slices were padded to before resampling, used when the manifest
            does not record ``pad_to`` itself.
    """
    source = manifest.get("spacing") or manifest.get("voxel_spacing")
    if source is None:
        return (1.0, 1.0, 1.0), "the store manifest records no voxel spacing; 1 mm assumed on every axis"
    if len(source) != 3 or not all(float(v) > 0 for v in source):
        raise StoreError(f"manifest spacing must be 3 positive numbers (x, y, z mm), got {source}")
    padded = int(manifest.get("pad_to") or pad_to)
    zoom = padded / int(manifest["image_size"])
    x, y, z = (float(v) for v in source)
    note = f"source spacing {x:g}x{y:g}x{z:g} mm, in-plane x {padded}/{manifest['image_size']} (padding, resampling)"
    return (z, x * zoom, y * zoom), note


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
def segment(model: torch.nn.Module, slices: np.ndarray, batch_size: int, dev: torch.device | str) -> np.ndarray:
    """Annotation values (uint8 [n, H, W]) predicted for stored slices (uint8 [n, 5, H, W])."""
    values = torch.tensor(LABEL_VALUES, dtype=torch.uint8)
    out = np.empty((len(slices), *slices.shape[2:]), dtype=np.uint8)
    for start in range(0, len(slices), batch_size):
        images, _ = prepare_batch(slices[start:start + batch_size], None, dev)
        classes = model(images).argmax(dim=1).cpu()
        out[start:start + batch_size] = values[classes].numpy()
    return out


def evaluate_segmenter(model: Path, data: Path, out: Path, cfg: Config) -> EvaluationSummary:
    """Segment the test subjects of `data`, score them in 3D and record the result.

    Args:
        model: train-segmenter output directory or its ``model.pt``.
        data: the real slice store; its ``test`` split is scored.
        out: output directory: ``per_subject.csv`` (subject,label,dice,hausdorff) and
            ``summary.json`` (model, data_hash, eval_slices, subjects, dice, hausdorff,
            mean_dice; Dice and Hausdorff are means over subjects).
        cfg: ``evaluation`` (eval_slices, batch_size), ``data.pad_to`` and ``tracking``.

    Returns:
        The EvaluationSummary.

    Raises:
        FileNotFoundError: no checkpoint at `model`.
        StoreError: the store is incomplete or has no test slices.
    """
    out = Path(out)
    mode = cfg.evaluation.eval_slices
    dev = device()
    network, checkpoint = load_segmenter(model, dev)
    store = SliceStore(data)
    test = store.indices("test")
    if len(test) == 0:
        raise StoreError(f"{store.path}: no 'test' slices to evaluate")
    subjects = sorted(set(store.subject[test].tolist()))
    spacing, spacing_note = slice_spacing(store.manifest, cfg.data.pad_to)
    depths = subject_depths(store) if mode == "all" else {}
    trained = checkpoint.get("config", {}).get("segmenter", {})
    name = checkpoint.get("name") or (Path(model) if Path(model).is_dir() else Path(model).parent).name
    model_info = {
        "arch": checkpoint["arch"], "train": checkpoint.get("train"), "augment": bool(trained.get("augment", False)),
        "seed": checkpoint.get("seed"), "synthetic": list(checkpoint.get("synthetic") or []), "name": name,
    }
    notes: list[str] = []

    rows: list[dict[str, Any]] = []
    filled = 0
    tags = {"synthmri.train": str(model_info["train"]), "synthmri.arch": model_info["arch"],
            "synthmri.augment": str(model_info["augment"]).lower(), "synthmri.model": name}
    with stage_run(cfg, stage="evaluate-segmenter", experiment="evaluation", run_name=f"{name}-eval",
                   datasets={"real": store}, tags=tags) as run, \
            StageMonitor("evaluate-segmenter", unit="subjects", total=len(subjects), instance=name) as monitor:
        for number, subject in enumerate(subjects, start=1):
            positions = test[store.subject[test] == subject]
            slices = store.read(positions)
            pred = segment(network, slices, cfg.evaluation.batch_size, dev)
            z = store.z[positions]
            try:
                pred_volume, fill = restack(z, pred, mode, depths.get(subject))
                ref_volume, _ = restack(z, slices[:, IMAGE_CHANNELS], mode, depths.get(subject))
            except ValueError as exc:
                raise StoreError(f"{store.path}: test subject {subject}: {exc}") from None
            filled += fill
            for label in EVAL_LABELS:
                value = LABEL_NAMES[label]
                rows.append({"subject": subject, "label": label, "dice": dice(pred_volume, ref_volume, value),
                             "hausdorff": hausdorff(pred_volume, ref_volume, value, spacing=spacing)})
            monitor.progress(number)
        summary = {
            "model": model_info,
            "data_hash": store.content_hash,
            "eval_slices": mode,
            "subjects": len(subjects),
            "dice": {k: float(np.mean([r["dice"] for r in rows if r["label"] == k])) for k in EVAL_LABELS},
            "hausdorff": {k: float(np.mean([r["hausdorff"] for r in rows if r["label"] == k])) for k in EVAL_LABELS},
        }
        summary["mean_dice"] = float(np.mean(list(summary["dice"].values())))
        _write_outputs(out, summary, rows)
        if filled:
            notes.append(f"{filled} slices not in the store were scored as background (eval_slices=all)")
        mlflow.log_params({"eval.spacing_mm": ",".join(f"{v:g}" for v in spacing), "eval.spacing_source": spacing_note,
                           "eval.filled_slices": filled})
        mlflow.log_metrics({**{f"dice_{k}": v for k, v in summary["dice"].items()},
                            **{f"hausdorff_{k}": v for k, v in summary["hausdorff"].items()},
                            "mean_dice": summary["mean_dice"]})
        mlflow.log_artifact(str(out / "summary.json"))
        mlflow.log_artifact(str(out / "per_subject.csv"))
        run_id = run.info.run_id
    return EvaluationSummary(summary=summary, per_subject=rows, spacing=spacing, spacing_note=spacing_note,
                             filled_slices=filled, out=out, run_id=run_id, notes=notes)


def _write_outputs(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("subject", "label", "dice", "hausdorff"), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "dice": f"{row['dice']:.6f}", "hausdorff": f"{row['hausdorff']:.4f}"})
    atomic_write_text(out / "per_subject.csv", buffer.getvalue())
    atomic_write_json(out / "summary.json", summary)
    log.info("evaluation: %s", json.dumps({k: summary[k] for k in ("dice", "hausdorff", "mean_dice")}))
