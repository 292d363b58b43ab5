"""The command line: every verb has help; bad input exits non-zero with a named cause."""

from __future__ import annotations

import subprocess
import sys

import pytest

from synthmri.cli import build_parser, main

VERBS = [
    "phantom", "prepare", "train-generator", "generate", "evaluate-synthetic", "train-segmenter",
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
