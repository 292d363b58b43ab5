"""The report: its tables equal their inputs and the MLflow metrics of the runs they come from."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from synthmri.data.store import SliceRow, SliceStore, StoreWriter
from synthmri.report import (
    aggregate,
    competition_ranks,
    generator_ranking,
    generator_table,
    load_evaluations,
    overlay,
    write_report,
)
from synthmri.stages.report import run as run_report

LABELS = ("ET", "ED", "NCR")
STRUCTURES = ("ET", "ED", "NCR", "WT", "TC")
SCORES = ("dice", "hausdorff", "hausdorff95")
# (train, augment, synthetic stores) -> per repeat: Dice ET, ED, NCR and HD ET, ED, NCR
RUNS = {
    ("real", True, ()): [(0.81, 0.72, 0.63, 5.5, 9.25, 7.0), (0.79, 0.74, 0.61, 6.5, 8.75, 7.5)],
    ("real", False, ()): [(0.75, 0.70, 0.55, 8.0, 10.0, 9.0), (0.71, 0.66, 0.57, 9.0, 11.5, 8.0)],
    ("synthetic", True, ("synthetic/ddpm",)): [(0.61, 0.52, 0.43, 12.0, 15.0, 13.0), (0.55, 0.58, 0.41, 14.5, 13.0, 12.0)],
    ("mixed", True, ("synthetic/ddpm",)): [(0.83, 0.73, 0.64, 5.0, 9.0, 6.5), (0.80, 0.75, 0.66, 5.5, 8.0, 7.0)],
}
# Where each RUNS key lands: its row in the Dice and Hausdorff tables, in the paper's order (Orig and Aug,
# Orig, Aug, neither; real images only first).
TABLE_ROWS = {("real", True, ()): 0, ("mixed", True, ("synthetic/ddpm",)): 1, ("real", False, ()): 2,
              ("synthetic", True, ("synthetic/ddpm",)): 3}
# The column of each structure in those tables: Architecture, Model, Orig, Aug, n, ET, ED, NCR/NET, Mean, WT, TC.
COLUMNS = {"ET": 5, "ED": 6, "NCR": 7, "WT": 9, "TC": 10}
MEAN_COLUMN = 8
DICE_HEADER, HD_HEADER = "### Dice scores", "### Hausdorff distances"
# The cheap registered architecture the checkpoints of these tests are built with.
ARCH = "nnunet"


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


def write_evaluations(root: Path, arch: str = "unet", runs: dict | None = None) -> list[Path]:
    """One evaluate-segmenter summary.json per repeat of `runs` (default RUNS) under `root`."""
    paths = []
    for (train, augment, synthetic), repeats in (runs or RUNS).items():
        for seed, values in enumerate(repeats):
            directory = root / f"{arch}-{train}-{'aug' if augment else 'orig'}-s{seed}"
            directory.mkdir(parents=True)
            (directory / "summary.json").write_text(json.dumps({
                "model": {"arch": arch, "train": train, "augment": augment, "seed": seed,
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


def write_memorization(directory: Path, name: str = "ddpm", quality: dict | None = None) -> None:
    """A handmade evaluate-synthetic output without figures (the report redraws the histogram)."""
    directory.mkdir(parents=True)
    stats = {"mean": 0.41, "median": 0.4, "p99": 0.7, "max": 0.96, "share_above_threshold": 0.02, "n": 50}
    (directory / "summary.json").write_text(json.dumps({
        "synthetic": stats, "baseline": {**stats, "max": 0.8, "share_above_threshold": 0.0, "n": 10},
        "threshold": 0.95, "generator": {"name": name, "version": "1"}, "mlflow_run_id": f"run-{name}",
        "nearest": [{"slice_id": "syn-1", "train_slice_id": "real-3", "max_corr": 0.96}],
        **({"quality": quality} if quality else {})}))
    rng = np.random.default_rng(0)
    for file, n in (("memorization.csv", 50), ("memorization_baseline.csv", 10)):
        lines = ["slice_id,max_corr,train_slice_id"] + [f"s{i},{v:.8f},t{i}" for i, v in enumerate(rng.uniform(0.2, 0.96, n))]
        (directory / file).write_text("\n".join(lines) + "\n")


def quality(fid: float | None, is_mean: float | None, fd: float | None) -> dict:
    """The quality section of an evaluate-synthetic summary; None skips that feature space."""
    inception = ({"status": "computed", "fid": fid, "is_mean": is_mean, "is_sd": 0.125, "is_real_mean": 3.0}
                 if fid is not None else {"status": "skipped", "reason": "no weights"})
    in_domain = ({"status": "computed", "frechet_distance": fd, "kid": 0.01, "precision": 0.7, "recall": 0.6}
                 if fd is not None else {"status": "skipped", "reason": "no segmenter"})
    return {"inception": inception, "in_domain": in_domain}


def md_table(markdown: str, header_start: str, after: str | None = None) -> list[list[str]]:
    """Rows (cells) of the first Markdown table whose header starts with `header_start`, after the
    first line starting with `after` if given."""
    lines = markdown.splitlines()
    begin = 0 if after is None else next(i for i, line in enumerate(lines) if line.startswith(after))
    start = next(i for i in range(begin, len(lines)) if lines[i].startswith(f"| {header_start}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])])
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

    path = run_report(tmp_path / "report", evaluations, tmp_path / "mem", tmp_path / "real",
                      [tmp_path / "syn"], tmp_path / "decision.json", tiny_config)
    assert path == tmp_path / "report" / "report.html" and path.is_file()
    page = path.read_text()
    assert page.count('src="data:image/png;base64,') == 2  # Figure 1 (ddpm beside real) + histogram, embedded
    assert not re.search(r'<img[^>]+src="(?!data:)', page)  # nothing fetched from elsewhere
    assert "FAILED" in page and "2.00% vs 0.00%" in page
    assert "No U-Net evaluations with a prediction example" in page  # Figure 2 says why it is empty
    assert "No evaluations of the real-share experiment" in page  # and so does Figure 4
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "figures" / "samples-ddpm.png").is_file()

    hd95 = md_table(markdown, "arch | training | setting | HD95 ET |")
    relative = md_table(markdown, "Architecture | Model | Orig | Aug | n | Relative Dice |")
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["segmentation"]
    assert [(r["train"], r["augment"]) for r in rows] == [("real", True), ("real", False), ("synthetic", True), ("mixed", True)]
    real_aug = np.mean([np.mean(v[:3]) for v in RUNS[("real", True, ())]])
    for row, hd95_cells, key in zip(rows, hd95, [("real", True, ()), ("real", False, ()),
                                    ("synthetic", True, ("synthetic/ddpm",)), ("mixed", True, ("synthetic/ddpm",))]):
        index = TABLE_ROWS[key]
        cells = md_table(markdown, "Architecture | Model | Orig | Aug | n | ET |", after=DICE_HEADER)[index]
        hd_cells = md_table(markdown, "Architecture | Model | Orig | Aug | n | ET |", after=HD_HEADER)[index]
        assert cells[:4] == hd_cells[:4] == ["U-Net", "None" if key[0] == "real" else "Diffusion",
                                             "✓" if key[0] != "synthetic" else "", "✓" if key[1] else ""]
        repeats = [scores(v) for v in RUNS[key]]
        assert row["n"] == 2 and cells[4] == "2"
        for j, name in enumerate(STRUCTURES):
            for score in SCORES:
                values = np.array([r[score][name] for r in repeats])
                assert row[score][name]["mean"] == pytest.approx(values.mean(), abs=1e-12)
                assert row[score][name]["sd"] == pytest.approx(values.std(ddof=1), abs=1e-12)
            dice = np.array([r["dice"][name] for r in repeats])
            assert cells[COLUMNS[name]] == f"{dice.mean():.4f} ± {dice.std(ddof=1):.4f}"
            hd = np.array([r["hausdorff"][name] for r in repeats])
            hd95_values = np.array([r["hausdorff95"][name] for r in repeats])
            assert hd_cells[COLUMNS[name]] == f"{hd.mean():.2f} ± {hd.std(ddof=1):.2f}"
            assert hd95_cells[3 + j] == f"{hd95_values.mean():.2f} ± {hd95_values.std(ddof=1):.2f}"
        mean_dice = np.asarray(RUNS[key])[:, :3].mean(axis=1)
        assert cells[MEAN_COLUMN] == f"{mean_dice.mean():.4f} ± {mean_dice.std(ddof=1):.4f}"
        mean_hd = np.asarray(RUNS[key])[:, 3:].mean(axis=1)
        assert hd_cells[MEAN_COLUMN] == f"{mean_hd.mean():.2f} ± {mean_hd.std(ddof=1):.2f}"
        assert row["relative_dice"] == pytest.approx(mean_dice.mean() / real_aug, abs=1e-12)
    real_orig = np.mean([np.mean(v[:3]) for v in RUNS[("real", False, ())]])
    assert relative[0] == ["U-Net", "None", "✓", "✓", "2", "100.00%"]
    assert relative[2] == ["U-Net", "None", "✓", "", "2", f"{100 * real_orig / real_aug:.2f}%"]
    assert [r[1:4] for r in relative] == [["None", "✓", "✓"], ["Diffusion", "✓", "✓"], ["None", "✓", ""],
                                          ["Diffusion", "", "✓"]]
    # A handmade run records no dataset and the real store no layout: the paper's layout, no dataset claimed.
    assert "### Dice scores in the layout of Table 3/4" in markdown and "### Table 5: Relative Dice" in markdown
    assert "### Hausdorff distances (mm) in the layout of Table 6/7" in markdown
    assert "(paper)" not in markdown and "Metric convention: penalise" in markdown

    memo = md_table(markdown, "set")
    assert memo[0][:2] == ["synthetic", "0.4100"] and memo[1][-1] == "10"
    assert md_table(markdown, "generator | version | FID")[0][:3] == ["ddpm", "1", "–"]  # skipped: no quality

    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("synthmri-pipeline")
    run = client.search_runs([experiment.experiment_id])[0]
    assert run.info.run_name == "report"
    assert {"report.html", "report.md", "report.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


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


def _summary(train, synthetic, seed, mean_dice, real_share=None, augment=True, arch="unet", hd=5.0):
    values = (mean_dice, mean_dice, mean_dice, hd, hd, hd)
    return {"model": {"arch": arch, "train": train, "augment": augment, "seed": seed, "synthetic": synthetic,
                      "name": f"{arch}-{train}-{seed}", "real_share": real_share},
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


def test_generators_are_ranked_and_the_ratio_sweep_plotted(tmp_path, tiny_config, registry):
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
    assert [(r["rank"], r["generator"]) for r in ranking] == [(1, "stylegan2"), (2, "ddpm")]
    assert ranking[0]["mean_dice"]["mean"] == pytest.approx(0.48)
    assert ranking[0]["relative_dice"] == pytest.approx(0.48 / 0.8)

    write_report(tmp_path / "report", paths, None, None, None, None, tiny_config)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert [r[2:4] for r in md_table(markdown, "arch | setting | rank |")] == [["1", "stylegan2"], ["2", "ddpm"]]
    # Table 1 without evaluate-synthetic outputs: Dice and HD only (HD ties share rank 1).
    table1 = md_table(markdown, "generator | FID | rank |")
    assert [(r[0], r[7], r[8], r[10], r[11]) for r in table1] == [("stylegan2", "0.4800", "1", "1", "1.00"),
                                                                   ("ddpm", "0.3200", "2", "1", "1.50")]
    sweep = md_table(markdown, "arch | setting | real share |")
    assert [r[2] for r in sweep] == ["0%", "50%", "100%"]
    assert [r[5].split(" ")[0] for r in sweep] == ["0.5000", "0.6250", "0.7500"]
    assert "synthetic (ensemble: ddpm, stylegan2)" in markdown
    assert (tmp_path / "report" / "figures" / "ratio.png").read_bytes().startswith(b"\x89PNG")
    series = json.loads((tmp_path / "report" / "report.json").read_text())["ratio"]
    assert [(s["label"], s["real_share"], s["mean_dice"]) for s in series] == [
        ("U-Net aug, stylegan2", [0.0, 0.5, 1.0], [0.5, 0.625, 0.75])]


def test_table1_ranks_each_metric_in_its_direction():
    assert competition_ranks({"a": 2.0, "b": 1.0, "c": 2.0, "d": None}, lower_is_better=True) == {
        "a": 2, "b": 1, "c": 2, "d": None}
    assert competition_ranks({"a": 2.0, "b": 1.0, "c": float("nan")}, lower_is_better=False) == {
        "a": 1, "b": 2, "c": None}
    summaries = [_summary("synthetic", ["ddpm"], 0, 0.4, hd=9.0), _summary("synthetic", ["stylegan2"], 0, 0.6, hd=7.0),
                 _summary("synthetic", ["ddpm"], 0, 0.9, augment=False),  # other settings do not count
                 _summary("synthetic", ["stylegan2"], 0, 0.1, arch="swin")]
    rows = aggregate([{**s, "_path": f"e{i}/summary.json"} for i, s in enumerate(summaries)])
    memorization = [{**json.loads(json.dumps({"quality": quality(10.0, 2.0, 3.0)})), "_name": "ddpm",
                     "mlflow_run_id": "r1"},
                    {"quality": quality(20.0, 2.5, None), "_name": "stylegan2", "mlflow_run_id": "r2"},
                    {"quality": quality(None, None, 1.0), "_name": "progan", "mlflow_run_id": "r3"}]
    table, note = generator_table(rows, memorization)
    assert "U-Net with augmentation" in note
    by_name = {e["generator"]: e for e in table}
    assert by_name["ddpm"]["ranks"] == {"fid": 1, "is": 2, "fd": 2, "dice": 2, "hd": 2}
    assert by_name["stylegan2"]["ranks"] == {"fid": 2, "is": 1, "fd": None, "dice": 1, "hd": 1}
    assert by_name["progan"]["ranks"] == {"fid": None, "is": None, "fd": 1, "dice": None, "hd": None}
    assert by_name["ddpm"]["dice"] == pytest.approx(0.4) and by_name["stylegan2"]["hd"] == pytest.approx(7.0)
    assert [e["generator"] for e in table] == ["progan", "stylegan2", "ddpm"]  # mean ranks 1, 1.25, 1.8
    assert by_name["ddpm"]["mean_rank"] == pytest.approx(1.8)


def test_write_example_picks_the_largest_tumour_slice(tmp_path):
    from synthmri.segmenters.evaluate import write_example

    slices = np.zeros((4, 5, 8, 8), dtype=np.uint8)
    slices[:, :4] = np.arange(4, dtype=np.uint8)[:, None, None, None] + 10
    for i, area in enumerate((4, 9, 9, 1)):
        slices[i, 4].flat[:area] = 102
    z = np.array([3, 7, 2, 0])
    pred = slices[:, 4] // 2
    assert write_example(tmp_path / "example.npz", np.array(["a", "b", "c", "d"]), z, slices, pred) == "c"
    with np.load(tmp_path / "example.npz", allow_pickle=False) as data:  # the largest area, the lower z of a tie
        assert str(data["slice_id"]) == "c" and int(data["z"]) == 2
        assert np.array_equal(data["image"], slices[2, :4]) and np.array_equal(data["truth"], slices[2, 4])
        assert np.array_equal(data["prediction"], pred[2])


# ---------------------------------------------------------------------------- against MLflow

FAKE_INCEPTION = {"ddpm": (12.5 + 1 / 3, 2.25 + 1 / 7), "stylegan2": (8.75 + 1 / 9, 2.5 + 1 / 11)}


def _checkpoint(path: Path, cfg, seed: int, name: str, train: str, augment: bool, synthetic=(), real_share=None):
    """An untrained checkpoint (architecture ARCH) that records the given training setting."""
    import torch

    from synthmri.config import to_dict
    from synthmri.segmenters import get_architecture
    from synthmri.segmenters.train import save_checkpoint

    arch = get_architecture(ARCH)
    args = arch.model_args(arch.settings(cfg.segmenter))
    torch.manual_seed(seed)
    config = to_dict(replace(cfg, seed=seed, segmenter=replace(cfg.segmenter, augment=augment)))
    save_checkpoint(path / "model.pt", {
        "arch": ARCH, "model_args": args, "state_dict": arch.build(**args).state_dict(), "config": config,
        "train": train, "synthetic": list(synthetic), "seed": seed, "name": name, "real_share": real_share})
    # The record train-segmenter finishes with: evaluate-segmenter scores finished runs only.
    (path / "completion.json").write_text(json.dumps({
        "schema": 1, "verb": "train-segmenter", "seed": seed, "run_ids": [],
        "inputs": {"train": train, "real_share": real_share, "real": None, "synthetic": []}}))
    return path


def _synthetic_store(real: SliceStore, path: Path, name: str, seed: int) -> Path:
    """Training slices with noise, as a generator's store."""
    rng = np.random.default_rng(seed)
    slices = real.read(real.indices("train")[:12]).copy()
    slices[:, :4] = np.clip(slices[:, :4].astype(int) + rng.integers(-20, 21, slices[:, :4].shape), 0, 255)
    rows = [SliceRow(f"{name}-{i:06d}", name, -1, "train") for i in range(len(slices))]
    with StoreWriter(path, image_size=real.image_size, source={"path": "test"}, shard_size=8,
                     generator={"name": name, "version": "1"}) as writer:
        writer.add(slices, rows)
    return path


def test_report_numbers_equal_the_mlflow_metrics(phantom_store, tiny_config, registry, tmp_path, monkeypatch,
                                                 single_thread):
    """evaluate-segmenter and evaluate-synthetic log to MLflow; the report's numbers are those metrics."""
    import mlflow
    from mlflow import MlflowClient

    from synthmri.metrics import quality as quality_module
    from synthmri.segmenters.evaluate import gather_evaluations
    from synthmri.stages.evaluate_segmenter import run as evaluate_segmenter
    from synthmri.stages.evaluate_synthetic import run as evaluate_synthetic

    cfg, models = tiny_config, tmp_path / "models"
    settings = {  # directory -> checkpoints (name, train, augment, synthetic, real share)
        "real-aug": [(f"unet-real-aug-s{s}", "real", True, (), None) for s in range(2)],
        "real-orig": [("unet-real-orig-s0", "real", False, (), None)],
        **{f"synthetic-{g}": [(f"unet-synthetic-{g}-aug-s0", "synthetic", True, (g,), None)]
           for g in ("ddpm", "stylegan2")},
        "mixed-ddpm": [("unet-mixed-ddpm-aug-s0", "mixed", True, ("ddpm",), None)],
        **{f"ratio{int(100 * share)}": [(f"unet-ratio{int(100 * share)}-aug-s0", "ratio", True, ("stylegan2",), share)]
           for share in (0.0, 0.5)},
    }
    outputs, seed = [], 0
    for directory, checkpoints in settings.items():
        for repeat, (name, train, augment, synthetic, share) in enumerate(checkpoints):
            target = models / directory / (f"repeat-{repeat:02d}" if len(checkpoints) > 1 else "")
            _checkpoint(target, cfg, seed, name, train, augment, synthetic, share)
            seed += 1
        evaluate_segmenter(models / directory, phantom_store, tmp_path / "eval" / directory, cfg)
        outputs.append(tmp_path / "eval" / directory)
    gather_evaluations(outputs, tmp_path / "gathered")  # the pipeline's fan-in: example.npz travels too

    def fake_inception(real, real_positions, synthetic, syn_positions, cfg, device):  # no Inception weights here
        fid, is_mean = FAKE_INCEPTION[synthetic.manifest["generator"]["name"]]
        return {"status": "computed", "fid": fid, "is_mean": is_mean, "is_sd": 0.25, "is_real_mean": 3.5,
                "is_real_sd": 0.5, "is_splits": 2}

    monkeypatch.setattr(quality_module, "inception_metrics", fake_inception)
    real = SliceStore(phantom_store)
    memorization, stores = [], []
    for number, name in enumerate(("ddpm", "stylegan2")):
        stores.append(_synthetic_store(real, tmp_path / f"synthetic-{name}", name, number))
        memorization.append(tmp_path / f"memorization-{name}")
        evaluate_synthetic(phantom_store, stores[-1], memorization[-1], cfg, segmenter=models / "real-orig")

    write_report(tmp_path / "report", [tmp_path / "gathered"], memorization, phantom_store, stores, None, cfg)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    markdown = (tmp_path / "report" / "report.md").read_text()
    client = MlflowClient()
    runs = {r.info.run_name: r.info.run_id
            for r in mlflow.search_runs(experiment_names=["synthmri-evaluation"], output_format="list")}

    def metrics(run_name: str) -> dict[str, float]:
        return client.get_run(runs[run_name]).data.metrics

    # Tables 3-4: every row's mean and sd over its repeats' runs; the repeats' aggregate run agrees exactly.
    rows = {(r["train"], r["augment"], tuple(r["synthetic"]), r["real_share"]): r for r in report["segmentation"]}
    assert len(rows) == 7 and rows["real", True, (), None]["n"] == 2
    for row in report["segmentation"]:
        logged = [metrics(f"{name}-eval") for name in row["runs"]]
        for score in SCORES:
            for name in STRUCTURES:
                values = [m[f"{score}_{name}"] for m in logged]
                assert abs(row[score][name]["mean"] - np.mean(values)) <= 1e-9
                if len(values) == 1:
                    assert row[score][name]["mean"] == values[0] and row[score][name]["sd"] is None
        assert abs(row["mean_dice"]["mean"] - np.mean([m["mean_dice"] for m in logged])) <= 1e-9
    aggregate_run = metrics("unet-real-aug-eval")
    real_aug = rows["real", True, (), None]
    for score in SCORES:
        for name in STRUCTURES:
            assert real_aug[score][name]["mean"] == aggregate_run[f"{score}_{name}"]
            assert real_aug[score][name]["sd"] == aggregate_run[f"{score}_{name}_sd"]
    assert real_aug["mean_dice"]["sd"] == aggregate_run["mean_dice_sd"]
    # Dice and Hausdorff tables in the paper's row order: real+aug, mixed ddpm+aug, real, stylegan2+aug, ddpm+aug.
    dice_table = md_table(markdown, "Architecture | Model | Orig | Aug | n | ET |", after=DICE_HEADER)
    hd_table = md_table(markdown, "Architecture | Model | Orig | Aug | n | ET |", after=HD_HEADER)
    assert [r[1:4] for r in dice_table] == [["None", "✓", "✓"], ["Diffusion", "✓", "✓"], ["None", "✓", ""],
                                            ["StyleGAN 2", "", "✓"], ["Diffusion", "", "✓"]]
    assert dice_table[0][4:6] == ["2", f"{aggregate_run['dice_ET']:.4f} ± {aggregate_run['dice_ET_sd']:.4f}"]
    synthetic_ddpm = metrics("unet-synthetic-ddpm-aug-s0-eval")
    assert hd_table[4][COLUMNS["ET"]] == f"{synthetic_ddpm['hausdorff_ET']:.2f} ± –"
    real_orig = metrics("unet-real-orig-s0-eval")
    assert [dice_table[2][COLUMNS[k]] for k in STRUCTURES] == [f"{real_orig[f'dice_{k}']:.4f} ± –" for k in STRUCTURES]
    # The phantom store has the BraTS 2021 layout but not the paper's test subjects: no dataset, no paper values.
    assert report["tables"]["dataset"]["layout"] == "brats2021" and report["tables"]["dataset"]["release"] is None
    assert report["tables"]["reproduction"]["shown"] is False and "(paper)" not in markdown
    # Table 5: relative Dice = mean Dice / that of real-only training with augmentation.
    row = rows["synthetic", True, ("ddpm",), None]
    assert abs(row["relative_dice"] - synthetic_ddpm["mean_dice"] / aggregate_run["mean_dice"]) <= 1e-12
    # Tables 1-2: FID, IS and in-domain FD of the evaluate-synthetic runs; Dice and HD of synthetic-only training.
    table1 = {r[0]: r for r in md_table(markdown, "generator | FID | rank |")}
    table2 = {r[0]: r for r in md_table(markdown, "generator | version | FID |")}
    assert len(report["generators"]) == 2
    for entry in report["generators"]:
        name = entry["generator"]
        logged = client.get_run(entry["mlflow_run_id"]).data.metrics
        assert (entry["fid"], entry["is"], entry["fd"]) == (logged["fid"], logged["inception_score"],
                                                            logged["in_domain_fd"])
        assert entry["fid"] == FAKE_INCEPTION[name][0]
        trained = metrics(f"unet-synthetic-{name}-aug-s0-eval")
        assert entry["dice"] == trained["mean_dice"]
        assert abs(entry["hd"] - np.mean([trained[f"hausdorff_{k}"] for k in LABELS])) <= 1e-9
        assert table1[name][1] == f"{logged['fid']:.4g}" and table1[name][5] == f"{logged['in_domain_fd']:.4g}"
        assert table1[name][7] == f"{trained['mean_dice']:.4f}"
        assert table2[name][2:4] == [f"{logged['fid']:.4g}", f"{logged['inception_score']:.4g} ± 0.25"]
        assert table2[name][5:] == [f"{logged[k]:.4g}" for k in ("in_domain_fd", "in_domain_kid",
                                                                   "in_domain_precision", "in_domain_recall")]
        memo = md_table(markdown, "set", after=f"### Memorization: {name}")
        assert memo[0][1] == f"{logged['memorization_mean']:.4f}" and memo[1][1] == f"{logged['baseline_mean']:.4f}"
    assert table1["stylegan2"][2] == "1" and table1["ddpm"][2] == "2"  # lower FID ranks first

    # Figures 2-3: every setting shows the same slice, the largest tumour of the first test subject.
    test = real.indices("test")
    first = test[real.subject[test] == min(real.subject[test])]
    area = (real.read(first)[:, 4] > 0).sum(axis=(1, 2))
    expected = real.slice_id[first][np.lexsort((real.z[first], -area))[0]]
    shown = report["examples"][ARCH]
    assert len(shown) == 5 and {e["slice_id"] for e in shown} == {expected}  # ratio runs are in Figure 4
    assert all((p.parent / "example.npz").is_file() for p in (tmp_path / "gathered").glob("runs/*/summary.json"))
    assert [s["real_share"] for s in report["ratio"]] == [[0.0, 0.5]]
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 8  # Fig. 1 x2, histograms x2, pairs x2, Fig. 2, Fig. 4
