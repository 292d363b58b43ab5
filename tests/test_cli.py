"""The command line: every verb has help; bad input exits non-zero with a named cause."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from synthmri.cli import build_parser, main

VERBS = [
    "phantom", "prepare", "train-generator", "generate", "evaluate-synthetic", "share", "train-segmenter",
    "evaluate-segmenter", "promote", "report", "summary", "pipeline",
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
    settings = ["segmenter.ratio_shares=[0.0, 1.0]", "segmenter.ratio_total=12", "segmenter.unet.train_samples=16",
                "segmenter.unet.batch_size=8", "segmenter.unet.val_every_samples=16", "segmenter.repeats=1",
                "data.size=32", "data.pad_to=64", "segmenter.unet.filters=[8, 16, 32]",
                "segmenter.unet.deep_supervision_heads=1"]
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # mlflow_uri changes directory
    code = main(["train-segmenter", "--profile", str(demo), "--train", "ratio", "--real", str(phantom_store),
                 "--synthetic", str(synthetic), "--out", str(tmp_path / "sweep"),
                 *(arg for s in settings for arg in ("--set", s))])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["share-000", "share-100"]
    assert "unet-ratio0-aug-s0" in capsys.readouterr().out


def test_share_rejects_a_threshold_that_is_no_correlation(tmp_path, capsys):
    code = main(["share", "--synthetic", str(tmp_path / "s"), "--real", str(tmp_path / "r"), "--out",
                 str(tmp_path / "o"), "--threshold", "1.2"])
    assert code == 2 and "--threshold must be a correlation in [-1, 1], got 1.2" in capsys.readouterr().err


def test_share_names_a_missing_store(tmp_path, capsys):
    code = main(["share", "--synthetic", str(tmp_path / "nosuchstore"), "--real", str(tmp_path / "r"), "--out",
                 str(tmp_path / "o")])
    assert code == 1 and "nosuchstore" in capsys.readouterr().err
