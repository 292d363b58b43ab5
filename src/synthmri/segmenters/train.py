"""Train a segmenter on real, synthetic, mixed or ratio-mixed 2D slices (the ``train-segmenter`` stage).

One plain loop: sample a batch (:mod:`synthmri.segmenters.data`), augment and normalise as
the architecture's recipe says, one optimiser step, and every ``val_every_samples`` (or
every epoch, for recipes that count epochs) a validation pass. The checkpoint with the best
validation mean Dice (NCR, ED, ET) is kept as ``out/model.pt``; ``out/history.csv`` records
each validation and ``out/result.json`` marks the run finished.

What validates (the authors' model selection): runs with real training data use the real
store's ``val`` subjects; a synthetic-only run holds out ``segmenter.synthetic_holdout`` of
the synthetic slices and never opens the real store, so no real image influences it
before evaluation. The run records which set chose its checkpoint (``selected_on``).

Repeats (:func:`train_repeats`, ``--repeats N``): N runs with seeds ``seed, seed + 1, ...``
in ``out/repeat-00``, ``out/repeat-01``, ...; a repeat whose ``result.json`` records the same
config and inputs is kept, so a killed sweep resumes at the first unfinished repeat.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import mlflow
import numpy as np
import torch
from torch import nn

from synthmri.config import Config, ConfigError, dump_config, to_dict
from synthmri.data.store import SliceStore
from synthmri.io import atomic_write_json, atomic_write_text
from synthmri.monitoring import StageMonitor
from synthmri.segmenters import get_architecture
from synthmri.segmenters.data import TRAIN_SOURCES, BatchSampler, prepare_batch, validation_batches
from synthmri.tracking import stage_run

log = logging.getLogger(__name__)

TUMOUR_CLASSES = (1, 2, 3)  # NCR/NET, ED, ET as class indices
REPEAT_GLOB = "repeat-*"  # repeat directories of a --repeats run
GRAD_CLIP = 12.0  # nnU-Net clips the gradient norm at 12; with momentum 0.99 early steps can spike
HISTORY_COLUMNS = ("step", "samples", "loss", "val_dice", "lr", "seconds")
RESULT_FILE = "result.json"  # written last: the run finished
#: What chose a run's checkpoint (``TrainResult.selected_on``, tag ``synthmri.selected_on``).
SELECTED_ON_REAL_VAL, SELECTED_ON_SYNTHETIC_HOLDOUT, SELECTED_ON_NOTHING = "real-val", "synthetic-holdout", "last"


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    out: Path
    checkpoint: Path
    name: str
    arch: str
    train: str
    real_share: float | None
    augment: bool
    seed: int
    steps: int
    samples: int
    best_val_dice: float | None
    best_step: int
    seconds: float  # the whole run: training steps, validations, checkpoints
    step_seconds: float  # the training steps alone (sampling, augmentation, forward, backward)
    run_id: str
    selected_on: str = SELECTED_ON_REAL_VAL  # real-val, synthetic-holdout or last (no validation)

    def summary(self) -> str:
        """One line for the command line."""
        best = ("no validation" if self.best_val_dice is None
                else f"best val Dice {self.best_val_dice:.4f} at step {self.best_step} (on {self.selected_on})")
        rate = self.samples / max(self.step_seconds, 1e-9)
        return (f"{self.name}: {self.steps} steps ({self.samples} samples, {rate:.1f}/s, {self.seconds:.0f} s in all), "
                f"{best}; checkpoint {self.checkpoint}")


def generator_names(stores: Sequence[SliceStore]) -> list[str]:
    """Each synthetic store's generator name from its manifest (the directory name if absent)."""
    names = []
    for store in stores:
        generator = store.manifest.get("generator") or {}
        names.append(str(generator.get("name") or store.path.name))
    return names


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def validation_dice(model: nn.Module, batches: Iterable[np.ndarray], dev: torch.device,
                    normalization: str = "zscore") -> float:
    """Mean over NCR, ED and ET of the Dice on all validation slices pooled (2D predictions).

    Overlaps are summed over the whole split before dividing, so slices without a label
    weigh by their false positives only; a label absent from both prediction and reference
    on the whole split scores 1.
    """
    was_training = model.training
    model.eval()
    hits = np.zeros(len(TUMOUR_CLASSES))
    sizes = np.zeros(len(TUMOUR_CLASSES))
    for slices in batches:
        images, target = prepare_batch(slices, None, dev, normalization)
        pred = model(images).argmax(dim=1, keepdim=True)
        for i, label in enumerate(TUMOUR_CLASSES):
            p, t = pred == label, target == label
            hits[i] += 2 * (p & t).sum().item()
            sizes[i] += p.sum().item() + t.sum().item()
    model.train(was_training)
    scores = np.where(sizes > 0, hits / np.maximum(sizes, 1), 1.0)
    return float(scores.mean())


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file beside `path`, then rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def run_name(arch: str, train: str, augment: bool, repeat: int, generators: Sequence[str] = (),
             real_share: float | None = None) -> str:
    """``<generators>-<arch>-<train>-<aug|orig>-r<repeat>``, e.g. ``stylegan2-unet-synthetic-aug-r3``.

    The generators are joined by ``+`` (an ensemble) and left out for real-only training
    (``unet-real-aug-r0``); a ratio run's train reads ``ratio<percent real>``. Every setting of
    a grid gets its own name, so MLflow's compare view lines generators up by name.
    """
    source = f"ratio{round(real_share * 100):d}" if train == "ratio" else train
    prefix = "+".join(generators) + "-" if generators and train != "real" else ""
    return f"{prefix}{arch}-{source}-{'aug' if augment else 'orig'}-r{repeat}"


def generator_versions(stores: Sequence[SliceStore]) -> list[str]:
    """Each synthetic store's registered generator version from its manifest ('' if unknown)."""
    return [str((store.manifest.get("generator") or {}).get("version") or "") for store in stores]


def _inputs(train: str, real: SliceStore | None, synthetic: Sequence[SliceStore], real_share: float | None) -> dict[str, Any]:
    """What a finished run was trained on, as recorded in result.json (resume compares it)."""
    return {"train": train, "real_share": real_share, "real": real.content_hash if real is not None else None,
            "synthetic": [s.content_hash for s in synthetic]}


def train_segmenter(train: str, real: Path | None, synthetic: list[Path], out: Path, cfg: Config,
                    name: str | None = None, real_share: float | None = None, repeat: int = 0) -> TrainResult:
    """Train one segmenter and keep its best checkpoint.

    Args:
        train: ``real`` (the real store's train split), ``synthetic`` (all slices of the
            synthetic stores, pooled), ``mixed`` (each element real or synthetic with
            probability 1/2) or ``ratio`` (a pool of ``segmenter.ratio_total`` slices, a
            share `real_share` of them real).
        real: the real slice store; its ``val`` split validates every run with real data
            (without it such a run keeps its last weights). A ``synthetic`` run never opens
            it: it validates on ``segmenter.synthetic_holdout`` of the synthetic slices.
        synthetic: synthetic slice stores (an ensemble when several); ignored for ``real``.
        out: output directory: ``model.pt``, ``history.csv``, ``config.yaml``.
        cfg: the resolved config (``segmenter``, ``seed``, ``tracking``).
        name: MLflow run name; default :func:`run_name`.
        real_share: ``ratio`` only: the share of real slices in the pool, in [0, 1].
        repeat: which repeat of its setting this run is (in the default run name).

    Returns:
        The TrainResult.

    Raises:
        ValueError: unknown `train`, or a store it needs is missing.
        ConfigError: unknown architecture, or a budget smaller than one batch.
        StoreError: a store is missing, incomplete or has nothing to sample.
        RuntimeError: the loss became NaN or infinite (diverged).
    """
    if train not in TRAIN_SOURCES:
        raise ValueError(f"train must be one of {TRAIN_SOURCES}, got {train!r}")
    if train == "ratio" and real_share is None:
        raise ValueError("train='ratio' needs real_share (the share of real slices, 0 to 1)")
    real_share = float(real_share) if train == "ratio" else None
    arch = get_architecture(cfg.segmenter.arch)
    section = arch.settings(cfg.segmenter)
    augment, seed = cfg.segmenter.augment, cfg.seed
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # A synthetic-only run never opens the real store: it selects on held-out synthetic slices.
    if train == "synthetic" and real is not None:
        log.info("train=synthetic: the real store %s is not read (selection on a synthetic hold-out)", real)
    real_store = SliceStore(real) if real is not None and train != "synthetic" else None
    if train == "real" and synthetic:
        log.warning("train=real: ignoring %d synthetic store(s)", len(synthetic))
    synthetic_stores = [SliceStore(p) for p in synthetic] if train != "real" else []

    # One seed drives three independent streams: batch sampling, augmentation, weights.
    sample_seed, augment_seed, torch_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
    torch.manual_seed(torch_seed)
    dev = device()
    epochs = int(getattr(section, "epochs", 0) or 0)
    sampler = BatchSampler(train, real_store, synthetic_stores, section.batch_size, sample_seed, real_share=real_share,
                           pool_size=cfg.segmenter.ratio_total if train == "ratio" else 0,
                           holdout=cfg.segmenter.synthetic_holdout if train == "synthetic" else 0.0,
                           epochs=epochs > 0)
    if train == "synthetic":
        selected_on = SELECTED_ON_SYNTHETIC_HOLDOUT
    elif real_store is not None and len(real_store.indices("val")) > 0:
        selected_on = SELECTED_ON_REAL_VAL
    else:
        selected_on = SELECTED_ON_NOTHING
        log.warning("no real 'val' slices to validate on: keeping the last weights instead of the best")
    validates = selected_on != SELECTED_ON_NOTHING
    # Length: epochs over the training pool (the authors' Swin), else a budget of samples.
    steps_per_epoch = sampler.steps_per_epoch() if epochs else 0
    steps = epochs * steps_per_epoch if epochs else section.train_samples // section.batch_size
    if steps < 1:
        raise ConfigError(f"segmenter.{arch.name}.train_samples ({section.train_samples}) is less than one batch "
                          f"({section.batch_size})")
    val_every = (max(1, section.val_every_samples // section.batch_size) if section.val_every_samples
                 else steps_per_epoch or steps)
    augmenter = arch.augmenter(augment_seed, augment)
    model_args = arch.model_args(section)
    model = arch.build(**model_args).to(dev)
    optimiser, schedule = arch.optimizer(model, section, steps)
    loss_fn = arch.loss(section).to(dev)
    dump_config(cfg, out / "config.yaml")

    names = generator_names(synthetic_stores)
    name = name or run_name(arch.name, train, augment, repeat, names, real_share)
    checkpoint_path = out / "model.pt"
    versions = generator_versions(synthetic_stores)
    base = {"arch": arch.name, "model_args": model_args, "config": to_dict(cfg), "train": train,
            "synthetic": names, "synthetic_versions": versions, "seed": seed, "repeat": repeat, "name": name,
            "real_share": real_share, "selected_on": selected_on}
    datasets = {"real": real_store} if real_store is not None else {}
    datasets.update({f"synthetic-{i}": s for i, s in enumerate(synthetic_stores)})
    tags = {"synthmri.train": train, "synthmri.arch": arch.name, "synthmri.augment": str(augment).lower(),
            "synthmri.synthetic": ",".join(names), "synthmri.generator": "+".join(names) or "real",
            "synthmri.generator_version": ",".join(versions), "synthmri.repeat": str(repeat),
            "synthmri.selected_on": selected_on}
    if sampler.pool_counts is not None:
        tags["synthmri.real_share"] = f"{real_share:g}"
        log.info("%s: ratio pool of %d real + %d synthetic slices", name, *sampler.pool_counts)
    total = steps * section.batch_size
    log_every = max(1, min(50, val_every // 4))
    history: list[dict[str, Any]] = []
    best_dice, best_step = -math.inf, 0
    window: list[float] = []  # losses since the last validation
    log_window: list[float] = []  # losses since the last MLflow log
    start = step_seconds = 0.0  # wall clock of the run; of the training steps alone (throughput)

    def validation_set() -> Iterable[np.ndarray]:
        if selected_on == SELECTED_ON_SYNTHETIC_HOLDOUT:
            return sampler.holdout_batches(cfg.evaluation.batch_size)
        return validation_batches(real_store, cfg.evaluation.batch_size)

    def checkpoint(step: int, val_dice: float | None) -> None:
        save_checkpoint(checkpoint_path, {**base, "state_dict": model.state_dict(), "best_val_dice": val_dice,
                                          "step": step})

    def evaluate(step: int) -> None:
        nonlocal best_dice, best_step, window
        val_dice = (validation_dice(model, validation_set(), dev, arch.normalization) if validates
                    else float("nan"))
        mean_loss = float(np.mean(window)) if window else float("nan")
        history.append({"step": step, "samples": step * section.batch_size, "loss": f"{mean_loss:.6g}",
                        "val_dice": f"{val_dice:.6g}", "lr": f"{schedule.get_last_lr()[0]:.6g}",
                        "seconds": f"{time.monotonic() - start:.1f}"})
        window = []
        _write_history(out / "history.csv", history)
        if validates:
            mlflow.log_metric("val_dice", val_dice, step=step)
            if val_dice > best_dice:
                best_dice, best_step = val_dice, step
                checkpoint(step, val_dice)
        log.info("%s: step %d/%d loss %.4f val Dice %.4f", name, step, steps, mean_loss, val_dice)

    with stage_run(cfg, stage="train-segmenter", experiment="segmenters", run_name=name, datasets=datasets,
                   tags=tags) as run, StageMonitor("train-segmenter", unit="samples", total=total, instance=name) as monitor:
        mlflow.log_params({"train.steps": steps, "train.val_every_steps": val_every, "train.device": str(dev),
                           "train.selected_on": selected_on, "train.epochs": epochs,
                           **({"train.real_share": real_share, "train.pool_real": sampler.pool_counts[0],
                               "train.pool_synthetic": sampler.pool_counts[1]} if sampler.pool_counts else {})})
        start = time.monotonic()
        evaluate(0)  # the untrained baseline: every later validation is compared with it
        model.train()
        for step in range(1, steps + 1):
            tick = time.monotonic()
            images, target = prepare_batch(sampler.sample().slices, augmenter, dev, arch.normalization)
            loss = loss_fn(model(images), target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimiser.step()
            schedule.step()
            value = float(loss.detach())
            step_seconds += time.monotonic() - tick
            if not math.isfinite(value):
                raise RuntimeError(f"{name}: training diverged at step {step} (loss {value}); "
                                   f"lower segmenter.{arch.name}.lr ({section.lr})")
            window.append(value)
            log_window.append(value)
            monitor.progress(step * section.batch_size)
            monitor.loss("train", value)
            if step % log_every == 0:
                mlflow.log_metrics({"loss": float(np.mean(log_window)), "lr": schedule.get_last_lr()[0]}, step=step)
                log_window = []
            if step % val_every == 0 or step == steps:
                evaluate(step)
        if not validates:
            checkpoint(steps, None)
            best_step = steps
        seconds = time.monotonic() - start
        best = best_dice if validates else None
        if best is not None:
            mlflow.log_metric("best_val_dice", best)
        mlflow.log_metric("samples_per_second", total / max(step_seconds, 1e-9))
        mlflow.set_tags({"synthmri.checkpoint": str(checkpoint_path.resolve()), "synthmri.best_step": str(best_step)})
        mlflow.log_artifact(str(out / "history.csv"))
        run_id = run.info.run_id

    result = TrainResult(out=out, checkpoint=checkpoint_path, name=name, arch=arch.name, train=train,
                         real_share=real_share, augment=augment, seed=seed, steps=steps, samples=total,
                         best_val_dice=best, best_step=best_step, seconds=seconds, step_seconds=step_seconds,
                         run_id=run_id, selected_on=selected_on)
    record = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}
    atomic_write_json(out / RESULT_FILE, {"result": record, "config": to_dict(cfg),
                                          "inputs": _inputs(train, real_store, synthetic_stores, real_share)})
    log.info(result.summary())
    return result


def _finished(out: Path, cfg: Config, inputs: dict[str, Any]) -> TrainResult | None:
    """The TrainResult of a run in `out` that finished with this config and these inputs, else None."""
    try:
        record = json.loads((out / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    # Compared as JSON reads back (tuples as lists, label-map keys as strings).
    expected = json.loads(json.dumps({"config": to_dict(cfg), "inputs": inputs}))
    if {k: record.get(k) for k in expected} != expected or not (out / "model.pt").is_file():
        return None
    fields = record["result"]
    return TrainResult(**{**fields, "out": Path(fields["out"]), "checkpoint": Path(fields["checkpoint"])})


def _clear_stale_runs(out: Path, repeats: int) -> None:
    """Remove what an earlier run with another repeat count left in `out`: evaluation reads
    ``model.pt`` or every ``repeat-*``, so leftovers would be scored as part of this run."""
    keep = {f"repeat-{n:02d}" for n in range(repeats)} if repeats > 1 else set()
    for folder in sorted(out.glob(REPEAT_GLOB)):
        if folder.is_dir() and folder.name not in keep:
            log.warning("removing %s, left by an earlier run with more repeats", folder)
            shutil.rmtree(folder)
    if repeats > 1:
        for leftover in ("model.pt", RESULT_FILE, "history.csv"):
            if (out / leftover).exists():
                log.warning("removing %s, left by an earlier single run", out / leftover)
                (out / leftover).unlink()


def train_repeats(train: str, real: Path | None, synthetic: list[Path], out: Path, cfg: Config,
                  repeats: int | None = None, name: str | None = None,
                  real_share: float | None = None, first_repeat: int = 0) -> list[TrainResult]:
    """Train `repeats` segmenters that differ only in their seed (the paper's repeated runs).

    One repeat trains into `out` itself, as :func:`train_segmenter`; several train into
    ``out/repeat-00``, ``out/repeat-01``, ... with seeds ``cfg.seed + i``. A run that
    already finished with the same config and inputs (its ``result.json``) is not trained
    again, so an interrupted sweep resumes.

    Args:
        train, real, synthetic, cfg, real_share: as :func:`train_segmenter`.
        out: output directory.
        repeats: number of seeds; default ``segmenter.repeats``.
        first_repeat: index of the first repeat in run names (a pipeline task that runs
            repeat 3 of a grid alone passes 3).
        name: run-name prefix; each repeat appends ``-r<repeat>`` (default :func:`run_name`).

    Returns:
        One TrainResult per repeat, in seed order.

    Raises:
        ConfigError: `repeats` < 1; and whatever :func:`train_segmenter` raises.
    """
    repeats = cfg.segmenter.repeats if repeats is None else int(repeats)
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    _clear_stale_runs(Path(out), repeats)
    real_store = SliceStore(real) if real is not None and train != "synthetic" else None
    synthetic_stores = [SliceStore(p) for p in synthetic] if train != "real" else []
    share = float(real_share) if train == "ratio" and real_share is not None else None
    inputs = _inputs(train, real_store, synthetic_stores, share)
    results = []
    for number in range(repeats):
        seeded = dataclasses.replace(cfg, seed=cfg.seed + number)
        folder = Path(out) / f"repeat-{number:02d}" if repeats > 1 else Path(out)
        done = _finished(folder, seeded, inputs)
        if done is not None:
            log.info("repeat %d/%d (seed %d) already finished in %s: kept", number + 1, repeats, seeded.seed, folder)
            results.append(done)
            continue
        log.info("repeat %d/%d (seed %d) -> %s", number + 1, repeats, seeded.seed, folder)
        label = name if repeats == 1 or not name else f"{name}-r{first_repeat + number}"
        results.append(train_segmenter(train, real, synthetic, folder, seeded, name=label, real_share=real_share,
                                       repeat=first_repeat + number))
    return results
