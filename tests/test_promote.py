"""The promotion gate against a private sqlite MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthmri.promote import PromotionError, promote

MODEL = "synthmri-ddpm"
REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = "c" * 64  # sha256 of the registered generator.pt (the tag train-generator sets)
OTHER_CHECKPOINT = "e" * 64  # another generator's


def _record(directory: Path, verb: str, inputs: dict, **details) -> None:
    """The completion record a finished stage leaves (synthmri.stages.outputs), as the gate reads it."""
    (directory / "completion.json").write_text(json.dumps({"schema": 1, "verb": verb, "seed": 0, "run_ids": [],
                                                           "inputs": inputs, **details}))


def _generator(checkpoint: str = CHECKPOINT, version: str = "1") -> dict:
    return {"name": "ddpm", "registered_name": MODEL, "version": int(version), "checkpoint_sha256": checkpoint}


def _evaluation_record(directory: Path, train: str, checkpoint: str = CHECKPOINT, version: str = "1") -> None:
    synthetic = [] if train == "real" else [{"path": "syn", "content_hash": "s" * 64,
                                             "generator": _generator(checkpoint, version)}]
    training = {"train": train, "real_share": None, "real": None if train == "synthetic" else {"content_hash": "r" * 64},
                "synthetic": synthetic}
    _record(directory, "evaluate-segmenter", {"real": {"path": "slices", "content_hash": "d" * 64, "generator": None}},
            models=[{"checkpoint": "model.pt", "training": training}])


@pytest.fixture
def registry(mlflow_uri: str, monkeypatch: pytest.MonkeyPatch):
    """mlflow_uri plus the registry: mlflow.set_registry_uri also exports MLFLOW_REGISTRY_URI,
    which would otherwise keep pointing at an earlier test's database."""
    import mlflow

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    yield mlflow_uri
    mlflow.set_registry_uri(None)  # back to "follow the tracking URI"


def register_version(tmp_path: Path, checkpoint: str | None = CHECKPOINT) -> str:
    """Register a version of MODEL from a run artifact and alias it 'candidate'."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    mlflow.set_experiment("synthmri-generators")
    with mlflow.start_run() as run:
        weights = tmp_path / "weights.txt"
        weights.write_text("tiny generator")
        mlflow.log_artifact(str(weights), artifact_path="model")
    try:
        client.create_registered_model(MODEL)
    except mlflow.exceptions.MlflowException:
        pass  # already there from an earlier call in this test
    version = client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                          tags={"synthmri.checkpoint_sha256": checkpoint} if checkpoint else None)
    client.set_registered_model_alias(MODEL, "candidate", version.version)
    return str(version.version)


def write_evidence(root: Path, syn_share: float, base_share: float, real_dice: float, syn_dice: float,
                   real_train: str = "real", version: str = "1", checkpoint: str = CHECKPOINT) -> dict[str, Path]:
    memo = root / "memorization"
    memo.mkdir(parents=True)
    stats = {"mean": 0.5, "median": 0.5, "p99": 0.9, "max": 0.97, "n": 400}
    (memo / "summary.json").write_text(json.dumps({
        "synthetic": {**stats, "share_above_threshold": syn_share},
        "baseline": {**stats, "share_above_threshold": base_share, "n": 100},
        "threshold": 0.95, "generator": {"name": "ddpm", "version": version},
        "real_hash": "r" * 64, "synthetic_hash": "s" * 64, "mlflow_run_id": "abc123",
    }))
    _record(memo, "evaluate-synthetic", {"real": {"path": "slices", "content_hash": "r" * 64, "generator": None},
                                         "synthetic": {"path": "syn", "content_hash": "s" * 64,
                                                       "generator": _generator(checkpoint, version)}})
    paths = {"memorization": memo}
    for role, train, dice in (("real", real_train, real_dice), ("synthetic", "synthetic", syn_dice)):
        directory = root / f"eval-{role}"
        directory.mkdir()
        (directory / "summary.json").write_text(json.dumps({
            "model": {"arch": "unet", "train": train, "augment": True, "seed": 0,
                      "synthetic": [] if role == "real" else ["synthetic/ddpm"], "name": f"unet-{role}-aug-s0"},
            "data_hash": "d" * 64, "eval_slices": "filtered", "subjects": 2,
            "dice": {"ET": dice, "ED": dice, "NCR": dice}, "hausdorff": {"ET": 5.0, "ED": 6.0, "NCR": 7.0},
            "mean_dice": dice,
        }))
        _evaluation_record(directory, train, checkpoint, version)
        paths[role] = directory
    return paths


def run_gate(paths: dict[str, Path], cfg, version: str = "candidate", out: Path | None = None, model: str = MODEL):
    return promote(model=model, version=version, memorization=paths["memorization"],
                   real_evaluation=paths["real"], synthetic_evaluation=paths["synthetic"], out=out, cfg=cfg)


def test_passing_gate_sets_champion_and_tags(tmp_path, tiny_config, registry):
    from mlflow import MlflowClient

    version = register_version(tmp_path)
    paths = write_evidence(tmp_path / "ev", syn_share=0.01, base_share=0.005, real_dice=0.8, syn_dice=0.6, version=version)
    decision = run_gate(paths, tiny_config, out=tmp_path / "decision.json")
    assert decision.passed and decision.version == version and decision.model == MODEL
    assert [c.name for c in decision.criteria] == ["memorization", "relative_dice"]
    assert decision.criteria[1].value == pytest.approx(0.75)
    assert decision.criteria[0].value == pytest.approx(0.005)

    client = MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == version
    tags = client.get_model_version(MODEL, version).tags
    assert tags["synthmri.gate.passed"] == "true"
    assert float(tags["synthmri.gate.relative_dice"]) == pytest.approx(0.75)
    assert float(tags["synthmri.gate.memorized_excess"]) == pytest.approx(0.005)
    assert tags["synthmri.gate.evaluation_data_hash"] == "d" * 64
    assert tags["synthmri.gate.memorization_run_id"] == "abc123"
    assert tags["synthmri.gate.synthetic_hash"] == "s" * 64

    written = json.loads((tmp_path / "decision.json").read_text())
    assert written["passed"] is True and written["version"] == version
    assert written["criteria"][1]["threshold"] == tiny_config.promotion.min_relative_dice
    assert "PASSED" in decision.describe()

    # A version number and the generator family name resolve to the same version.
    again = run_gate(paths, tiny_config, version=version, model="ddpm")
    assert again.passed and again.model == MODEL and again.version == version


def test_failing_gate_names_criterion_and_sets_no_champion(tmp_path, tiny_config, registry):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    register_version(tmp_path)
    # 5% of synthetic slices above r=0.95 against 1% of test slices: excess 4% > 1%.
    paths = write_evidence(tmp_path / "ev", syn_share=0.05, base_share=0.01, real_dice=0.8, syn_dice=0.6)
    decision = run_gate(paths, tiny_config)
    assert not decision.passed
    assert [c.name for c in decision.failed] == ["memorization"]
    text = decision.describe()
    assert "FAILED" in text and "[FAIL] memorization: 0.0400 <= 0.0100" in text
    assert "5.00%" in text and "1.00%" in text
    client = MlflowClient()
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(MODEL, "champion")
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["synthmri.gate.passed"] == "false" and tags["synthmri.gate.failed"] == "memorization"

    # Low relative Dice: 0.3 / 0.8 = 0.375 < min_relative_dice.
    low = write_evidence(tmp_path / "low", syn_share=0.0, base_share=0.0, real_dice=0.8, syn_dice=0.3)
    decision = run_gate(low, tiny_config)
    assert [c.name for c in decision.failed] == ["relative_dice"]
    assert f"[FAIL] relative_dice: 0.3750 >= {tiny_config.promotion.min_relative_dice:.4f}" in decision.describe()
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(MODEL, "champion")

    # The CLI exits 1 on a failing gate (0 with --exit-zero) and writes the decision.
    from synthmri.cli import main

    args = ["promote", "--profile", str(REPO / "configs" / "demo.yaml"), "--model", MODEL,
            "--memorization", str(paths["memorization"]), "--real-evaluation", str(paths["real"]),
            "--synthetic-evaluation", str(paths["synthetic"]), "--out", str(tmp_path / "d.json")]
    assert main(args) == 1
    assert main(args + ["--exit-zero"]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["passed"] is False


def test_wrong_or_missing_inputs_give_clear_errors(tmp_path, tiny_config, registry):
    register_version(tmp_path)
    wrong = write_evidence(tmp_path / "wrong", 0.0, 0.0, 0.8, 0.6, real_train="mixed")
    with pytest.raises(PromotionError, match=r"eval-real/summary.json.*trained on 'real'.*'mixed'"):
        run_gate(wrong, tiny_config)
    good = write_evidence(tmp_path / "good", 0.0, 0.0, 0.8, 0.6)
    with pytest.raises(PromotionError, match="no alias 'nightly'"):
        run_gate(good, tiny_config, version="nightly")
    with pytest.raises(PromotionError, match="no version '7'"):
        run_gate(good, tiny_config, version="7")
    with pytest.raises(PromotionError, match="'synthmri-stylegan' not found"):
        run_gate(good, tiny_config, model="synthmri-stylegan")
    with pytest.raises(FileNotFoundError, match="nowhere/summary.json: summary not found"):
        run_gate({**good, "memorization": tmp_path / "nowhere"}, tiny_config)
    other = write_evidence(tmp_path / "other", 0.0, 0.0, 0.8, 0.6, version="2")
    with pytest.raises(PromotionError, match="field 'version' is 2, not '1'"):
        run_gate(other, tiny_config)


def _evaluation(directory: Path, arch: str, train: str, augment: bool, seed: int, dice: float) -> Path:
    directory.mkdir(parents=True)
    (directory / "summary.json").write_text(json.dumps({
        "model": {"arch": arch, "train": train, "augment": augment, "seed": seed, "synthetic": [],
                  "name": f"{arch}-{train}-{'aug' if augment else 'orig'}-s{seed}"},
        "data_hash": "d" * 64, "eval_slices": "filtered", "subjects": 2,
        "dice": {"ET": dice, "ED": dice, "NCR": dice}, "hausdorff": {"ET": 5.0, "ED": 6.0, "NCR": 7.0},
        "hausdorff95": {"ET": 4.0, "ED": 5.0, "NCR": 6.0}, "mean_dice": dice,
    }))
    (directory / "per_subject.csv").write_text(f"subject,structure,dice\ns1,ET,{dice}\n")
    _evaluation_record(directory, train)
    return directory


def test_gate_reads_a_gathered_grid_in_the_reference_setting(tmp_path, tiny_config, registry):
    from synthmri.segmenters.evaluate import gather_evaluations

    register_version(tmp_path)
    paths = write_evidence(tmp_path / "evidence", 0.0, 0.0, 0.8, 0.7)
    grid = tmp_path / "grid"
    # The grid a pipeline fans in: only nnunet/synthetic/aug (the tiny profile's arch) may count (two repeats, mean Dice 0.6).
    cells = [("nnunet", "synthetic", True, 0, 0.5), ("nnunet", "synthetic", True, 1, 0.7),
             ("nnunet", "synthetic", False, 0, 0.99), ("nnunet", "mixed", True, 0, 0.99), ("swin", "synthetic", True, 0, 0.01)]
    gathered = gather_evaluations([_evaluation(grid / f"cell-{i}", *cell) for i, cell in enumerate(cells)],
                                  tmp_path / "gathered")
    assert gathered["evaluations"] == 5
    real_grid = gather_evaluations([_evaluation(tmp_path / "real" / f"r{s}", "nnunet", "real", True, s, 0.8)
                                    for s in (0, 1)] + [_evaluation(tmp_path / "real" / "orig", "nnunet", "real", False,
                                                                    0, 0.1)], tmp_path / "real-gathered")
    assert real_grid["evaluations"] == 3
    decision = promote(model=MODEL, version="candidate", memorization=paths["memorization"],
                       real_evaluation=[tmp_path / "real-gathered"], synthetic_evaluation=[tmp_path / "gathered"],
                       out=None, cfg=tiny_config)
    assert decision.evidence["synthetic_mean_dice"] == pytest.approx(0.6)
    assert decision.evidence["real_mean_dice"] == pytest.approx(0.8)
    relative = next(c for c in decision.criteria if c.name == "relative_dice")
    assert relative.value == pytest.approx(0.75)


def test_gate_names_the_settings_a_grid_lacks(tmp_path, tiny_config, registry):
    register_version(tmp_path)
    paths = write_evidence(tmp_path / "evidence", 0.0, 0.0, 0.8, 0.7)
    only_swin = [_evaluation(tmp_path / "s0", "swin", "synthetic", True, 0, 0.5),
                 _evaluation(tmp_path / "s1", "swin", "synthetic", False, 0, 0.5)]
    with pytest.raises(PromotionError, match=r"none of the 2 evaluations given as synthetic-only is nnunet trained on "
                                             r"'synthetic' slices with augmentation.*swin/synthetic/aug"):
        promote(model=MODEL, version="candidate", memorization=paths["memorization"],
                real_evaluation=[paths["real"]], synthetic_evaluation=only_swin, out=None, cfg=tiny_config)


def test_evidence_of_another_generator_is_refused_whatever_its_version_says(tmp_path, tiny_config, registry):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    register_version(tmp_path)
    # StyleGAN2's evidence (another checkpoint) presented for synthmri-ddpm version 1, even
    # claiming to be version 1 of it: refused, by the hash, for both kinds of evidence.
    stylegan = write_evidence(tmp_path / "sg2", 0.0, 0.0, 0.8, 0.7, checkpoint=OTHER_CHECKPOINT)
    with pytest.raises(PromotionError, match=r"memorization/completion.json: inputs.synthetic.generator: comes "
                                             r"from the checkpoint with sha256 eeee.*not synthmri-ddpm version 1"):
        run_gate(stylegan, tiny_config, version="1")
    good = write_evidence(tmp_path / "good", 0.0, 0.0, 0.8, 0.7)
    with pytest.raises(PromotionError, match=r"eval-synthetic/completion.json: models\[0\].training.synthetic\[0\]"
                                             r".generator: comes from the checkpoint with sha256 eeee"):
        run_gate({**good, "synthetic": stylegan["synthetic"]}, tiny_config)
    with pytest.raises(MlflowException):
        MlflowClient().get_model_version_by_alias(MODEL, "champion")


def test_a_version_without_its_checkpoint_hash_cannot_be_gated(tmp_path, tiny_config, registry):
    register_version(tmp_path, checkpoint=None)
    paths = write_evidence(tmp_path / "ev", 0.0, 0.0, 0.8, 0.7)
    with pytest.raises(PromotionError, match="version 1 has no tag 'synthmri.checkpoint_sha256'"):
        run_gate(paths, tiny_config)


@pytest.mark.parametrize("where, edit, message", [
    ("synthetic", lambda s: {**s, "mean_dice": 7.5}, r"eval-synthetic/summary.json: field 'mean_dice' is 7.5, "
                                                     r"outside \[0, 1\]"),
    ("synthetic", lambda s: {**s, "mean_dice": "abc"}, r"eval-synthetic/summary.json: field 'mean_dice' is 'abc', "
                                                       r"not a finite number"),
    ("memorization", lambda s: {**s, "synthetic": {**s["synthetic"], "share_above_threshold": -1.0}},
     r"memorization/summary.json: field 'synthetic.share_above_threshold' is -1.0, outside \[0, 1\]"),
    ("memorization", lambda s: {**s, "synthetic": {}}, r"memorization/summary.json: field "
                                                       r"'synthetic.share_above_threshold' is missing"),
    ("memorization", lambda s: None, r"memorization/summary.json: not a JSON object"),
    ("memorization", lambda s: {**s, "threshold": 3}, r"field 'threshold' is 3, outside \[-1, 1\]"),
])
def test_values_out_of_range_or_missing_name_the_file_and_field(tmp_path, tiny_config, registry, where, edit, message):
    register_version(tmp_path)
    paths = write_evidence(tmp_path / "ev", 0.0, 0.0, 0.8, 0.7)
    file = paths[where] / "summary.json"
    file.write_text(json.dumps(edit(json.loads(file.read_text()))))
    with pytest.raises(PromotionError, match=message):
        run_gate(paths, tiny_config)


def test_truncated_or_hand_written_evidence_is_refused(tmp_path, tiny_config, registry):
    register_version(tmp_path)
    paths = write_evidence(tmp_path / "ev", 0.0, 0.0, 0.8, 0.7)
    summary = paths["real"] / "summary.json"
    text = summary.read_text()
    summary.write_text(text[: len(text) // 2])
    with pytest.raises(PromotionError, match=r"eval-real/summary.json: not an evaluate-segmenter summary|"
                                             r"eval-real/summary.json: .*(JSON|Expecting)"):
        run_gate(paths, tiny_config)
    summary.write_text(text)
    # A memorization summary written by hand: right fields, no record of what it measured.
    (paths["memorization"] / "completion.json").unlink()
    with pytest.raises(PromotionError, match=r"memorization: no completion.json from evaluate-synthetic, so the "
                                             r"evidence has no provenance"):
        run_gate(paths, tiny_config)


def test_the_gate_refuses_to_judge_against_a_failed_baseline(tmp_path, tiny_config, registry):
    register_version(tmp_path)
    # An undertrained real-only U-Net at 0.255 would make 0.183 look like 71.6%.
    paths = write_evidence(tmp_path / "ev", 0.0, 0.0, real_dice=0.255, syn_dice=0.183)
    with pytest.raises(PromotionError, match=r"real-only baseline's mean Dice is 0.2550, below "
                                             r"promotion.min_real_dice 0.5"):
        run_gate(paths, tiny_config)
