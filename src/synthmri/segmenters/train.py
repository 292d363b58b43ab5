"""Train a segmenter on real, synthetic, mixed or ratio-mixed 2D slices: the library half of ``train-segmenter``.

One task on the shared skeleton of :mod:`synthmri.training`: sample a batch
(:mod:`synthmri.segmenters.data`), augment and normalise as the architecture's recipe says,
one optimiser step, and every ``val_every_samples`` (or every epoch, for recipes that count
epochs) a validation pass. The checkpoint with the best validation mean Dice (NCR, ED, ET)
is kept as ``out/model.pt``; ``out/history.csv`` records each validation. SIGTERM saves the
training state to ``out/checkpoint.pt`` and stops.

What validates (the authors' model selection): runs with real training data use the real
store's ``val`` subjects; a synthetic-only run holds out ``segmenter.synthetic_holdout`` of
the synthetic slices and never opens the real store, so no real image influences it
before evaluation. The run records which set chose its checkpoint (``selected_on``).

Tracking, repeats and the ``completion.json`` that marks a finished run are the stage's:
:mod:`synthmri.stages.train_segmenter`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from synthmri.config import Config, ConfigError, dump_config, to_dict
from synthmri.data.store import SliceStore
from synthmri.io import atomic_torch_save, atomic_write_text
from synthmri.segmenters import get_architecture
from synthmri.segmenters.data import TRAIN_SOURCES, BatchSampler, prepare_batch, validation_batches
from synthmri.segmenters.runs import (
    SELECTED_ON_NOTHING,
    SELECTED_ON_REAL_VAL,
    SELECTED_ON_SYNTHETIC_HOLDOUT,
    STATE_NAME,
    SegmenterTrainResult,
    generator_names,
    generator_versions,
    open_stores,
    run_name,
)
from synthmri.training import Cadence, NullReporter, Reporter, TrainingInterrupted, TrainingTask, select_device, train

log = logging.getLogger(__name__)

TUMOUR_CLASSES = (1, 2, 3)  # NCR/NET, ED, ET as class indices
REPEAT_GLOB = "repeat-*"  # repeat directories of a --repeats run
GRAD_CLIP = 12.0  # nnU-Net clips the gradient norm at 12; with momentum 0.99 early steps can spike
HISTORY_COLUMNS = ("step", "samples", "loss", "val_dice", "lr", "seconds")
MODEL_NAME = "model.pt"  # the selected weights: what evaluation reads
HISTORY_NAME = "history.csv"

#: Checkpoints are written with the one atomic save of :mod:`synthmri.io` (fsync, mode 0644).
save_checkpoint = atomic_torch_save
#: Where segmenters train and are evaluated: the current GPU when there is one, else the CPU.
device = select_device


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


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class SegmenterTraining(TrainingTask):
    """One segmenter's training run, built and ready to :meth:`fit`.

    Args:
        train: ``real`` (the real store's train split), ``synthetic`` (all slices of the
            synthetic stores, pooled), ``mixed`` (each element real or synthetic with
            probability 1/2) or ``ratio`` (a pool of ``segmenter.ratio_total`` slices, a
            share `real_share` of them real).
        real: The real slice store; its ``val`` split validates every run with real data
            (without it such a run keeps its last weights). A ``synthetic`` run never opens
            it: it validates on ``segmenter.synthetic_holdout`` of the synthetic slices.
        synthetic: Synthetic slice stores (an ensemble when several); ignored for ``real``.
        out: Output directory: ``model.pt``, ``history.csv``, ``config.yaml``.
        cfg: The resolved config (``segmenter``, ``seed``).
        name: Run name; default :func:`run_name`.
        real_share: ``ratio`` only: the share of real slices in the pool, in [0, 1].
        repeat: Which repeat of its setting this run is (in the default run name).

    Raises:
        ValueError: Unknown `train`, or a store it needs is missing.
        ConfigError: Unknown architecture, or a budget smaller than one batch.
        StoreError: A store is missing, incomplete or has nothing to sample.
    """

    def __init__(self, train: str, real: Path | None, synthetic: Sequence[Path], out: Path, cfg: Config,
                 name: str | None = None, real_share: float | None = None, repeat: int = 0) -> None:
        if train not in TRAIN_SOURCES:
            raise ValueError(f"train must be one of {TRAIN_SOURCES}, got {train!r}")
        if train == "ratio" and real_share is None:
            raise ValueError("train='ratio' needs real_share (the share of real slices, 0 to 1)")
        self.train, self.cfg, self.repeat = train, cfg, repeat
        self.real_share = float(real_share) if train == "ratio" else None
        self.arch = get_architecture(cfg.segmenter.arch)
        section = self.section = self.arch.settings(cfg.segmenter)
        self.augment, self.seed = cfg.segmenter.augment, cfg.seed
        self.out = out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / STATE_NAME).unlink(missing_ok=True)  # an earlier run's SIGTERM state: this run starts afresh

        if train == "synthetic" and real is not None:
            log.info("train=synthetic: the real store %s is not read (selection on a synthetic hold-out)", real)
        if train == "real" and synthetic:
            log.warning("train=real: ignoring %d synthetic store(s)", len(synthetic))
        self.real_store, self.synthetic_stores = open_stores(train, real, synthetic)

        # One seed drives three independent streams: batch sampling, augmentation, weights.
        sample_seed, augment_seed, torch_seed = (int(s) for s in np.random.SeedSequence(self.seed).generate_state(3))
        torch.manual_seed(torch_seed)
        self.device = select_device()
        self.epochs = int(getattr(section, "epochs", 0) or 0)
        self.sampler = BatchSampler(
            train, self.real_store, self.synthetic_stores, section.batch_size, sample_seed, real_share=self.real_share,
            pool_size=cfg.segmenter.ratio_total if train == "ratio" else 0,
            holdout=cfg.segmenter.synthetic_holdout if train == "synthetic" else 0.0, epochs=self.epochs > 0)
        if train == "synthetic":
            self.selected_on = SELECTED_ON_SYNTHETIC_HOLDOUT
        elif self.real_store is not None and len(self.real_store.indices("val")) > 0:
            self.selected_on = SELECTED_ON_REAL_VAL
        else:
            self.selected_on = SELECTED_ON_NOTHING
            log.warning("no real 'val' slices to validate on: keeping the last weights instead of the best")
        self.validates = self.selected_on != SELECTED_ON_NOTHING
        # Length: epochs over the training pool (the authors' Swin), else a budget of samples.
        steps_per_epoch = self.sampler.steps_per_epoch() if self.epochs else 0
        self.steps = self.epochs * steps_per_epoch if self.epochs else section.train_samples // section.batch_size
        if self.steps < 1:
            raise ConfigError(f"segmenter.{self.arch.name}.train_samples ({section.train_samples}) is less than one "
                              f"batch ({section.batch_size})")
        self.val_every = (max(1, section.val_every_samples // section.batch_size) if section.val_every_samples
                          else steps_per_epoch or self.steps)
        self.augmenter = self.arch.augmenter(augment_seed, self.augment)
        self.model_args = self.arch.model_args(section)
        self.model = self.arch.build(**self.model_args).to(self.device)
        self.optimiser, self.schedule = self.arch.optimizer(self.model, section, self.steps)
        self.loss_fn = self.arch.loss(section).to(self.device)
        dump_config(cfg, out / "config.yaml")

        self.generators = generator_names(self.synthetic_stores)
        self.versions = generator_versions(self.synthetic_stores)
        self.name = name or run_name(self.arch.name, train, self.augment, repeat, self.generators, self.real_share)
        self.checkpoint_path = out / MODEL_NAME
        if self.sampler.pool_counts is not None:
            log.info("%s: ratio pool of %d real + %d synthetic slices", self.name, *self.sampler.pool_counts)
        self.total = self.steps * section.batch_size
        self.history: list[dict[str, Any]] = []
        self.best_dice, self.best_step = -math.inf, 0
        self.window: list[float] = []  # losses since the last validation
        self.started = self.step_seconds = 0.0  # wall clock of the run; of the training steps alone
        self.run_id = ""

    # --- what the stage records -------------------------------------------------------

    @property
    def datasets(self) -> dict[str, SliceStore]:
        """The stores read, by role: ``real``, ``synthetic-0``, ``synthetic-1``..."""
        datasets = {"real": self.real_store} if self.real_store is not None else {}
        datasets.update({f"synthetic-{i}": s for i, s in enumerate(self.synthetic_stores)})
        return datasets

    @property
    def tags(self) -> dict[str, str]:
        """Run tags: the setting (source, architecture, augmentation, generators, repeat, selection)."""
        tags = {"synthmri.train": self.train, "synthmri.arch": self.arch.name,
                "synthmri.augment": str(self.augment).lower(), "synthmri.synthetic": ",".join(self.generators),
                "synthmri.generator": "+".join(self.generators) or "real",
                "synthmri.generator_version": ",".join(self.versions), "synthmri.repeat": str(self.repeat),
                "synthmri.selected_on": self.selected_on}
        if self.sampler.pool_counts is not None:
            tags["synthmri.real_share"] = f"{self.real_share:g}"
        return tags

    @property
    def params(self) -> dict[str, Any]:
        """Run params beyond the config: length, validation interval, device, the ratio pool."""
        params: dict[str, Any] = {"train.steps": self.steps, "train.val_every_steps": self.val_every,
                                  "train.device": str(self.device), "train.selected_on": self.selected_on,
                                  "train.epochs": self.epochs}
        if self.sampler.pool_counts:
            params.update({"train.real_share": self.real_share, "train.pool_real": self.sampler.pool_counts[0],
                           "train.pool_synthetic": self.sampler.pool_counts[1]})
        return params

    @property
    def cadence(self) -> Cadence:
        """Validate before training and every ``val_every`` steps; log about four times as often."""
        return Cadence(steps=self.steps, log_every=max(1, min(50, self.val_every // 4)),
                       validate_every=self.val_every, validate_first=True)

    @property
    def _base(self) -> dict[str, Any]:
        """What every checkpoint of the run records besides weights."""
        return {"arch": self.arch.name, "model_args": self.model_args, "config": to_dict(self.cfg),
                "train": self.train, "synthetic": self.generators, "synthetic_versions": self.versions,
                "seed": self.seed, "repeat": self.repeat, "name": self.name, "real_share": self.real_share,
                "selected_on": self.selected_on}

    # --- the task the skeleton drives -------------------------------------------------

    def train_step(self, step: int) -> Mapping[str, float]:
        """One augmented batch, one clipped optimiser step and one schedule step.

        Raises:
            RuntimeError: The loss became NaN or infinite (diverged).
        """
        tick = time.monotonic()
        images, target = prepare_batch(self.sampler.sample().slices, self.augmenter, self.device,
                                       self.arch.normalization)
        loss = self.loss_fn(self.model(images), target)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimiser.step()
        self.schedule.step()
        value = float(loss.detach())
        self.step_seconds += time.monotonic() - tick
        if not math.isfinite(value):
            raise RuntimeError(f"{self.name}: training diverged at step {step} (loss {value}); "
                               f"lower segmenter.{self.arch.name}.lr ({self.section.lr})")
        self.window.append(value)
        return {"loss": value}

    def log_metrics(self, step: int) -> Mapping[str, float]:
        """The learning rate."""
        return {"lr": self.schedule.get_last_lr()[0]}

    def progress(self, step: int) -> int:
        """Samples trained on."""
        return step * self.section.batch_size

    def validate(self, step: int, reporter: Reporter) -> None:
        """Validation Dice into ``history.csv`` and the reporter; a new best is saved as ``model.pt``."""
        val_dice = (validation_dice(self.model, self._validation_set(), self.device, self.arch.normalization)
                    if self.validates else float("nan"))
        mean_loss = float(np.mean(self.window)) if self.window else float("nan")
        self.history.append({"step": step, "samples": step * self.section.batch_size, "loss": f"{mean_loss:.6g}",
                             "val_dice": f"{val_dice:.6g}", "lr": f"{self.schedule.get_last_lr()[0]:.6g}",
                             "seconds": f"{time.monotonic() - self.started:.1f}"})
        self.window = []
        _write_history(self.out / HISTORY_NAME, self.history)
        if self.validates:
            reporter.log_metrics({"val_dice": val_dice}, step=step)
            if val_dice > self.best_dice:
                self.best_dice, self.best_step = val_dice, step
                self._save_model(step, val_dice)
        log.info("%s: step %d/%d loss %.4f val Dice %.4f", self.name, step, self.steps, mean_loss, val_dice)

    def state_dict(self, step: int) -> dict[str, Any]:
        """The training state at `step` (what SIGTERM saves): weights, optimiser, schedule,
        sampler position, validation history and best so far."""
        return {**self._base, "state_dict": self.model.state_dict(), "optimizer": self.optimiser.state_dict(),
                "schedule": self.schedule.state_dict(), "sampler": self.sampler.state_dict(), "step": step,
                "history": list(self.history), "best_val_dice": self._best(), "best_step": self.best_step}

    def _validation_set(self) -> Iterable[np.ndarray]:
        if self.selected_on == SELECTED_ON_SYNTHETIC_HOLDOUT:
            return self.sampler.holdout_batches(self.cfg.evaluation.batch_size)
        return validation_batches(self.real_store, self.cfg.evaluation.batch_size)

    def _save_model(self, step: int, val_dice: float | None) -> None:
        atomic_torch_save(self.checkpoint_path, {**self._base, "state_dict": self.model.state_dict(),
                                                 "best_val_dice": val_dice, "step": step})

    def _best(self) -> float | None:
        return self.best_dice if self.validates and math.isfinite(self.best_dice) else None

    # --- the run ----------------------------------------------------------------------

    def fit(self, reporter: Reporter | None = None) -> SegmenterTrainResult:
        """Train, keep the best (or, without validation, the last) weights and report the run.

        Args:
            reporter: Where metrics, progress, tags and ``history.csv`` go (the stage's
                context); default :class:`~synthmri.training.NullReporter`.

        Raises:
            TrainingInterrupted: SIGTERM arrived; the training state was saved first.
            RuntimeError: The loss became NaN or infinite (diverged).
        """
        reporter = reporter if reporter is not None else NullReporter()
        self.run_id = reporter.run_id or ""
        self.started = time.monotonic()
        self.model.train()
        outcome = train(self, self.cadence, reporter, checkpoint=self.out / STATE_NAME)
        if outcome.stopped:
            raise TrainingInterrupted(self._result(stopped_at=outcome.step))
        if not self.validates:
            self._save_model(self.steps, None)
            self.best_step = self.steps
        result = self._result()
        reporter.log_metrics({"best_val_dice": result.best_val_dice,
                              "samples_per_second": self.total / max(self.step_seconds, 1e-9)})
        reporter.set_tags({"synthmri.checkpoint": str(self.checkpoint_path.resolve()),
                           "synthmri.best_step": str(self.best_step)})
        reporter.log_artifact(self.out / HISTORY_NAME)
        return result

    def _result(self, stopped_at: int | None = None) -> SegmenterTrainResult:
        return SegmenterTrainResult(
            out=self.out, checkpoint=self.checkpoint_path, name=self.name, arch=self.arch.name, train=self.train,
            real_share=self.real_share, augment=self.augment, seed=self.seed, steps=self.steps, samples=self.total,
            best_val_dice=self._best(), best_step=self.best_step, seconds=time.monotonic() - self.started,
            step_seconds=self.step_seconds, run_id=self.run_id, selected_on=self.selected_on, stopped_at=stopped_at)


def train_segmenter(train: str, real: Path | None, synthetic: Sequence[Path], out: Path, cfg: Config,
                    name: str | None = None, real_share: float | None = None, repeat: int = 0,
                    reporter: Reporter | None = None) -> SegmenterTrainResult:
    """Train one segmenter without a stage around it (no MLflow run, no ``completion.json``).

    ``synthmri train-segmenter`` (:mod:`synthmri.stages.train_segmenter`) adds tracking,
    repeats and the finished-run record; the arguments are :class:`SegmenterTraining`'s.

    Raises:
        TrainingInterrupted: SIGTERM arrived; the training state was saved first.
    """
    training = SegmenterTraining(train, real, synthetic, out, cfg, name=name, real_share=real_share, repeat=repeat)
    return training.fit(reporter)


__all__ = ["GRAD_CLIP", "HISTORY_COLUMNS", "HISTORY_NAME", "MODEL_NAME", "REPEAT_GLOB",
           "SELECTED_ON_NOTHING", "SELECTED_ON_REAL_VAL", "SELECTED_ON_SYNTHETIC_HOLDOUT", "STATE_NAME",
           "SegmenterTrainResult", "SegmenterTraining", "TrainingInterrupted", "device", "generator_names",
           "generator_versions", "open_stores", "run_name", "save_checkpoint", "train_segmenter",
           "validation_dice"]
