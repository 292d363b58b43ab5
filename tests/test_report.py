"""The report from handcrafted evaluation summaries: tables equal the inputs' statistics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from synthmri.data.store import SliceRow, StoreWriter
from synthmri.report import aggregate, generator_ranking, load_evaluations, overlay, write_report

LABELS = ("ET", "ED", "NCR")
STRUCTURES = ("ET", "ED", "NCR", "WT", "TC")
# (train, augment, synthetic stores) -> per repeat: Dice ET, ED, NCR and HD ET, ED, NCR
RUNS = {
    ("real", True, ()): [(0.81, 0.72, 0.63, 5.5, 9.25, 7.0), (0.79, 0.74, 0.61, 6.5, 8.75, 7.5)],
    ("real", False, ()): [(0.75, 0.70, 0.55, 8.0, 10.0, 9.0), (0.71, 0.66, 0.57, 9.0, 11.5, 8.0)],
    ("synthetic", True, ("synthetic/ddpm",)): [(0.61, 0.52, 0.43, 12.0, 15.0, 13.0), (0.55, 0.58, 0.41, 14.5, 13.0, 12.0)],
    ("mixed", True, ("synthetic/ddpm",)): [(0.83, 0.73, 0.64, 5.0, 9.0, 6.5), (0.80, 0.75, 0.66, 5.5, 8.0, 7.0)],
}


def scores(values: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """Summary scores of one repeat: the labels as given, the regions and HD95 derived from them."""
    dice, hd = dict(zip(LABELS, values[:3])), dict(zip(LABELS, values[3:]))
    dice.update(WT=float(np.mean(values[:3])) + 0.1, TC=(dice["ET"] + dice["NCR"]) / 2)
    hd.update(WT=max(values[3:]), TC=hd["ET"] + 1.0)
    return {"dice": dice, "hausdorff": hd, "hausdorff95": {k: 0.8 * v for k, v in hd.items()}}


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
            (directory / "summary.json").write_text(json.dumps({
                "model": {"arch": "unet", "train": train, "augment": augment, "seed": seed,
                          "synthetic": list(synthetic), "name": directory.name, "real_share": None},
                "data_hash": "d" * 64, "eval_slices": "filtered", "subjects": 2, **scores(values),
                "mean_dice": float(np.mean(values[:3])), "repeats": 1, "runs": [],
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


def md_table(markdown: str, header_start: str) -> list[list[str]]:
    """Rows (cells) of the first Markdown table whose header line starts with `header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
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

    table = md_table(markdown, "arch | training | setting | n |")
    hd_table = md_table(markdown, "arch | training | setting | HD ET |")
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["segmentation"]
    assert [(r["train"], r["augment"]) for r in rows] == [("real", True), ("real", False), ("synthetic", True), ("mixed", True)]
    real_aug = np.mean([np.mean(v[:3]) for v in RUNS[("real", True, ())]])
    for row, cells, hd_cells, key in zip(rows, table, hd_table, [("real", True, ()), ("real", False, ()),
                                         ("synthetic", True, ("synthetic/ddpm",)), ("mixed", True, ("synthetic/ddpm",))]):
        repeats = [scores(v) for v in RUNS[key]]
        assert row["n"] == 2 and cells[3] == "2"
        for j, name in enumerate(STRUCTURES):
            for score in ("dice", "hausdorff", "hausdorff95"):
                values = np.array([r[score][name] for r in repeats])
                assert row[score][name]["mean"] == pytest.approx(values.mean(), abs=1e-12)
                assert row[score][name]["sd"] == pytest.approx(values.std(ddof=1), abs=1e-12)
            dice = np.array([r["dice"][name] for r in repeats])
            assert cells[4 + j] == f"{dice.mean():.4f} ± {dice.std(ddof=1):.4f}"
            hd = np.array([r["hausdorff"][name] for r in repeats])
            hd95 = np.array([r["hausdorff95"][name] for r in repeats])
            assert hd_cells[3 + j] == f"{hd.mean():.2f} ± {hd.std(ddof=1):.2f}"
            assert hd_cells[8 + j] == f"{hd95.mean():.2f} ± {hd95.std(ddof=1):.2f}"
        mean_dice = np.asarray(RUNS[key])[:, :3].mean(axis=1)
        assert cells[9] == f"{mean_dice.mean():.4f} ± {mean_dice.std(ddof=1):.4f}"
        assert row["relative_dice"] == pytest.approx(mean_dice.mean() / real_aug, abs=1e-12)
        assert cells[10].startswith(f"{mean_dice.mean() / real_aug:.4f} (vs real-aug)")

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
    rows = aggregate([ev for p in paths for ev in load_evaluations(p)])
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


def _summary(train, synthetic, seed, mean_dice, real_share=None, augment=True):
    values = (mean_dice, mean_dice, mean_dice, 5.0, 5.0, 5.0)
    return {"model": {"arch": "unet", "train": train, "augment": augment, "seed": seed, "synthetic": synthetic,
                      "name": f"{train}-{seed}", "real_share": real_share},
            "data_hash": "d", "eval_slices": "filtered", "subjects": 2, **scores(values), "mean_dice": mean_dice,
            "repeats": 1, "runs": []}


def test_repeat_aggregates_are_read_repeat_by_repeat(tmp_path):
    root = tmp_path / "eval"
    for seed, dice in enumerate((0.5, 0.7)):
        (root / f"repeat-{seed:02d}").mkdir(parents=True)
        (root / f"repeat-{seed:02d}" / "summary.json").write_text(json.dumps(_summary("real", [], seed, dice)))
    aggregate_summary = {**_summary("real", [], 0, 0.6), "repeats": 2,
                         "runs": ["repeat-00/summary.json", "repeat-01/summary.json"]}
    (root / "summary.json").write_text(json.dumps(aggregate_summary))
    evaluations = load_evaluations(root)
    assert [e["mean_dice"] for e in evaluations] == [0.5, 0.7]
    row = aggregate(evaluations)[0]
    assert row["n"] == 2 and row["mean_dice"]["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_generators_are_ranked_and_the_ratio_sweep_tabled(tmp_path, tiny_config, registry):
    summaries = [_summary("real", [], s, 0.8) for s in range(2)]
    summaries += [_summary("synthetic", ["data/synthetic-ddpm"], s, d) for s, d in enumerate((0.30, 0.34))]
    summaries += [_summary("synthetic", ["data/synthetic-stylegan2"], s, d) for s, d in enumerate((0.50, 0.46))]
    summaries += [_summary("synthetic", ["data/synthetic-ddpm", "data/synthetic-stylegan2"], 0, 0.55)]
    summaries += [_summary("ratio", ["data/synthetic-stylegan2"], 0, 0.5 + share / 4, real_share=share)
                  for share in (1.0, 0.0, 0.5)]
    paths = []
    for number, summary in enumerate(summaries):
        (tmp_path / f"e{number}").mkdir()
        (tmp_path / f"e{number}" / "summary.json").write_text(json.dumps(summary))
        paths.append(tmp_path / f"e{number}")
    rows = aggregate([ev for p in paths for ev in load_evaluations(p)])
    ranking = generator_ranking(rows)  # ensembles are not ranked: they are not one generator
    assert [(r["rank"], r["generator"]) for r in ranking] == [(1, "synthetic-stylegan2"), (2, "synthetic-ddpm")]
    assert ranking[0]["mean_dice"]["mean"] == pytest.approx(0.48)
    assert ranking[0]["relative_dice"] == pytest.approx(0.48 / 0.8)

    write_report(tmp_path / "report", paths, None, None, None, None, tiny_config)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert [r[2:4] for r in md_table(markdown, "arch | setting | rank |")] == [
        ["1", "synthetic-stylegan2"], ["2", "synthetic-ddpm"]]
    sweep = md_table(markdown, "arch | setting | real share |")
    assert [r[2] for r in sweep] == ["0%", "50%", "100%"]
    assert [r[5].split(" ")[0] for r in sweep] == ["0.5000", "0.6250", "0.7500"]
    assert "synthetic (ensemble: synthetic-ddpm, synthetic-stylegan2)" in markdown
