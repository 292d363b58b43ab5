"""A stage's executor output is, field by field, what kfp's own executor writes.

The reference is kfp itself: a Python component whose ``Output[Metrics]`` logs the same
metrics with ``Metrics.log_metric``, run by ``kfp.dsl.executor.Executor`` on the same
executor input. The Kubeflow launcher reads that file and the UI shows the metrics from it.
"""

import json
import math
from pathlib import Path

import pytest

from synthmri.executor_output import ExecutorInputError, executor_output, write_executor_output

kfp_executor = pytest.importorskip("kfp.dsl.executor", reason="the kfp extra is not installed")
from kfp.dsl import HTML, Artifact, Metrics, Output  # noqa: E402

METRICS = {"mean_dice": 0.8123, "dice.ET": 0.75, "hausdorff.WT": 12.5, "passed": 1.0}


def executor_input(tmp_path: Path, outputs: dict[str, str], scheme: str = "") -> dict:
    """An executor input as the launcher hands it over: one runtime artifact per output."""
    root = tmp_path / "artifacts"
    return {
        "inputs": {"parameterValues": {"profile": "demo"}},
        "outputs": {
            "artifacts": {
                name: {"artifacts": [{
                    "name": f"projects/p/locations/l/metadataStores/default/artifacts/{i}",
                    "type": {"schemaTitle": schema, "schemaVersion": "0.0.1"},
                    "uri": f"{scheme}{root}/task/{name}",
                    "metadata": {},
                }]}
                for i, (name, schema) in enumerate(outputs.items())
            },
            "outputFile": str(tmp_path / "kfp_outputs" / "output_metadata.json"),
        },
    }


def reference(spec: dict, metrics: dict[str, float]) -> dict:
    """What kfp's executor writes for a Python component that logs `metrics`."""

    def step(evaluation: Output[Artifact], metrics_out: Output[Metrics], html: Output[HTML]) -> None:
        for key, value in metrics.items():
            metrics_out.log_metric(key, value)

    path = kfp_executor.Executor(spec, step).execute()
    return json.loads(Path(path).read_text())


OUTPUTS = {"evaluation": "system.Artifact", "metrics_out": "system.Metrics", "html": "system.HTML"}


def test_executor_output_equals_kfps_for_the_same_metrics(tmp_path: Path) -> None:
    spec = executor_input(tmp_path, OUTPUTS)
    expected = reference(spec, METRICS)
    ours = json.loads(write_executor_output(json.dumps(spec), METRICS).read_text())
    assert ours == expected
    # and the parts the Kubeflow UI reads, spelled out
    (metrics_artifact,) = ours["artifacts"]["metrics_out"]["artifacts"]
    assert metrics_artifact["metadata"] == METRICS
    assert ours["artifacts"]["evaluation"]["artifacts"][0]["metadata"] == {}


def test_metadata_the_launcher_gave_is_kept_like_kfp_does(tmp_path: Path) -> None:
    spec = executor_input(tmp_path, OUTPUTS)
    spec["outputs"]["artifacts"]["metrics_out"]["artifacts"][0]["metadata"] = {"display_name": "gate"}
    assert executor_output(spec, METRICS) == reference(spec, METRICS)


def test_a_step_without_output_artifacts_writes_what_kfp_writes(tmp_path: Path) -> None:
    spec = executor_input(tmp_path, {})

    def step() -> None:
        return None

    expected = json.loads(Path(kfp_executor.Executor(spec, step).execute()).read_text())
    assert executor_output(spec, METRICS) == expected == {}


def test_non_finite_scores_are_left_out_because_protobuf_json_has_no_nan(tmp_path: Path) -> None:
    spec = executor_input(tmp_path, OUTPUTS, scheme="minio://")
    written = write_executor_output(spec, {**METRICS, "hausdorff.ET": math.nan, "dice.TC": math.inf})
    text = written.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["artifacts"]["metrics_out"]["artifacts"][0]["metadata"] == METRICS
    # the URI is the launcher's, untouched
    assert json.loads(text)["artifacts"]["html"]["artifacts"][0]["uri"].startswith("minio://")


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"outputs": {"artifacts": {}}}', "no outputs.outputFile"),
    ('{"outputs": {"outputFile": "/tmp/x.json", "artifacts": {"metrics": {"artifacts": [{"name": "m"}]}}}}',
     "output artifact 'metrics' has no uri"),
])
def test_bad_executor_input_is_named(bad: str, message: str) -> None:
    with pytest.raises(ExecutorInputError, match=message):
        write_executor_output(bad, METRICS)
