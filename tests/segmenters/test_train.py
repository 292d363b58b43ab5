"""CPU training smoke on the phantom store: validation Dice rises, checkpoint, history, MLflow."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import mlflow
import pytest
import torch

from synthmri.data.store import SliceStore
from synthmri.segmenters.evaluate import evaluate_segmenter
from synthmri.segmenters.train import HISTORY_COLUMNS, train_segmenter

from . import write_blob_store

CHECKPOINT_KEYS = {"arch", "model_args", "state_dict", "config", "train", "synthetic", "seed", "best_val_dice", "step"}


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one thread: on 2 shared cores a busy neighbour stalls torch's two-thread
    kernels many times over (measured 16x at 32x32), and tiny convolutions gain little from two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(cfg, train_samples: int, val_every: int, augment: bool = True):
    unet = replace(cfg.segmenter.unet, train_samples=train_samples, val_every_samples=val_every, batch_size=16)
    return replace(cfg, segmenter=replace(cfg.segmenter, unet=unet, augment=augment))


def test_training_raises_validation_dice_and_records_everything(phantom_store, tiny_config, mlflow_uri, tmp_path):
    cfg = _config(tiny_config, train_samples=640, val_every=160, augment=False)
    result = train_segmenter("real", phantom_store, [], tmp_path / "real", cfg)

    with open(tmp_path / "real" / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert tuple(history[0]) == HISTORY_COLUMNS
    assert [int(r["step"]) for r in history] == [0, 10, 20, 30, 40]
    dice = [float(r["val_dice"]) for r in history]
    assert max(dice[1:]) > dice[0], f"validation Dice never rose above its initial value: {dice}"
    assert result.best_val_dice == pytest.approx(max(dice), abs=1e-5) and result.steps == 40
    assert "best val Dice" in result.summary()

    checkpoint = torch.load(result.checkpoint, weights_only=True)
    assert CHECKPOINT_KEYS <= set(checkpoint)
    assert checkpoint["train"] == "real" and checkpoint["synthetic"] == [] and checkpoint["seed"] == cfg.seed
    assert checkpoint["step"] == result.best_step and checkpoint["best_val_dice"] == result.best_val_dice
    assert checkpoint["config"]["segmenter"]["augment"] is False

    runs = mlflow.search_runs(experiment_names=["synthmri-segmenters"], output_format="list")
    assert [r.info.run_name for r in runs] == ["unet-real-orig-s0"]
    run = runs[0]
    assert run.data.tags["synthmri.train"] == "real"
    assert run.data.tags["synthmri.data.real"] == SliceStore(phantom_store).content_hash
    assert {"loss", "lr", "val_dice", "best_val_dice"} <= set(run.data.metrics)

    # The trained model scores in 3D better than nothing on at least the largest label.
    summary = evaluate_segmenter(tmp_path / "real", phantom_store, tmp_path / "eval", cfg).summary
    assert json.loads((tmp_path / "eval" / "summary.json").read_text()) == summary
    assert summary["model"]["name"] == "unet-real-orig-s0" and summary["dice"]["ED"] > 0.05

    # Mixed and synthetic-only runs record their generators; without a real store there
    # is no validation and the last weights are kept.
    synthetic = write_blob_store(tmp_path / "syn", {"train": 2}, size=cfg.data.size, depth=6, generator="ddpm")
    short = _config(tiny_config, train_samples=32, val_every=32)
    mixed = train_segmenter("mixed", phantom_store, [synthetic], tmp_path / "mixed", short)
    assert mixed.name == "unet-mixed-aug-s0" and mixed.best_val_dice is not None
    assert torch.load(mixed.checkpoint, weights_only=True)["synthetic"] == ["ddpm"]
    alone = train_segmenter("synthetic", None, [synthetic], tmp_path / "alone", short, name="syn-only")
    assert alone.best_val_dice is None and alone.best_step == 2
    assert torch.load(alone.checkpoint, weights_only=True)["step"] == 2
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["synthmri-segmenters"], output_format="list")}
    assert set(runs) == {"unet-real-orig-s0", "unet-mixed-aug-s0", "syn-only"}
    assert runs["unet-mixed-aug-s0"].data.tags["synthmri.synthetic"] == "ddpm"
    assert "synthmri.data.synthetic-0" in runs["syn-only"].data.tags


def test_training_rejects_a_budget_below_one_batch(phantom_store, tiny_config, tmp_path):
    from synthmri.config import ConfigError

    with pytest.raises(ConfigError, match="train_samples \\(8\\) is less than one batch"):
        train_segmenter("real", phantom_store, [], tmp_path, _config(tiny_config, train_samples=8, val_every=8))
