"""3D evaluation: restacking by z, voxel spacing, labels and regions, repeats, summary.json, MLflow."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import mlflow
import numpy as np
import pytest

from synthmri.config import to_dict
from synthmri.data.labels import STRUCTURES
from synthmri.data.store import SliceStore, StoreError
from synthmri.records import OutputError
from synthmri.segmenters import evaluate as evaluation
from synthmri.segmenters import get_architecture
from synthmri.segmenters.inference import find_checkpoints, load_segmenter
from synthmri.segmenters.summaries import aggregate_repeats
from synthmri.segmenters.volumes import restack, subject_spacings, volume_spacing
from synthmri.stages.evaluate_segmenter import run as evaluate_segmenter
from synthmri.segmenters.train import save_checkpoint

from . import blob_volume, write_blob_store

SUMMARY_KEYS = {"model", "data_hash", "eval_slices", "subjects", "dice", "hausdorff", "hausdorff95", "mean_dice",
                "repeats", "runs", "convention", "dataset", "subjects_scored"}
DATASET_KEYS = {"layout", "source", "split", "training_subjects", "test_subjects"}
# The cheap registered architecture the checkpoints of these tests are built with.
ARCH = "nnunet"
MODEL_KEYS = {"arch", "train", "augment", "seed", "synthetic", "name", "real_share", "synthetic_versions", "repeat"}


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


def test_volume_spacing_accounts_for_padding_and_resampling():
    assert volume_spacing([1.0, 1.0, 2.5], pad_to=256, image_size=64) == pytest.approx((2.5, 4.0, 4.0))
    assert volume_spacing([0.5, 0.8, 3.0], pad_to=128, image_size=128) == pytest.approx((3.0, 0.5, 0.8))
    for bad in ([1.0, 1.0], [1.0, 0.0, 1.0], "abc"):
        with pytest.raises(StoreError, match="voxel spacing must be 3"):
            volume_spacing(bad, 256, 64)


def test_subject_spacing_comes_from_subjects_csv_then_the_manifest_then_1mm(tmp_path):
    store = SliceStore(write_blob_store(tmp_path / "s", {"train": 1, "test": 2}, size=16, depth=4))
    spacings, note = subject_spacings(store, pad_to=64)
    assert set(spacings.values()) == {(1.0, 1.0, 1.0)} and "1 mm assumed" in note
    _write_subjects_csv(store.path, {"S000": (1, 1, 1), "S001": (0.7, 0.9, 3), "S002": (1.1, 1.1, 2)})
    spacings, note = subject_spacings(store, pad_to=64)  # 64 / 16: pixels 4x the source voxel
    assert spacings["S001"] == pytest.approx((3.0, 2.8, 3.6)) and spacings["S002"] == pytest.approx((2.0, 4.4, 4.4))
    assert "subjects.csv" in note
    _write_subjects_csv(store.path, {"S000": (1, 1, 1)})
    with pytest.raises(StoreError, match="no voxel spacing for subjects \\['S001', 'S002'\\]"):
        subject_spacings(store, pad_to=64)


def _write_subjects_csv(store_path, spacing_by_subject):
    lines = ["subject,split,slices_kept,slices_total,spacing_x,spacing_y,spacing_z"]
    lines += [f"{s},train,1,1,{x:g},{y:g},{z:g}" for s, (x, y, z) in spacing_by_subject.items()]
    (store_path / "subjects.csv").write_text("\n".join(lines) + "\n")


def _untrained_checkpoint(path, cfg, name="unet-real-orig-s0", finished=True):
    """A model.pt as train-segmenter leaves it; `finished`: with its completion record too."""
    arch = get_architecture(ARCH)
    args = arch.model_args(arch.settings(cfg.segmenter))
    model = arch.build(**args)
    save_checkpoint(path / "model.pt", {
        "arch": ARCH, "model_args": args, "state_dict": model.state_dict(), "config": to_dict(cfg),
        "train": "real", "synthetic": [], "seed": cfg.seed, "name": name, "best_val_dice": 0.1, "step": 0,
    })
    if finished:
        (path / "completion.json").write_text(json.dumps({
            "schema": 1, "verb": "train-segmenter", "seed": cfg.seed, "run_ids": [],
            "inputs": {"train": "real", "real_share": None, "real": None, "synthetic": []}}))
    return path


def test_evaluate_writes_the_summary_schema_and_an_mlflow_run(phantom_store, tiny_config, mlflow_uri, tmp_path,
                                                              monkeypatch):
    model = _untrained_checkpoint(tmp_path / "model", tiny_config)
    network, checkpoint = load_segmenter(model / "model.pt")
    assert checkpoint["train"] == "real" and not network.training

    result = evaluate_segmenter(model, phantom_store, tmp_path / "eval", tiny_config)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS and set(summary["model"]) == MODEL_KEYS
    assert summary["model"] == {"arch": ARCH, "train": "real", "augment": tiny_config.segmenter.augment,
                                "seed": tiny_config.seed, "synthetic": [], "name": "unet-real-orig-s0",
                                "real_share": None, "synthetic_versions": [], "repeat": None}
    store = SliceStore(phantom_store)
    assert summary["data_hash"] == store.content_hash and summary["eval_slices"] == "filtered"
    assert summary["subjects"] == len(store.subjects("test"))
    assert summary["repeats"] == 1 and summary["runs"] == []
    assert summary["convention"] == tiny_config.evaluation.convention == "paper"
    assert set(summary["dataset"]) == DATASET_KEYS and summary["dataset"]["test_subjects"] == store.subjects("test")
    assert summary["dataset"]["layout"] == "brats2021"  # the phantom is written in the BraTS 2021 layout
    for name in STRUCTURES:
        assert 0.0 <= summary["dice"][name] <= 1.0
        assert 0 < summary["subjects_scored"]["dice"][name] <= summary["subjects"]
        # The paper's convention: no distance where the untrained network predicts none of a structure.
        if summary["subjects_scored"]["hausdorff"][name] == 0:
            assert summary["hausdorff"][name] is None and summary["hausdorff95"][name] is None
        else:
            assert 0 <= summary["hausdorff95"][name] <= summary["hausdorff"][name] < np.inf
    assert summary["mean_dice"] == pytest.approx(np.mean([summary["dice"][k] for k in ("ET", "ED", "NCR")]))
    with open(tmp_path / "eval" / "per_subject.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 * summary["subjects"]
    assert list(rows[0]) == ["subject", "structure", "dice", "hausdorff", "hausdorff95"]
    assert {r["structure"] for r in rows} == {"ET", "ED", "NCR", "WT", "TC"}
    for name in STRUCTURES:  # each mean covers the subjects with a defined score, and says how many
        for score in ("dice", "hausdorff"):
            values = np.array([r[score] for r in result.per_subject if r["structure"] == name], dtype=float)
            defined = values[~np.isnan(values)]
            assert summary["subjects_scored"][score][name] == len(defined)
            if len(defined):
                assert summary[score][name] == pytest.approx(defined.mean(), rel=1e-12)
    assert "summary.json" in result.describe() and "WT" in result.describe()

    runs = mlflow.search_runs(experiment_names=["synthmri-evaluation"], output_format="list")
    assert [r.info.run_name for r in runs] == ["unet-real-orig-s0-eval"]
    metrics = runs[0].data.metrics
    assert metrics["mean_dice"] == pytest.approx(summary["mean_dice"])
    defined = {f"{score}_{k}" for score in ("dice", "hausdorff", "hausdorff95") for k in STRUCTURES
               if summary[score][k] is not None}
    assert defined <= set(metrics) and {f"dice_{k}_n" for k in STRUCTURES} <= set(metrics)
    undefined = {f"{score}_{k}" for score in ("dice", "hausdorff", "hausdorff95") for k in STRUCTURES} - defined
    assert set(filter(None, runs[0].data.tags.get("synthmri.undefined_metrics", "").split(","))) == undefined
    assert runs[0].data.tags["synthmri.convention"] == "paper"

    # An oracle that returns the reference: the volumes line up, so every score is perfect.
    def oracle(network, slices, batch_size, dev, normalization):
        return slices[:, 4].copy()

    monkeypatch.setattr(evaluation, "segment", oracle)
    cfg_all = replace(tiny_config, evaluation=replace(tiny_config.evaluation, eval_slices="all"))
    perfect = evaluate_segmenter(model, phantom_store, tmp_path / "oracle", cfg_all)
    assert perfect.summary["eval_slices"] == "all" and perfect.filled_slices > 0
    assert perfect.summary["dice"] == dict.fromkeys(STRUCTURES, 1.0)
    assert perfect.summary["hausdorff"] == perfect.summary["hausdorff95"] == dict.fromkeys(STRUCTURES, 0.0)


def test_scores_use_each_subjects_anisotropic_spacing(tiny_config, mlflow_uri, tmp_path, monkeypatch):
    """A prediction shifted one pixel along the rows: every structure's Hausdorff distance is
    exactly that subject's row spacing in mm, and Dice equals an independent numpy count."""
    store_path = write_blob_store(tmp_path / "s", {"train": 1, "test": 2}, size=32, depth=8, seed=3)
    _write_subjects_csv(store_path, {"S000": (1, 1, 1), "S001": (0.7, 0.9, 3.0), "S002": (1.1, 0.6, 2.0)})
    zoom = tiny_config.data.pad_to / 32  # the blob store records no pad_to: the config's applies

    def shifted(network, slices, batch_size, dev, normalization):
        return np.roll(slices[:, 4], 1, axis=1)

    monkeypatch.setattr(evaluation, "segment", shifted)
    model = _untrained_checkpoint(tmp_path / "model", tiny_config)
    result = evaluate_segmenter(model, store_path, tmp_path / "eval", tiny_config)
    store = SliceStore(store_path)
    rows = {(r["subject"], r["structure"]): r for r in result.per_subject}
    for subject, row_mm in (("S001", 0.7 * zoom), ("S002", 1.1 * zoom)):
        positions = np.flatnonzero(store.subject == subject)
        reference = store.read(positions)[np.argsort(store.z[positions]), 4]
        prediction = np.roll(reference, 1, axis=1)
        for name, values in STRUCTURES.items():
            p, t = np.isin(prediction, values), np.isin(reference, values)
            assert rows[subject, name]["dice"] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
            assert rows[subject, name]["hausdorff"] == pytest.approx(row_mm)
            assert rows[subject, name]["hausdorff95"] <= row_mm * (1 + 1e-6)


def test_repeats_are_scored_one_by_one_and_aggregated(phantom_store, tiny_config, mlflow_uri, tmp_path):
    # penalise: every score is defined and the sd over repeats is the sample sd
    tiny_config = replace(tiny_config, evaluation=replace(tiny_config.evaluation, convention="penalise"))
    for number in range(3):
        cfg = replace(tiny_config, seed=number)
        _untrained_checkpoint(tmp_path / "model" / f"repeat-{number:02d}", cfg, name=f"unet-real-orig-s{number}")
    assert [p.parent.name for p in find_checkpoints(tmp_path / "model")] == ["repeat-00", "repeat-01", "repeat-02"]
    result = evaluate_segmenter(tmp_path / "model", phantom_store, tmp_path / "eval", tiny_config)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary == result.summary and summary["repeats"] == 3
    assert summary["runs"] == [f"repeat-{n:02d}/summary.json" for n in range(3)]
    assert summary["model"]["seeds"] == [0, 1, 2] and summary["model"]["name"] == "unet-real-orig"
    parts = [json.loads((tmp_path / "eval" / run).read_text()) for run in summary["runs"]]
    for score in ("dice", "hausdorff", "hausdorff95"):
        for name in STRUCTURES:
            values = [p[score][name] for p in parts]
            assert summary[score][name] == pytest.approx(np.mean(values))
            assert summary["sd"][score][name] == pytest.approx(np.std(values, ddof=1))
    assert summary["mean_dice"] == pytest.approx(np.mean([p["mean_dice"] for p in parts]))
    with open(tmp_path / "eval" / "per_subject.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 5 * summary["subjects"] and {r["run"] for r in rows} == {f"unet-real-orig-s{n}" for n in range(3)}
    names = {r.info.run_name for r in mlflow.search_runs(experiment_names=["synthmri-evaluation"], output_format="list")}
    assert names == {f"unet-real-orig-s{n}-eval" for n in range(3)} | {"unet-real-orig-eval"}

    mismatched = [dict(parts[0]), dict(parts[1], model={**parts[1]["model"], "train": "synthetic"})]
    with pytest.raises(ValueError, match="differ in \\['train'\\]"):
        aggregate_repeats(mismatched, ["a", "b"])


def test_a_killed_training_run_is_not_evaluated(phantom_store, tiny_config, tmp_path):
    # A run SIGTERM or -9 stopped leaves model.pt (its best so far) but no completion record.
    model = _untrained_checkpoint(tmp_path / "model", tiny_config, finished=False)
    with pytest.raises(OutputError, match="model: no completion.json from train-segmenter"):
        evaluate_segmenter(model, phantom_store, tmp_path / "eval", tiny_config)
    assert not (tmp_path / "eval").exists()


def test_an_evaluation_is_replaced_whole_or_not_at_all(phantom_store, tiny_config, mlflow_uri, tmp_path, monkeypatch):
    model = _untrained_checkpoint(tmp_path / "model", tiny_config)
    evaluate_segmenter(model, phantom_store, tmp_path / "eval", tiny_config)
    before = {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()}
    assert json.loads(before["completion.json"])["inputs"]["real"]["content_hash"] == SliceStore(phantom_store).content_hash

    def killed(out, summary, rows):
        (out / "per_subject.csv").write_text("half written\n")
        raise KeyboardInterrupt  # the second evaluation dies after it wrote one file

    monkeypatch.setattr(evaluation, "_write_outputs", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate_segmenter(model, phantom_store, tmp_path / "eval", tiny_config)
    assert {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()} == before
    assert not any(p.name.startswith(".eval") for p in tmp_path.iterdir())
    # Nor does it write over another kind of output.
    with pytest.raises(OutputError, match="a real slice store; evaluate-segmenter will not write over it"):
        evaluate_segmenter(model, phantom_store, phantom_store, tiny_config)


def test_evaluate_names_a_missing_checkpoint(phantom_store, tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing/model.pt: segmenter checkpoint not found"):
        evaluate_segmenter(tmp_path / "nothing", phantom_store, tmp_path / "eval", tiny_config)


def test_gather_copies_each_run_and_the_report_reads_them_back(tmp_path):
    import json

    from synthmri.report import load_evaluations
    from synthmri.segmenters.summaries import gather_evaluations

    sources = []
    for seed in (0, 1):
        directory = tmp_path / f"eval-{seed}"
        directory.mkdir()
        summary = {"model": {"arch": "unet", "train": "real", "augment": True, "seed": seed, "name": f"u-s{seed}"},
                   "dice": {"ET": 0.5}, "hausdorff": {"ET": 1.0}, "hausdorff95": {"ET": 1.0}, "mean_dice": 0.5 + seed}
        (directory / "summary.json").write_text(json.dumps(summary))
        (directory / "per_subject.csv").write_text(f"subject,structure,dice\ns,ET,{seed}\n")
        sources.append(directory)
    gathered = gather_evaluations(sources, tmp_path / "gathered")
    assert gathered == {"stage": "gather", "evaluations": 2,
                        "runs": ["runs/000-u-s0/summary.json", "runs/001-u-s1/summary.json"]}
    assert (tmp_path / "gathered/runs/001-u-s1/per_subject.csv").read_text().endswith("s,ET,1\n")
    # Gathering a gathered directory again flattens it; the report reads run by run.
    regathered = gather_evaluations([tmp_path / "gathered"], tmp_path / "again")
    runs = load_evaluations(tmp_path / "again")
    assert regathered["evaluations"] == 2 and [r["mean_dice"] for r in runs] == [0.5, 1.5]
    with pytest.raises(ValueError, match="no evaluations"):
        gather_evaluations([], tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="evaluate-segmenter summary not found"):
        gather_evaluations([tmp_path / "missing"], tmp_path / "none")
