"""The whole demo, end to end, at tiny size: `dvc repro` in a fresh copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e


def _copy_project(dest: Path) -> None:
    """Copy what a clean clone holds (tracked and not-ignored files), no outputs."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def test_demo_pipeline_end_to_end(tmp_path):
    project = tmp_path / "project"
    _copy_project(project)
    shutil.copy(REPO / "tests" / "profiles" / "tiny.yaml", project / "configs" / "tiny.yaml")
    params = (project / "params.yaml").read_text().replace("profile: demo", "profile: tiny")
    (project / "params.yaml").write_text(params)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SYNTHMRI_PUSHGATEWAY", "SYNTHMRI_PROFILE"):
        env.pop(key, None)
    _run(["git", "init", "-q"], project, env)

    _run(["dvc", "repro"], project, env)

    # DVC: every stage's outputs are tracked and up to date; the slice stores are in the cache.
    status = _run(["dvc", "status"], project, env).stdout
    assert "up to date" in status, status
    _run(["dvc", "push"], project, env)
    assert any((project / "dvc-remote").rglob("*")), "dvc push wrote nothing to the local remote"

    # The slice stores are complete and verified.
    from synthmri.data.store import SliceStore

    real = SliceStore(project / "data" / "slices", verify=True)
    assert set(real.split.tolist()) == {"train", "val", "test"}
    for model in ("ddpm", "stylegan2"):  # params.yaml: both trained and sampled
        synthetic = SliceStore(project / "data" / f"synthetic-{model}", verify=True)
        assert len(synthetic) == 32 and synthetic.manifest["generator"]["name"] == model

    # MLflow: runs of every stage with metrics; the generator registered with alias candidate.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        for model in ("ddpm", "stylegan2"):
            registration = json.loads((project / "models" / f"generator-{model}" / "registration.json").read_text())
            version = client.get_model_version_by_alias(f"synthmri-{model}", "candidate")
            assert str(version.version) == str(registration["version"])
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        stages = {run.data.tags.get("synthmri.stage") for run in runs}
        assert {"train-generator", "train-segmenter", "evaluate-segmenter", "evaluate-synthetic"} <= stages
        eval_runs = [r for r in runs if r.data.tags.get("synthmri.stage") == "evaluate-segmenter"]
        assert len(eval_runs) == 3 and all("mean_dice" in r.data.metrics for r in eval_runs)
        assert all(r.data.tags.get("synthmri.data.real") == real.content_hash for r in eval_runs)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_registry_uri exports it

    # The gate decided, and the report and summary say what it decided.
    decision = json.loads((project / "outputs" / "promotion.json").read_text())
    assert isinstance(decision["passed"], bool) and decision["criteria"]
    report = (project / "outputs" / "report" / "report.html").read_text()
    assert "Dice" in report and "data:image/png;base64," in report
    summary = _run(["synthmri", "summary", "--profile", "tiny"], project, env).stdout
    assert "report.html" in summary and "candidate" in summary
    assert "synthmri-ddpm version" in summary and "synthmri-stylegan2 version" in summary
