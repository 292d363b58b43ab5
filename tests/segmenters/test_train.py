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
from synthmri.segmenters.train import HISTORY_COLUMNS
from synthmri.stages.train_segmenter import run as train_segmenter

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
    nnunet = replace(cfg.segmenter.nnunet, train_samples=train_samples, val_every_samples=val_every, batch_size=16)
    return replace(cfg, segmenter=replace(cfg.segmenter, nnunet=nnunet, augment=augment))


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
    assert [r.info.run_name for r in runs] == ["nnunet-real-orig-r0"]
    run = runs[0]
    assert run.data.tags["synthmri.train"] == "real"
    assert run.data.tags["synthmri.data.real"] == SliceStore(phantom_store).content_hash
    assert {"loss", "lr", "val_dice", "best_val_dice"} <= set(run.data.metrics)

    # The trained model scores in 3D better than nothing on at least the largest label.
    summary = evaluate_segmenter(tmp_path / "real", phantom_store, tmp_path / "eval", cfg).summary
    assert json.loads((tmp_path / "eval" / "summary.json").read_text()) == summary
    assert summary["model"]["name"] == "nnunet-real-orig-r0" and summary["dice"]["ED"] > 0.05

    # Mixed and synthetic-only runs record their generators; a synthetic-only run selects
    # its checkpoint on a hold-out of its synthetic slices.
    synthetic = write_blob_store(tmp_path / "syn", {"train": 2}, size=cfg.data.size, depth=6, generator="ddpm")
    short = _config(tiny_config, train_samples=32, val_every=32)
    mixed = train_segmenter("mixed", phantom_store, [synthetic], tmp_path / "mixed", short)
    assert mixed.name == "ddpm-nnunet-mixed-aug-r0" and mixed.best_val_dice is not None
    assert torch.load(mixed.checkpoint, weights_only=True)["synthetic"] == ["ddpm"]
    alone = train_segmenter("synthetic", None, [synthetic], tmp_path / "alone", short, name="syn-only")
    assert alone.best_val_dice is not None and alone.selected_on == "synthetic-holdout"
    assert torch.load(alone.checkpoint, weights_only=True)["step"] == alone.best_step
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["synthmri-segmenters"], output_format="list")}
    assert set(runs) == {"nnunet-real-orig-r0", "ddpm-nnunet-mixed-aug-r0", "syn-only"}
    assert runs["ddpm-nnunet-mixed-aug-r0"].data.tags["synthmri.synthetic"] == "ddpm"
    assert runs["ddpm-nnunet-mixed-aug-r0"].data.tags["synthmri.generator"] == "ddpm"
    assert runs["nnunet-real-orig-r0"].data.tags["synthmri.generator"] == "real"
    assert "synthmri.data.synthetic-0" in runs["syn-only"].data.tags


def test_synthetic_only_training_never_reads_real_data(tiny_config, mlflow_uri, tmp_path):
    """The real store is unreadable: a synthetic-only run still trains, validates and selects,
    on its synthetic hold-out, and records that set as what chose the checkpoint."""
    unreadable = tmp_path / "real"
    (unreadable / "shards").mkdir(parents=True)
    (unreadable / "manifest.json").write_text("{ this is not a store")
    (unreadable / "index.csv").write_text("garbage")
    synthetic = write_blob_store(tmp_path / "syn", {"train": 3}, size=tiny_config.data.size, depth=8, generator="ddpm")
    cfg = _config(tiny_config, train_samples=64, val_every=32)
    result = train_segmenter("synthetic", unreadable, [synthetic], tmp_path / "out", cfg)
    assert result.selected_on == "synthetic-holdout" and result.best_val_dice is not None
    with open(tmp_path / "out" / "history.csv", newline="") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [0, 2, 4]
    checkpoint = torch.load(result.checkpoint, weights_only=True)
    assert checkpoint["selected_on"] == "synthetic-holdout" and checkpoint["best_val_dice"] == result.best_val_dice
    record = json.loads((tmp_path / "out" / "completion.json").read_text())
    assert record["result"]["selected_on"] == "synthetic-holdout" and record["inputs"]["real"] is None
    (run,) = mlflow.search_runs(experiment_names=["synthmri-segmenters"], output_format="list")
    assert run.data.tags["synthmri.selected_on"] == "synthetic-holdout"
    assert "synthmri.data.real" not in run.data.tags
    # Runs with real data still select on the real validation subjects.
    with pytest.raises(Exception, match="manifest.json"):
        train_segmenter("mixed", unreadable, [synthetic], tmp_path / "mixed", cfg)


def test_training_rejects_a_budget_below_one_batch(phantom_store, tiny_config, tmp_path):
    from synthmri.config import ConfigError

    with pytest.raises(ConfigError, match="train_samples \\(8\\) is less than one batch"):
        train_segmenter("real", phantom_store, [], tmp_path, _config(tiny_config, train_samples=8, val_every=8))


@pytest.fixture(scope="module")
def phantom_store_64(tmp_path_factory, tiny_config):
    """The phantom subjects sliced at 64 x 64: Swin's smallest input (side / 32 > 1 at its bottleneck)."""
    from synthmri.data.phantom import write_phantom_dataset
    from synthmri.data.prepare import prepare

    root = tmp_path_factory.mktemp("phantom64")
    cfg = replace(tiny_config, data=replace(tiny_config.data, size=64))
    write_phantom_dataset(root / "brats", cfg.phantom)
    prepare(root / "brats", root / "slices", cfg)
    return root / "slices", cfg


def test_swin_training_raises_validation_dice(phantom_store_64, mlflow_uri, tmp_path):
    store, cfg = phantom_store_64
    swin = replace(cfg.segmenter.swinunetr, feature_size=12, depths=(1, 1, 1, 1), window_size=4, batch_size=8,
                   train_samples=480, val_every_samples=160, lr=2e-3, warmup_steps=6)
    cfg = replace(cfg, segmenter=replace(cfg.segmenter, arch="swinunetr", augment=False, swinunetr=swin))
    result = train_segmenter("real", store, [], tmp_path / "swin", cfg)
    with open(tmp_path / "swin" / "history.csv", newline="") as handle:
        dice = [float(r["val_dice"]) for r in csv.DictReader(handle)]
    assert len(dice) == 4 and max(dice[1:]) > dice[0] + 0.05, f"validation Dice did not rise: {dice}"
    checkpoint = torch.load(result.checkpoint, weights_only=True)
    assert checkpoint["arch"] == "swinunetr" and result.name == "swinunetr-real-orig-r0"
    # The checkpoint rebuilds and scores in 3D.
    summary = evaluate_segmenter(tmp_path / "swin", store, tmp_path / "eval", cfg).summary
    assert summary["model"]["arch"] == "swinunetr" and 0.0 <= summary["mean_dice"] <= 1.0


def test_repeats_get_their_own_seeds_and_resume(phantom_store, tiny_config, mlflow_uri, tmp_path):
    from synthmri.stages.train_segmenter import run_repeats as train_repeats

    synthetic = write_blob_store(tmp_path / "syn", {"train": 4}, size=tiny_config.data.size, depth=6, generator="ddpm")
    cfg = _config(tiny_config, train_samples=32, val_every=32)
    cfg = replace(cfg, segmenter=replace(cfg.segmenter, ratio_total=20))
    results = train_repeats("ratio", phantom_store, [synthetic], tmp_path / "out", cfg, repeats=2, real_share=0.5)
    assert [r.seed for r in results] == [0, 1] and [r.out.name for r in results] == ["repeat-00", "repeat-01"]
    assert [r.name for r in results] == ["ddpm-nnunet-ratio50-aug-r0", "ddpm-nnunet-ratio50-aug-r1"]
    checkpoints = [torch.load(r.checkpoint, weights_only=True) for r in results]
    assert [c["seed"] for c in checkpoints] == [0, 1] and all(c["real_share"] == 0.5 for c in checkpoints)
    assert not torch.equal(*(c["state_dict"]["input_block.conv1.conv.weight"] for c in checkpoints))
    run = mlflow.get_run(results[0].run_id)
    assert run.data.params["train.pool_real"] == "10" and run.data.params["train.pool_synthetic"] == "10"

    # Run again: both repeats finished with this config and these inputs, so nothing trains.
    again = train_repeats("ratio", phantom_store, [synthetic], tmp_path / "out", cfg, repeats=2, real_share=0.5)
    assert [r.run_id for r in again] == [r.run_id for r in results]
    # A third repeat trains only the new seed; another share retrains all.
    three = train_repeats("ratio", phantom_store, [synthetic], tmp_path / "out", cfg, repeats=3, real_share=0.5)
    assert [r.run_id for r in three[:2]] == [r.run_id for r in results] and three[2].seed == 2
    other = train_repeats("ratio", phantom_store, [synthetic], tmp_path / "out", cfg, repeats=2, real_share=0.25)
    assert not {r.run_id for r in other} & {r.run_id for r in three}
    assert not (tmp_path / "out" / "repeat-02").exists()  # left by the 3-repeat run: removed
    # One repeat writes into out itself and clears the repeat folders, which evaluation would score.
    single = train_repeats("ratio", phantom_store, [synthetic], tmp_path / "out", cfg, repeats=1, real_share=0.25)
    assert single[0].out == tmp_path / "out" and not list((tmp_path / "out").glob("repeat-*"))


def test_sigterm_stops_the_run_with_its_state_saved_and_marks_it_killed(phantom_store, tiny_config, mlflow_uri,
                                                                        tmp_path, monkeypatch):
    import os
    import signal

    from synthmri.segmenters.train import SegmenterTraining
    from synthmri.training import TrainingInterrupted

    step = SegmenterTraining.train_step

    def step_then_sigterm(self, number):
        losses = step(self, number)
        if number == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return losses

    monkeypatch.setattr(SegmenterTraining, "train_step", step_then_sigterm)
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_segmenter("real", phantom_store, [], tmp_path / "out", _config(tiny_config, train_samples=96,
                                                                             val_every=32))
    result = interrupted.value.result
    assert result.stopped_at == 3 and torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)["step"] == 3
    assert not (tmp_path / "out" / "completion.json").exists()  # not finished: a repeat sweep trains it again
    assert mlflow.get_run(result.run_id).info.status == "KILLED"


def test_run_names_line_generators_up():
    from synthmri.segmenters.train import run_name

    assert run_name("unet", "synthetic", True, 3, ["stylegan2"]) == "stylegan2-unet-synthetic-aug-r3"
    assert run_name("swin", "mixed", False, 0, ["ddpm", "stylegan2"]) == "ddpm+stylegan2-swin-mixed-orig-r0"
    assert run_name("unet", "real", True, 1, ["ignored"]) == "unet-real-aug-r1"
    assert run_name("unet", "ratio", True, 0, ["ddpm"], real_share=0.4) == "ddpm-unet-ratio40-aug-r0"


def test_the_papers_networks_train_through_the_loop_with_their_recipes(phantom_store_64, mlflow_uri, tmp_path):
    """The authors' U-Net (z-scored, sample budget) and Swin-B UPerNet (raw 0-255 inputs, its
    own augmentation, epochs with the short batch dropped) run end to end at a small size."""
    store, cfg = phantom_store_64
    unet = replace(cfg.segmenter.unet, depth=3, base_filters=4, batch_size=8, train_samples=32, val_every_samples=16)
    swin = replace(cfg.segmenter.swin, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), window_size=4,
                   decode_channels=16, aux_channels=8, batch_size=8, epochs=1, warmup_steps=2, drop_path=0.0)
    cfg = replace(cfg, segmenter=replace(cfg.segmenter, unet=unet, swin=swin, augment=True))
    n_train = len(SliceStore(store).indices("train"))
    for arch, steps in (("unet", 4), ("swin", n_train // 8)):
        result = train_segmenter("real", store, [], tmp_path / arch, replace(cfg, segmenter=replace(cfg.segmenter, arch=arch)))
        assert result.arch == arch and result.steps == steps and result.selected_on == "real-val"
        assert result.best_val_dice is not None and 0.0 <= result.best_val_dice <= 1.0
        assert torch.load(result.checkpoint, weights_only=True)["arch"] == arch


def test_a_killed_retraining_never_passes_for_the_finished_run_it_overwrote(phantom_store, tiny_config, mlflow_uri,
                                                                             tmp_path, monkeypatch):
    from synthmri.segmenters.train import SegmenterTraining
    from synthmri.stages.train_segmenter import run_repeats as train_repeats

    cfg = _config(tiny_config, train_samples=32, val_every=32)
    (first,) = train_repeats("real", phantom_store, [], tmp_path / "out", cfg)
    fit = SegmenterTraining.fit

    def killed_after_writing_the_model(self, reporter=None):
        (self.out / "model.pt").write_bytes(b"the killed seed-1 run's weights")
        raise KeyboardInterrupt

    monkeypatch.setattr(SegmenterTraining, "fit", killed_after_writing_the_model)
    with pytest.raises(KeyboardInterrupt):
        train_repeats("real", phantom_store, [], tmp_path / "out", replace(cfg, seed=1))
    assert not (tmp_path / "out" / "completion.json").exists()
    # Seed 0 again: the old record went before anything was overwritten, so it trains again.
    monkeypatch.setattr(SegmenterTraining, "fit", fit)
    (again,) = train_repeats("real", phantom_store, [], tmp_path / "out", cfg)
    assert again.run_id != first.run_id
    assert torch.load(again.checkpoint, weights_only=True)["seed"] == 0


def test_a_run_killed_outright_is_marked_killed_by_the_next_attempt(phantom_store, tiny_config, mlflow_uri, tmp_path,
                                                                    monkeypatch):
    import os

    from synthmri.segmenters.train import SegmenterTraining
    from synthmri.stages.outputs import RUNNING_NAME

    cfg = _config(tiny_config, train_samples=32, val_every=32)
    fit, getpid = SegmenterTraining.fit, os.getpid

    def dies_without_cleanup(self, reporter=None):
        # As `kill -9` would: nothing of Python's unwinding (no finally, no context exit) runs.
        marker = json.loads((self.out / RUNNING_NAME).read_text())
        assert marker["pid"] == os.getpid() and len(marker["run_ids"]) == 1
        raise SystemExit(marker["run_ids"][0])

    monkeypatch.setattr(SegmenterTraining, "fit", dies_without_cleanup)
    monkeypatch.setattr("synthmri.stages.outputs.os.getpid", lambda: 2**22 + 7)  # a pid that no longer runs
    with pytest.raises(SystemExit) as died:
        train_segmenter("real", phantom_store, [], tmp_path / "out", cfg)
    run_id = str(died.value.code)
    # Undo what unwinding did, to leave the state a real kill -9 leaves: a RUNNING run and the marker.
    mlflow.MlflowClient().update_run(run_id, status="RUNNING")
    (tmp_path / "out" / RUNNING_NAME).write_text(json.dumps({"verb": "train-segmenter", "pid": 2**22 + 7,
                                                              "host": os.uname().nodename, "run_ids": [run_id]}))
    monkeypatch.setattr(SegmenterTraining, "fit", fit)
    monkeypatch.setattr("synthmri.stages.outputs.os.getpid", getpid)
    train_segmenter("real", phantom_store, [], tmp_path / "out", cfg)
    assert mlflow.get_run(run_id).info.status == "KILLED"
    assert not (tmp_path / "out" / RUNNING_NAME).exists()
