"""MLflow experiments open on the runs table, and every slice store a run reads is a dataset input."""

import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from synthmri.config import load_config
from synthmri.data.store import SliceStore
from synthmri.tracking import (
    DATASET_DIGEST_CHARS,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    ensure_experiment,
    stage_run,
)


def test_the_experiment_kind_is_one_the_mlflow_ui_knows() -> None:
    """The value is the MLflow UI's own (its bundled JavaScript enum), not ours."""
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    texts = (path.read_text(errors="ignore") for path in bundle.glob("main.*.js"))
    assert any(f'CUSTOM_MODEL_DEVELOPMENT="{EXPERIMENT_KIND}"' in text for text in texts)
    assert EXPERIMENT_KIND_TAG == "mlflow.experimentKind"


def test_stage_runs_tag_their_experiment_as_model_development(mlflow_uri: str, tiny_config) -> None:
    with stage_run(tiny_config, stage="prepare", experiment="evaluation", run_name="a") as run:
        pass
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.name == "synthmri-evaluation"
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_an_existing_experiment_is_tagged_and_a_users_kind_is_kept(mlflow_uri: str, tiny_config) -> None:
    client = MlflowClient()
    untagged = client.create_experiment("synthmri-generators")
    chosen = client.create_experiment("synthmri-segmenters", tags={EXPERIMENT_KIND_TAG: "finetuning"})
    assert ensure_experiment(tiny_config.tracking, "generators") == untagged
    assert ensure_experiment(tiny_config.tracking, "segmenters") == chosen
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "finetuning"


def test_the_pipeline_parent_experiment_is_tagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SYNTHMRI_PARENT_RUN_ID", raising=False)
    cfg = load_config("demo", {"tracking.tracking_uri": f"sqlite:///{tmp_path / 'm.db'}",
                               "tracking.pipeline_run": "run-77"})
    with stage_run(cfg, stage="prepare", experiment="evaluation", run_name="a") as run:
        pass
    client = MlflowClient()
    parent = client.get_run(client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"])
    assert client.get_experiment(parent.info.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    mlflow.set_tracking_uri(None)


def test_every_store_a_run_reads_is_a_dataset_input(mlflow_uri: str, tiny_config, phantom_store: Path,
                                                     tmp_path: Path) -> None:
    store = SliceStore(phantom_store)
    other = SliceStore(shutil.copytree(phantom_store, tmp_path / "synthetic-ddpm"))
    with stage_run(tiny_config, stage="evaluate-synthetic", experiment="evaluation", run_name="judge",
                   datasets={"real": store, "synthetic": other}) as run:
        pass
    record = MlflowClient().get_run(run.info.run_id)
    inputs = {next(t.value for t in item.tags if t.key == "mlflow.data.context"): item.dataset
              for item in record.inputs.dataset_inputs}
    assert set(inputs) == {"real", "synthetic"}
    for dataset, read in ((inputs["real"], store), (inputs["synthetic"], other)):
        assert dataset.name == read.path.name
        assert dataset.digest == read.content_hash[:DATASET_DIGEST_CHARS]
        assert len(dataset.digest) <= 36  # MLflow's MAX_DATASET_DIGEST_SIZE
        assert str(read.path) in dataset.source
    # the full hash stays a tag, as before
    assert record.data.tags["synthmri.data.real"] == store.content_hash
