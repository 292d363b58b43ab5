"""The report from handcrafted evaluation summaries: tables equal the inputs' statistics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from synthmri.data.store import SliceRow, StoreWriter
from synthmri.report import aggregate, load_evaluation, overlay, write_report

LABELS = ("ET", "ED", "NCR")
# (train, augment, synthetic stores) -> per repeat: Dice ET, ED, NCR and HD ET, ED, NCR
RUNS = {
    ("real", True, ()): [(0.81, 0.72, 0.63, 5.5, 9.25, 7.0), (0.79, 0.74, 0.61, 6.5, 8.75, 7.5)],
    ("real", False, ()): [(0.75, 0.70, 0.55, 8.0, 10.0, 9.0), (0.71, 0.66, 0.57, 9.0, 11.5, 8.0)],
    ("synthetic", True, ("synthetic/ddpm",)): [(0.61, 0.52, 0.43, 12.0, 15.0, 13.0), (0.55, 0.58, 0.41, 14.5, 13.0, 12.0)],
    ("mixed", True, ("synthetic/ddpm",)): [(0.83, 0.73, 0.64, 5.0, 9.0, 6.5), (0.80, 0.75, 0.66, 5.5, 8.0, 7.0)],
}


@pytest.fixture
def registry(mlflow_uri: str, monkeypatch: pytest.MonkeyPatch):
    """mlflow_uri plus the registry: tracking.configure exports MLFLOW_REGISTRY_URI, which must
    not outlive this test's database."""
    import mlflow

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_uri)
    yield mlflow_uri
    mlflow.set_registry_uri(None)


def write_evaluations(root: Path) -> list[Path]:
    paths = []
    for (train, augment, synthetic), repeats in RUNS.items():
        for seed, values in enumerate(repeats):
            directory = root / f"{train}-{'aug' if augment else 'orig'}-s{seed}"
            directory.mkdir(parents=True)
            dice, hd = dict(zip(LABELS, values[:3])), dict(zip(LABELS, values[3:]))
            (directory / "summary.json").write_text(json.dumps({
                "model": {"arch": "unet", "train": train, "augment": augment, "seed": seed,
                          "synthetic": list(synthetic), "name": directory.name},
                "data_hash": "d" * 64, "eval_slices": "filtered", "subjects": 2,
                "dice": dice, "hausdorff": hd, "mean_dice": float(np.mean(values[:3])),
            }))
            paths.append(directory)
    return paths


def write_store(path: Path, rng: np.random.Generator, generator: dict | None) -> None:
    slices = rng.integers(0, 256, (6, 5, 24, 24), dtype=np.uint8)
    slices[:, 4] = 0
    slices[:3, 4, 8:16, 8:16] = 102
    slices[:3, 4, 10:14, 10:14] = 204
    slices[:3, 4, 11:13, 11:13] = 51
    rows = [SliceRow(f"{path.name}-{i}", f"p{i % 2}", i, "test" if i % 2 else "train") for i in range(6)]
    with StoreWriter(path, image_size=24, source={"path": "handmade"}, shard_size=4, generator=generator) as writer:
        writer.add(slices, rows)


def write_memorization(directory: Path) -> None:
    directory.mkdir(parents=True)
    stats = {"mean": 0.41, "median": 0.4, "p99": 0.7, "max": 0.96, "share_above_threshold": 0.02, "n": 50}
    (directory / "summary.json").write_text(json.dumps({
        "synthetic": stats, "baseline": {**stats, "max": 0.8, "share_above_threshold": 0.0, "n": 10},
        "threshold": 0.95, "generator": {"name": "ddpm", "version": "1"},
        "nearest": [{"slice_id": "syn-1", "train_slice_id": "real-3", "max_corr": 0.96}]}))
    # No memorization_hist.png: the report must redraw the histogram from the CSVs.
    rng = np.random.default_rng(0)
    for name, n in (("memorization.csv", 50), ("memorization_baseline.csv", 10)):
        lines = ["slice_id,max_corr,train_slice_id"] + [f"s{i},{v:.8f},t{i}" for i, v in enumerate(rng.uniform(0.2, 0.96, n))]
        (directory / name).write_text("\n".join(lines) + "\n")


def md_table(markdown: str, first_header: str) -> list[list[str]]:
    """Rows (cells) of the first Markdown table whose header starts with `first_header`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_report_tables_equal_inputs(tmp_path, tiny_config, registry):
    evaluations = write_evaluations(tmp_path / "eval")
    rng = np.random.default_rng(1)
    write_store(tmp_path / "real", rng, None)
    write_store(tmp_path / "syn", rng, {"name": "ddpm", "version": "1"})
    write_memorization(tmp_path / "mem")
    decision = {"passed": False, "model": "synthmri-ddpm", "version": "1", "notes": [],
                "criteria": [{"name": "memorization", "value": 0.02, "threshold": 0.01, "comparison": "<=",
                              "passed": False, "explanation": "2.00% vs 0.00% of test slices"}]}
    (tmp_path / "decision.json").write_text(json.dumps(decision))

    path = write_report(tmp_path / "report", evaluations, tmp_path / "mem", tmp_path / "real",
                        [tmp_path / "syn"], tmp_path / "decision.json", tiny_config)
    assert path == tmp_path / "report" / "report.html" and path.is_file()
    page = path.read_text()
    assert page.count('src="data:image/png;base64,') == 2  # histogram + sample grid, embedded
    assert not re.search(r'<img[^>]+src="(?!data:)', page)  # nothing fetched from elsewhere
    assert "FAILED" in page and "2.00% vs 0.00%" in page
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "figures" / "samples.png").is_file()

    table = md_table(markdown, "arch")
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["segmentation"]
    assert [(r["train"], r["augment"]) for r in rows] == [("real", True), ("real", False), ("synthetic", True), ("mixed", True)]
    real_aug = np.mean([np.mean(v[:3]) for v in RUNS[("real", True, ())]])
    for row, cells, key in zip(rows, table, [("real", True, ()), ("real", False, ()),
                                              ("synthetic", True, ("synthetic/ddpm",)), ("mixed", True, ("synthetic/ddpm",))]):
        values = np.asarray(RUNS[key])
        assert row["n"] == 2 and cells[3] == "2"
        for j, label in enumerate(LABELS):
            mean, sd = values[:, j].mean(), values[:, j].std(ddof=1)
            assert row["dice"][label]["mean"] == pytest.approx(mean, abs=1e-12)
            assert row["dice"][label]["sd"] == pytest.approx(sd, abs=1e-12)
            assert cells[4 + j] == f"{mean:.4f} ± {sd:.4f}"
            hd_mean, hd_sd = values[:, 3 + j].mean(), values[:, 3 + j].std(ddof=1)
            assert row["hausdorff"][label]["mean"] == pytest.approx(hd_mean, abs=1e-12)
            assert cells[8 + j] == f"{hd_mean:.2f} ± {hd_sd:.2f}"
        mean_dice = values[:, :3].mean(axis=1)
        assert cells[7] == f"{mean_dice.mean():.4f} ± {mean_dice.std(ddof=1):.4f}"
        assert row["relative_dice"] == pytest.approx(mean_dice.mean() / real_aug, abs=1e-12)
        assert cells[11].startswith(f"{mean_dice.mean() / real_aug:.4f} (vs real-aug)")

    memo = md_table(markdown, "set")
    assert memo[0][:2] == ["synthetic", "0.4100"] and memo[1][-1] == "10"

    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("synthmri-pipeline")
    run = client.search_runs([experiment.experiment_id])[0]
    assert run.info.run_name == "report"
    assert {"report.html", "report.md"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_relative_dice_falls_back_to_real_without_aug(tmp_path):
    paths = [p for p in write_evaluations(tmp_path) if "real-aug" not in p.name]
    rows = aggregate([load_evaluation(p) for p in paths])
    synthetic = next(r for r in rows if r["train"] == "synthetic")
    real = np.mean([np.mean(v[:3]) for v in RUNS[("real", False, ())]])
    assert synthetic["relative_to"] == "real-orig"
    assert synthetic["relative_dice"] == pytest.approx(synthetic["mean_dice"]["mean"] / real)


def test_overlay_colours():
    image = np.full((2, 2), 100, dtype=np.uint8)
    annotation = np.array([[0, 51], [102, 204]], dtype=np.uint8)
    rgb = overlay(image, annotation)
    assert np.allclose(rgb[0, 0], 100 / 255)  # background stays grey
    assert rgb[0, 1].argmax() == 1 and rgb[1, 0].argmax() == 2 and rgb[1, 1].argmax() == 0  # green, blue, red


def test_missing_evaluation_is_named(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match="nowhere/summary.json"):
        write_report(tmp_path / "r", [tmp_path / "nowhere"], None, None, None, None, tiny_config)
