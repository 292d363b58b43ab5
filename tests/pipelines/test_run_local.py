"""``synthmri pipeline run-local``: the ``quick`` pipeline's compiled graph, run here at tiny size.

Every task is a real ``synthmri <verb>`` process started by ``kfp.local.SubprocessRunner``:
the loops over the grid cells and over the generators, the fan-ins (``dsl.Collected``) and
the artifact passing are Kubeflow's, only the pods are local processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kfp", reason="the kfp extra is not installed")

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "profiles" / "tiny.yaml"


def _only(root: Path, pattern: str) -> Path:
    matches = sorted(root.glob(pattern))
    assert len(matches) == 1, f"{pattern}: expected one match under {root}, found {matches}"
    return matches[0]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kfp-local")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    command = [sys.executable, "-m", "synthmri", "pipeline", "run-local", "--pipeline", "quick",
               "--project-root", str(REPO), "--pipeline-root", str(root / "artifacts"), "--parallelism", "2",
               "--param", f"profile={TINY}", "--param", "image_size=32", "--param", "n_synthetic=32",
               "--param", "phantom_subjects=8", "--param", f"mlflow_tracking_uri=sqlite:///{root / 'mlflow.db'}"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "quick finished" in done.stdout
    return root


def test_quick_runs_every_stage_and_writes_the_report(quick_run: Path) -> None:
    run_dir = _only(quick_run / "artifacts", "synthmri-*")
    html = (_only(run_dir, "**/report/html")).read_text()
    assert html.startswith("<!DOCTYPE html>") and "synthmri report" in html
    markdown = _only(run_dir, "**/report/markdown").read_text()
    assert "Dice" in markdown
    report = json.loads(_only(run_dir, "**/report/report_dir/report.json").read_text())
    sources = sorted({row["train"] for row in report["segmentation"]})
    assert sources == ["mixed", "real", "synthetic"]
    assert all(row["n"] == 1 for row in report["segmentation"])  # one repeat each


def test_fan_ins_gather_every_grid_cell(quick_run: Path) -> None:
    run_dir = _only(quick_run / "artifacts", "synthmri-*")
    gathered = sorted(run_dir.glob("**/gather*/gathered/summary.json"))
    counts = sorted(json.loads(path.read_text())["evaluations"] for path in gathered)
    assert counts == [1, 2]  # real baseline: unet/aug/1 repeat; the generator: synthetic and mixed
    for path in gathered:
        for run in json.loads(path.read_text())["runs"]:
            assert (path.parent / run).is_file()


def test_gate_decision_and_metrics_reach_their_artifacts(quick_run: Path) -> None:
    run_dir = _only(quick_run / "artifacts", "synthmri-*")
    decision = json.loads(_only(run_dir, "**/promote/decision").read_text())
    assert {c["name"] for c in decision["criteria"]} == {"memorization", "relative_dice"}
    assert decision["model"] == "synthmri-ddpm"
    metrics = json.loads(_only(run_dir, "**/promote/metrics").read_text())
    assert metrics["passed"] in (0.0, 1.0) and set(metrics) == {"passed", "memorization", "relative_dice"}
    for evaluation in run_dir.glob("**/evaluate-segmenter*/metrics"):
        scores = json.loads(evaluation.read_text())
        assert 0.0 <= scores["mean_dice"] <= 1.0 and "dice.WT" in scores


def test_metrics_reach_the_executor_output_that_kubeflow_shows(quick_run: Path) -> None:
    """Each Metrics step wrote the executor output; its Metrics artifact carries the scores as metadata."""
    run_dir = _only(quick_run / "artifacts", "synthmri-*")
    steps = sorted({p.parent for p in run_dir.glob("**/metrics")})
    assert {step.name.split("-")[0] for step in steps} >= {"promote", "evaluate"}
    for step in steps:
        output = json.loads((step / "executor_output.json").read_text())
        (artifact,) = output["artifacts"]["metrics"]["artifacts"]
        assert artifact["uri"] == str(step / "metrics")
        assert artifact["metadata"] == json.loads((step / "metrics").read_text()), step.name


def test_generator_is_registered_in_the_runs_mlflow(quick_run: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{quick_run / 'mlflow.db'}",
                          registry_uri=f"sqlite:///{quick_run / 'mlflow.db'}")
    versions = client.search_model_versions("name='synthmri-ddpm'")
    assert len(versions) == 1
    version = client.get_model_version_by_alias("synthmri-ddpm", "candidate")
    assert version.version == versions[0].version
    assert version.tags.get("synthmri.gate.passed") in ("true", "false")
