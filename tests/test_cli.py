"""The command line: every verb has help; bad input exits non-zero with a named cause."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from synthmri.cli import build_parser, main

VERBS = [
    "phantom", "prepare", "train-generator", "generate", "evaluate-synthetic", "share", "train-segmenter",
    "evaluate-segmenter", "gather", "grid", "promote", "report", "reader-study", "summary", "pipeline",
]


def test_every_verb_is_registered():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "verb")
    assert sorted(subparsers.choices) == sorted(VERBS)


@pytest.mark.parametrize("verb", VERBS)
def test_verb_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "--profile" in capsys.readouterr().out


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "synthmri", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("synthmri ")


def test_bad_override_exits_2_naming_key(capsys):
    code = main(["phantom", "--out", "x", "--set", "phantom.subjectz=3"])
    assert code == 2
    assert "subjectz" in capsys.readouterr().err


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    code = main(["evaluate-synthetic", "--real", str(tmp_path / "nope"), "--synthetic", str(tmp_path / "nope2"),
                 "--out", str(tmp_path / "out")])
    assert code == 1
    assert "nope" in capsys.readouterr().err


def test_train_segmenter_needs_synthetic_for_synthetic(tmp_path, capsys):
    code = main(["train-segmenter", "--train", "synthetic", "--real", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--synthetic" in capsys.readouterr().err


def test_promote_with_missing_registration_file_names_it(tmp_path, capsys):
    missing = tmp_path / "registration.json"
    code = main(["promote", "--model", "synthmri-ddpm", "--version", str(missing), "--memorization", str(tmp_path),
                 "--real-evaluation", str(tmp_path), "--synthetic-evaluation", str(tmp_path)])
    assert code == 2
    assert "registration.json" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "stylegan2", "--iterations", "5"], "stylegan2 trains for --kimg"),
    (["--model", "ddpm", "--kimg", "1.0"], "the diffusion model takes --iterations"),
])
def test_train_generator_length_flag_must_fit_the_family(argv, message, tmp_path, capsys):
    code = main(["train-generator", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *argv])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--train", "real", "--real-share", "0.5"], "--real-share goes with --train ratio"),
    (["--train", "ratio", "--real-share", "1.5"], "--real-share must be in [0, 1], got 1.5"),
    (["--train", "ratio", "--real-share", "0.5"], "needs at least one --synthetic store"),
    (["--train", "real", "--repeats", "0"], "segmenter.repeats must be at least 1, got 0"),
    (["--train", "real", "--arch", "vnet"], "invalid choice: 'vnet'"),
])
def test_train_segmenter_rejects_bad_mixes(argv, message, tmp_path, capsys):
    try:
        code = main(["train-segmenter", "--real", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    except SystemExit as exit_info:  # argparse rejects unknown choices itself
        code = exit_info.code
    assert code == 2 and message in capsys.readouterr().err


def test_train_segmenter_ratio_sweeps_the_configured_shares(phantom_store, mlflow_uri, tmp_path, capsys):
    from tests.segmenters import write_blob_store

    synthetic = write_blob_store(tmp_path / "syn", {"train": 2}, size=32, depth=6, generator="ddpm")
    settings = ["segmenter.ratio_shares=[0.0, 1.0]", "segmenter.ratio_total=12", "segmenter.nnunet.train_samples=16",
                "segmenter.nnunet.batch_size=8", "segmenter.nnunet.val_every_samples=16", "segmenter.repeats=1",
                "data.size=32", "data.pad_to=64", "segmenter.nnunet.filters=[8, 16, 32]",
                "segmenter.nnunet.deep_supervision_heads=1"]
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # mlflow_uri changes directory
    code = main(["train-segmenter", "--profile", str(demo), "--train", "ratio", "--real", str(phantom_store),
                 "--synthetic", str(synthetic), "--out", str(tmp_path / "sweep"),
                 *(arg for s in settings for arg in ("--set", s))])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["share-000", "share-100"]
    assert "unet-ratio0-aug-r0" in capsys.readouterr().out


def test_share_rejects_a_threshold_that_is_no_correlation(tmp_path, capsys):
    code = main(["share", "--synthetic", str(tmp_path / "s"), "--real", str(tmp_path / "r"), "--out",
                 str(tmp_path / "o"), "--threshold", "1.2"])
    assert code == 2 and "--threshold must be a correlation in [-1, 1], got 1.2" in capsys.readouterr().err


def test_share_names_a_missing_store(tmp_path, capsys):
    code = main(["share", "--synthetic", str(tmp_path / "nosuchstore"), "--real", str(tmp_path / "r"), "--out",
                 str(tmp_path / "o")])
    assert code == 1 and "nosuchstore" in capsys.readouterr().err


def test_mlflow_follows_each_configs_uri_within_one_process(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports $MLFLOW_TRACKING_URI; that must not pin later configs."""
    import mlflow

    from synthmri.config import TrackingConfig
    from synthmri.tracking import configure

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    configure(TrackingConfig(tracking_uri=first))
    configure(TrackingConfig(tracking_uri=second))
    assert mlflow.get_tracking_uri() == second and mlflow.get_registry_uri() == second
    # A user's variable still wins over the config, call after call.
    user = f"sqlite:///{tmp_path / 'user.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", user)
    configure(TrackingConfig(tracking_uri=first))
    configure(TrackingConfig(tracking_uri=second))
    assert mlflow.get_tracking_uri() == user and mlflow.get_registry_uri() == user


def test_grid_writes_every_run_from_json_or_word_lists(tmp_path):
    out = tmp_path / "cells.json"
    assert main(["grid", "--archs", '["unet", "swin"]', "--train", "synthetic,mixed", "--augment", "on", "off",
                 "--repeats", "3", "--seed", "7", "--out", str(out)]) == 0
    import json

    cells = json.loads(out.read_text())
    assert len(cells) == 2 * 2 * 2 * 3
    assert cells[0] == {"arch": "unet", "train": "synthetic", "augment": True, "repeat": 0, "seed": 7,
                        "name": "unet-synthetic-aug-r0"}
    assert {c["seed"] for c in cells} == {7, 8, 9}
    assert len({c["name"] for c in cells}) == len(cells)


@pytest.mark.parametrize(("flags", "message"), [
    (["--archs", "resnet"], "unknown grid values ['resnet']"),
    (["--augment", "maybe"], "--augment takes on/off"),
    (["--repeats", "0"], "repeats must be at least 1, got 0"),
    (["--train", "real,real"], "sources repeat in the grid"),
])
def test_grid_names_bad_values(tmp_path, capsys, flags, message):
    status = main(["grid", *flags, "--out", str(tmp_path / "cells.json")])
    assert status in (1, 2)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cells.json").exists()


def test_seed_takes_the_whole_floats_a_pipeline_loop_passes(tmp_path, capsys):
    from synthmri.stages.arguments import whole_number as _whole_number

    assert _whole_number("3.0") == 3 and _whole_number("12") == 12
    with pytest.raises(Exception, match="expected a whole number, got '2.5'"):
        _whole_number("2.5")


def test_prepare_without_source_needs_phantom_subjects(tmp_path, capsys):
    assert main(["prepare", "--out", str(tmp_path / "slices")]) == 2
    assert "--phantom-subjects N" in capsys.readouterr().err


def test_prepare_from_phantom_subjects_made_on_the_fly(tmp_path):
    out = tmp_path / "slices"
    tiny = Path(__file__).parent / "profiles" / "tiny.yaml"
    assert main(["prepare", "--profile", str(tiny), "--source", "", "--phantom-subjects", "5", "--out", str(out),
                 "--seed", "3", "--set", "data.test_subjects=1"]) == 0
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["subjects"] == 5


def test_nproc_per_node_below_one_is_refused(tmp_path, capsys):
    assert main(["train-generator", "--data", str(tmp_path), "--out", str(tmp_path / "g"), "--nproc-per-node", "0"]) == 2
    assert "--nproc-per-node must be at least 1, got 0" in capsys.readouterr().err


def test_stages_of_one_pipeline_run_share_one_parent_run(tmp_path, monkeypatch):
    """Children find the parent a first stage made; a later duplicate parent is resolved away."""
    import dataclasses

    import mlflow
    from mlflow import MlflowClient

    from synthmri.config import load_config
    from synthmri.tracking import pipeline_parent_run, stage_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SYNTHMRI_PARENT_RUN_ID", raising=False)
    cfg = load_config("demo", {"tracking.tracking_uri": f"sqlite:///{tmp_path / 'm.db'}",
                               "tracking.pipeline_run": "run-1234"})
    with stage_run(cfg, stage="prepare", experiment="evaluation", run_name="a") as first:
        pass
    with stage_run(cfg, stage="report", experiment="pipeline", run_name="b") as second:
        pass
    client = MlflowClient()
    parent = client.get_run(first.info.run_id).data.tags["mlflow.parentRunId"]
    assert client.get_run(second.info.run_id).data.tags["mlflow.parentRunId"] == parent
    record = client.get_run(parent)
    assert record.info.run_name == "pipeline-run-1234" and record.data.tags["synthmri.pipeline_run"] == "run-1234"
    assert pipeline_parent_run(cfg.tracking) == parent  # found again, not made again
    other = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, pipeline_run="run-9"))
    assert pipeline_parent_run(other.tracking) != parent
    assert pipeline_parent_run(dataclasses.replace(cfg.tracking, pipeline_run="")) is None
    mlflow.set_tracking_uri(None)
