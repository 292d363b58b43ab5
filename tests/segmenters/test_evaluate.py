"""3D evaluation: restacking by z, voxel spacing, summary.json schema, MLflow run."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import mlflow
import numpy as np
import pytest

from synthmri.config import to_dict
from synthmri.data.store import SliceStore
from synthmri.segmenters import evaluate as evaluation
from synthmri.segmenters import get_architecture
from synthmri.segmenters.evaluate import evaluate_segmenter, load_segmenter, restack, slice_spacing
from synthmri.segmenters.train import save_checkpoint

from . import blob_volume, write_blob_store

SUMMARY_KEYS = {"model", "data_hash", "eval_slices", "subjects", "dice", "hausdorff", "mean_dice"}
MODEL_KEYS = {"arch", "train", "augment", "seed", "synthetic", "name"}


def test_restack_follows_the_index_z_not_file_order(tmp_path):
    splits, size, depth, seed = {"test": 3}, 16, 7, 4
    store = SliceStore(write_blob_store(tmp_path / "s", splits, size=size, depth=depth, seed=seed, shuffle_rows=True))
    rng = np.random.default_rng(seed)  # rebuild the volumes exactly as write_blob_store drew them
    expected = {f"S{i:03d}": blob_volume(rng, size, depth) for i in range(3)}
    for subject, volume in expected.items():
        positions = np.flatnonzero(store.subject == subject)
        assert not np.all(np.diff(store.z[positions]) > 0), "rows should be shuffled for this test"
        slices = store.read(positions)
        stacked, filled = restack(store.z[positions], slices[:, 4])
        assert filled == 0
        assert np.array_equal(stacked, volume[:, 4])


def test_restack_all_places_slices_at_their_z():
    slices = np.stack([np.full((2, 2), v, dtype=np.uint8) for v in (50, 20, 30)])
    z = np.array([5, 2, 3])
    volume, filled = restack(z, slices, "all", depth=8)
    assert volume.shape == (8, 2, 2) and filled == 5
    assert [int(volume[i, 0, 0]) for i in range(8)] == [0, 0, 20, 30, 0, 50, 0, 0]
    volume, filled = restack(z, slices, "all")  # depth unknown: largest z + 1
    assert volume.shape[0] == 6 and filled == 3
    filtered, _ = restack(z, slices, "filtered")
    assert [int(v) for v in filtered[:, 0, 0]] == [20, 30, 50]
    with pytest.raises(ValueError, match="repeat z positions \\[2\\]"):
        restack(np.array([2, 2, 3]), slices)
    with pytest.raises(ValueError, match="do not fit a depth of 4"):
        restack(z, slices, "all", depth=4)


def test_slice_spacing_accounts_for_padding_and_resampling():
    spacing, note = slice_spacing({"spacing": [1.0, 1.0, 2.5], "pad_to": 256, "image_size": 64}, pad_to=999)
    assert spacing == pytest.approx((2.5, 4.0, 4.0)) and "256/64" in note
    spacing, _ = slice_spacing({"spacing": [2.0, 2.0, 2.0], "image_size": 64}, pad_to=128)
    assert spacing == pytest.approx((2.0, 4.0, 4.0))
    spacing, note = slice_spacing({"image_size": 64}, pad_to=128)
    assert spacing == (1.0, 1.0, 1.0) and "no voxel spacing" in note


def _untrained_checkpoint(path, cfg, name="unet-real-orig-s0"):
    arch = get_architecture("unet")
    args = arch.model_args(arch.settings(cfg.segmenter))
    model = arch.build(**args)
    save_checkpoint(path / "model.pt", {
        "arch": "unet", "model_args": args, "state_dict": model.state_dict(), "config": to_dict(cfg),
        "train": "real", "synthetic": [], "seed": cfg.seed, "name": name, "best_val_dice": 0.1, "step": 0,
    })
    return path


def test_evaluate_writes_the_summary_schema_and_an_mlflow_run(phantom_store, tiny_config, mlflow_uri, tmp_path,
                                                              monkeypatch):
    model = _untrained_checkpoint(tmp_path / "model", tiny_config)
    network, checkpoint = load_segmenter(model / "model.pt")
    assert checkpoint["train"] == "real" and not network.training

    result = evaluate_segmenter(model, phantom_store, tmp_path / "eval", tiny_config)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS and set(summary["model"]) == MODEL_KEYS
    assert summary["model"] == {"arch": "unet", "train": "real", "augment": tiny_config.segmenter.augment,
                                "seed": tiny_config.seed, "synthetic": [], "name": "unet-real-orig-s0"}
    store = SliceStore(phantom_store)
    assert summary["data_hash"] == store.content_hash and summary["eval_slices"] == "filtered"
    assert summary["subjects"] == len(store.subjects("test"))
    for label in ("ET", "ED", "NCR"):
        assert 0.0 <= summary["dice"][label] <= 1.0
        assert np.isfinite(summary["hausdorff"][label]) and summary["hausdorff"][label] >= 0
    assert summary["mean_dice"] == pytest.approx(np.mean(list(summary["dice"].values())))
    with open(tmp_path / "eval" / "per_subject.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * summary["subjects"] and set(rows[0]) == {"subject", "label", "dice", "hausdorff"}
    assert "summary.json" in result.describe() and "ET" in result.describe()

    runs = mlflow.search_runs(experiment_names=["synthmri-evaluation"], output_format="list")
    assert [r.info.run_name for r in runs] == ["unet-real-orig-s0-eval"]
    metrics = runs[0].data.metrics
    assert metrics["mean_dice"] == pytest.approx(summary["mean_dice"])
    assert {"dice_ET", "dice_ED", "dice_NCR", "hausdorff_ET", "hausdorff_ED", "hausdorff_NCR"} <= set(metrics)

    # An oracle that returns the reference: the volumes line up, so every score is perfect.
    def oracle(network, slices, batch_size, dev):
        return slices[:, 4].copy()

    monkeypatch.setattr(evaluation, "segment", oracle)
    cfg_all = replace(tiny_config, evaluation=replace(tiny_config.evaluation, eval_slices="all"))
    perfect = evaluate_segmenter(model, phantom_store, tmp_path / "oracle", cfg_all)
    assert perfect.summary["eval_slices"] == "all" and perfect.filled_slices > 0
    assert perfect.summary["dice"] == {"ET": 1.0, "ED": 1.0, "NCR": 1.0}
    assert perfect.summary["hausdorff"] == {"ET": 0.0, "ED": 0.0, "NCR": 0.0}


def test_evaluate_names_a_missing_checkpoint(phantom_store, tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing: segmenter checkpoint not found"):
        evaluate_segmenter(tmp_path / "nothing", phantom_store, tmp_path / "eval", tiny_config)
