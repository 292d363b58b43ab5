"""evaluate_synthetic on small handmade stores: CSVs, summary.json, histogram, MLflow run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from synthmri.data.splits import GENERATOR_TRAIN_SPLITS
from synthmri.data.store import SliceRow, SliceStore, StoreError, StoreWriter
from synthmri.stages.evaluate_synthetic import run as evaluate_synthetic

SIZE = 16
COPIED = {0: 3, 5: 10, 7: 19}  # synthetic position -> position among the real train slices


@pytest.fixture
def registry(mlflow_uri: str, monkeypatch: pytest.MonkeyPatch):
    """mlflow_uri plus the registry: tracking.configure -> mlflow.set_registry_uri exports
    MLFLOW_REGISTRY_URI, which must not outlive this test's database."""
    import mlflow

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_uri)
    yield mlflow_uri
    mlflow.set_registry_uri(None)


def random_slices(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 5, SIZE, SIZE), dtype=np.uint8)


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(3)
    real = random_slices(rng, 40)
    splits = ["test" if i % 4 == 0 else ("val" if i % 4 == 1 else "train") for i in range(len(real))]
    rows = [SliceRow(f"real-{i:03d}", f"subj{i // 4}", i % 4, split) for i, split in enumerate(splits)]
    with StoreWriter(tmp_path / "real", image_size=SIZE, source={"path": "handmade"}, shard_size=16) as writer:
        writer.add(real, rows)
    train = real[[i for i, s in enumerate(splits) if s == "train"]]
    synthetic = random_slices(rng, 12)
    for syn_pos, train_pos in COPIED.items():
        synthetic[syn_pos] = train[train_pos]
    syn_rows = [SliceRow(f"syn-{i:03d}", "ddpm", -1, "train") for i in range(len(synthetic))]
    with StoreWriter(tmp_path / "syn", image_size=SIZE, source={"path": "models:/synthmri-ddpm/1"}, shard_size=5,
                     generator={"name": "ddpm", "version": "1"}) as writer:
        writer.add(synthetic, syn_rows)
    train_ids = np.asarray([r.slice_id for r in rows if r.split == "train"])
    return tmp_path / "real", tmp_path / "syn", train_ids


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_synthetic_outputs(stores, tmp_path, tiny_config, registry):
    real, syn, train_ids = stores
    out = tmp_path / "mem"
    flat = evaluate_synthetic(real, syn, out, tiny_config)

    rows = read_csv(out / "memorization.csv")
    assert list(rows[0]) == ["slice_id", "max_corr", "train_slice_id"]
    assert [r["slice_id"] for r in rows] == [f"syn-{i:03d}" for i in range(12)]
    for syn_pos, train_pos in COPIED.items():
        assert float(rows[syn_pos]["max_corr"]) == pytest.approx(1.0, abs=1e-5)
        assert rows[syn_pos]["train_slice_id"] == train_ids[train_pos]
    others = [float(r["max_corr"]) for i, r in enumerate(rows) if i not in COPIED]
    assert max(others) < 0.5  # independent noise images
    baseline = read_csv(out / "memorization_baseline.csv")
    assert [r["slice_id"] for r in baseline] == [f"real-{i:03d}" for i in range(0, 40, 4)]
    real_store = SliceStore(real)  # the reference: every slice the generator trained on (train and val)
    reference_ids = set(real_store.slice_id[real_store.indices(GENERATOR_TRAIN_SPLITS)].tolist())
    assert all(r["train_slice_id"] in reference_ids for r in baseline)
    assert json.loads((out / "summary.json").read_text())["train_slices"] == len(reference_ids) == 30

    summary = json.loads((out / "summary.json").read_text())
    threshold = tiny_config.memorization.threshold
    assert summary["threshold"] == threshold
    assert summary["generator"] == {"name": "ddpm", "version": "1"}
    assert len(summary["real_hash"]) == 64 and len(summary["synthetic_hash"]) == 64
    corr = np.asarray([float(r["max_corr"]) for r in rows])
    assert summary["synthetic"]["n"] == 12 and summary["baseline"]["n"] == 10
    assert summary["synthetic"]["share_above_threshold"] == pytest.approx(3 / 12)
    assert summary["baseline"]["share_above_threshold"] == 0.0
    assert summary["synthetic"]["mean"] == pytest.approx(corr.mean(), abs=1e-7)
    assert summary["synthetic"]["p99"] == pytest.approx(np.percentile(corr, 99), abs=1e-7)
    assert set(summary["synthetic"]) == {"mean", "median", "p99", "max", "share_above_threshold", "n"}
    assert summary["nearest"][0]["max_corr"] == pytest.approx(1.0, abs=1e-5)
    assert (out / "memorization_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert flat["synthetic_share_above_threshold"] == pytest.approx(0.25)
    assert flat["baseline_n"] == 10 and flat["threshold"] == threshold
    assert all(isinstance(v, (int, float)) for v in flat.values())

    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.run_name == "ddpm-memorization"
    assert run.data.metrics["memorization_share_above"] == pytest.approx(0.25)
    assert "baseline_p99" in run.data.metrics and "memorization_p99" in run.data.metrics
    assert run.data.tags["synthmri.data.synthetic"] == summary["synthetic_hash"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"memorization.csv", "memorization_baseline.csv", "memorization_hist.png", "memorization_pairs.png"} <= artifacts

    # No Inception weights and no segmenter: both metric families say they were skipped, and why.
    assert summary["quality"]["inception"]["status"] == "skipped"
    assert summary["quality"]["inception"]["input"] == "t1ce_gray"  # the Table 2 mode by default
    assert "quality.inception_weights" in summary["quality"]["inception"]["reason"]
    assert summary["quality"]["in_domain"]["status"] == "skipped"
    assert run.data.tags["synthmri.inception"] == "skipped" and "synthmri.inception.reason" in run.data.tags
    assert "fid" not in run.data.metrics and "fid" not in flat


def _untrained_unet(path: Path, cfg) -> Path:
    from synthmri.config import to_dict
    from synthmri.segmenters import get_architecture
    from synthmri.segmenters.train import save_checkpoint

    arch = get_architecture("nnunet")
    args = {**arch.model_args(arch.settings(cfg.segmenter)), "filters": [8, 16, 32], "deep_supervision_heads": 1}
    save_checkpoint(path / "model.pt", {"arch": "nnunet", "model_args": args, "state_dict": arch.build(**args).state_dict(),
                                        "config": to_dict(cfg), "train": "real", "synthetic": [], "seed": 0})
    return path


def test_in_domain_metrics_and_per_channel_scores(stores, tmp_path, tiny_config, registry):
    from dataclasses import replace

    from synthmri.metrics.distribution import frechet_distance

    real, syn, _ = stores
    cfg = replace(tiny_config, memorization=replace(tiny_config.memorization, per_channel=True),
                  quality=replace(tiny_config.quality, kid_subsets=5, kid_subset_size=8, pr_k=2))
    segmenter = _untrained_unet(tmp_path / "seg", cfg)
    flat = evaluate_synthetic(real, syn, tmp_path / "mem", cfg, segmenter=segmenter)
    summary = json.loads((tmp_path / "mem" / "summary.json").read_text())
    domain = summary["quality"]["in_domain"]
    assert domain["status"] == "computed" and domain["arch"] == "nnunet" and domain["feature_dim"] == 32
    # the real reference is the generator's training set: train + val (paper Table 2: the real training images)
    assert summary["quality"]["real_images"] == 30 and summary["quality"]["synthetic_images"] == 12
    assert np.isfinite(domain["frechet_distance"]) and domain["frechet_distance"] >= 0
    assert 0 <= domain["precision"] <= 1 and 0 <= domain["recall"] <= 1 and domain["k"] == 2
    assert flat["in_domain_fd"] == pytest.approx(domain["frechet_distance"])

    # The same number from the features computed here, independently of the stage.
    from synthmri.data.store import SliceStore
    from synthmri.segmenters.features import load_feature_network, segmenter_features

    model, arch = load_feature_network(segmenter)
    real_store, syn_store = SliceStore(real), SliceStore(syn)
    a = segmenter_features(model, arch, real_store.read(real_store.indices(("train", "val"))))
    b = segmenter_features(model, arch, syn_store.read(syn_store.indices()))
    assert domain["frechet_distance"] == pytest.approx(frechet_distance(a, b), rel=1e-6)

    rows = read_csv(tmp_path / "mem" / "memorization_per_channel.csv")
    assert list(rows[0]) == ["slice_id", "max_corr_t1", "max_corr_t1ce", "max_corr_t2", "max_corr_flair", "max_corr_seg"]
    for syn_pos in COPIED:  # a copy is a copy in every channel
        assert all(float(v) == pytest.approx(1.0, abs=1e-5) for k, v in rows[syn_pos].items() if k != "slice_id")


def test_store_without_test_split_is_refused(stores, tmp_path, tiny_config, registry):
    _, syn, _ = stores
    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "train_only", image_size=SIZE, source={}, shard_size=8) as writer:
        writer.add(random_slices(rng, 4), [SliceRow(f"r{i}", "s", i, "train") for i in range(4)])
    with pytest.raises(StoreError, match="'test' split"):
        evaluate_synthetic(tmp_path / "train_only", syn, tmp_path / "o", tiny_config)


def test_fid_and_is_with_weights_from_a_file(stores, tmp_path, tiny_config, registry):
    """Random Inception weights stand in for the real file: the wiring, not the values, is tested here."""
    from dataclasses import replace

    import torch

    from synthmri.metrics.inception import FIDInceptionV3

    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    real, syn, _ = stores
    cfg = replace(tiny_config, quality=replace(tiny_config.quality, inception_weights=str(weights), max_images=3,
                                               inception_input="channels", inception_images=3))
    flat = evaluate_synthetic(real, syn, tmp_path / "mem", cfg)
    inception = json.loads((tmp_path / "mem" / "summary.json").read_text())["quality"]["inception"]
    assert inception["status"] == "computed" and inception["channels"] == ["t1ce", "t2", "flair"]
    # how FID/IS were computed travels with them: the mode and the slices of each set
    assert inception["input"] == "channels" and inception["real_images"] == 3 and inception["synthetic_images"] == 3
    assert flat["inception_real_images"] == 3 and flat["inception_synthetic_images"] == 3
    import mlflow

    logged = mlflow.get_run(json.loads((tmp_path / "mem" / "summary.json").read_text())["mlflow_run_id"]).data
    assert logged.params["quality.inception_input"] == "channels" and logged.metrics["inception_synthetic_images"] == 3
    assert np.isfinite(inception["fid"]) and inception["fid"] >= -1e-6
    assert inception["is_mean"] >= 1.0 - 1e-9 and inception["is_splits"] == 3
    assert flat["fid"] == pytest.approx(inception["fid"]) and flat["inception_score"] == pytest.approx(inception["is_mean"])

    missing = replace(cfg, quality=replace(cfg.quality, inception_weights=str(tmp_path / "nowhere.pth")))
    with pytest.raises(ValueError, match="nowhere.pth"):
        evaluate_synthetic(real, syn, tmp_path / "mem2", missing)


def test_a_killed_rerun_leaves_the_old_output_whole(stores, tmp_path, tiny_config, registry, monkeypatch):
    import synthmri.metrics.evaluate_synthetic as module

    real, syn, _ = stores
    out = tmp_path / "mem"
    evaluate_synthetic(real, syn, out, tiny_config)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    record = json.loads(before["completion.json"])
    assert record["verb"] == "evaluate-synthetic" and record["generator"]["name"] == "ddpm"
    assert record["inputs"]["synthetic"]["content_hash"] == SliceStore(syn).content_hash
    assert record["inputs"]["real"]["content_hash"] == SliceStore(real).content_hash

    # Another store into the same folder, killed after it wrote its memorization.csv.
    other = tmp_path / "other"
    with StoreWriter(other, image_size=SIZE, source={"path": "x"}, shard_size=5, generator={"name": "ddpm"}) as writer:
        writer.add(random_slices(np.random.default_rng(9), 6), [SliceRow(f"o-{i}", "ddpm", -1, "train") for i in range(6)])
    write_csv = module.write_memorization_csv

    def killed_after_one_file(path, *args):
        write_csv(path, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "write_memorization_csv", killed_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        evaluate_synthetic(real, other, out, tiny_config)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mem")] == []


def test_never_writes_over_another_kind_of_output(stores, tmp_path, tiny_config, registry):
    from synthmri.records import OutputError

    real, syn, _ = stores
    with pytest.raises(OutputError, match="holds a synthetic slice store of generator 'ddpm'; evaluate-synthetic "
                                          "will not write over it"):
        evaluate_synthetic(real, syn, syn, tiny_config)
    assert SliceStore(syn).content_hash  # still whole
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds files that synthmri did not write"):
        evaluate_synthetic(real, syn, mine, tiny_config)
    evaluate_synthetic(real, syn, mine, tiny_config, overwrite=True)
    assert not (mine / "notes.txt").exists() and (mine / "completion.json").is_file()


def test_sigterm_marks_the_run_killed_and_leaves_no_partial_output(stores, tmp_path, registry, monkeypatch):
    import os
    import signal

    import mlflow

    import synthmri.metrics.evaluate_synthetic as module
    from synthmri.cli import main

    real, syn, _ = stores
    write_csv = module.write_memorization_csv

    def terminated_while_writing(path, *args):
        write_csv(path, *args)
        os.kill(os.getpid(), signal.SIGTERM)  # as Kubernetes stops a pod

    monkeypatch.setattr(module, "write_memorization_csv", terminated_while_writing)
    profile = Path(__file__).resolve().parents[1] / "profiles" / "tiny.yaml"
    status = main(["evaluate-synthetic", "--profile", str(profile), "--real", str(real), "--synthetic", str(syn),
                   "--out", str(tmp_path / "mem"), "--set", f"tracking.tracking_uri={registry}"])
    assert status == 143
    assert not (tmp_path / "mem").exists() and not (tmp_path / ".mem.partial").exists()
    (run,) = mlflow.search_runs(experiment_names=["synthmri-evaluation"], output_format="list")
    assert run.info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI put the handler back
