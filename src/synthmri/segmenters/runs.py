"""What names and records a segmenter run: its name, its generators, its stores and its result.

Shared by the training loop (:mod:`synthmri.segmenters.train`) and the ``train-segmenter``
stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from synthmri.data.store import SliceStore

STATE_NAME = "checkpoint.pt"  # the training state SIGTERM saves
#: What chose a run's checkpoint (``SegmenterTrainResult.selected_on``, tag ``synthmri.selected_on``).
SELECTED_ON_REAL_VAL, SELECTED_ON_SYNTHETIC_HOLDOUT, SELECTED_ON_NOTHING = "real-val", "synthetic-holdout", "last"


@dataclass(frozen=True)
class SegmenterTrainResult:
    """What a segmenter's training run produced.

    Attributes:
        out: The run's directory.
        checkpoint: ``model.pt``, the selected weights.
        name: The run name.
        arch: The architecture.
        train: The training source (``real``, ``synthetic``, ``mixed``, ``ratio``).
        real_share: ``ratio`` only: the share of real slices in the pool.
        augment: Whether training augmented.
        seed: The run's seed.
        steps: Optimiser steps of the whole run.
        samples: Training samples of the whole run.
        best_val_dice: The selected checkpoint's validation Dice; None without validation.
        best_step: The selected checkpoint's step.
        seconds: The whole run: training steps, validations, checkpoints.
        step_seconds: The training steps alone (sampling, augmentation, forward, backward).
        run_id: MLflow run id ("" when not tracked).
        selected_on: ``real-val``, ``synthetic-holdout`` or ``last`` (no validation).
        stopped_at: The step SIGTERM stopped training after; None for a finished run.
    """

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
    seconds: float
    step_seconds: float
    run_id: str
    selected_on: str = SELECTED_ON_REAL_VAL
    stopped_at: int | None = None

    def summary(self) -> str:
        """One line for the command line."""
        best = ("no validation" if self.best_val_dice is None
                else f"best val Dice {self.best_val_dice:.4f} at step {self.best_step} (on {self.selected_on})")
        if self.stopped_at is not None:
            return (f"{self.name}: stopped by SIGTERM after step {self.stopped_at}/{self.steps}, {best}; "
                    f"training state {self.out / STATE_NAME}")
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


def generator_versions(stores: Sequence[SliceStore]) -> list[str]:
    """Each synthetic store's registered generator version from its manifest ('' if unknown)."""
    return [str((store.manifest.get("generator") or {}).get("version") or "") for store in stores]


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


def open_stores(train: str, real: Path | None, synthetic: Sequence[Path]) -> tuple[SliceStore | None, list[SliceStore]]:
    """The stores a `train` run reads: a synthetic-only run never opens the real store, a real one no synthetic."""
    real_store = SliceStore(real) if real is not None and train != "synthetic" else None
    synthetic_stores = [SliceStore(p) for p in synthetic] if train != "real" else []
    return real_store, synthetic_stores

