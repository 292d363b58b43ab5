"""What a stage run as a Kubeflow container step reports back: the executor output.

A Kubeflow Pipelines (v2) step receives its *executor input* (JSON: its inputs, and for each
output artifact a name, a URI and a type) and may write an *executor output* to the file the
executor input names (``outputs.outputFile``). The launcher merges each output artifact's
``metadata`` from that file into the artifact it records in ML Metadata; the Kubeflow UI
shows a ``system.Metrics`` artifact's metadata as the run's metrics table and compares runs
on it. A Python component gets this from ``Metrics.log_metric``; a container component has
to write the file itself, which is what :func:`write_executor_output` does, in the same
shape as kfp's own executor (``kfp.dsl.executor.Executor.write_executor_output``): for
every output artifact ``{"name", "uri", "metadata"}``, the metrics in the metadata of the
``system.Metrics`` ones.

Plain JSON: the library never imports kfp.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from synthmri.io import atomic_write_bytes

#: The artifact type whose metadata the Kubeflow UI shows as scalar metrics.
METRICS_SCHEMA = "system.Metrics"


class ExecutorInputError(ValueError):
    """The executor input a step was given is not what Kubeflow passes."""


def _parse(executor_input: str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(executor_input, Mapping):
        return executor_input
    try:
        parsed = json.loads(executor_input)
    except json.JSONDecodeError as exc:
        raise ExecutorInputError(f"--executor-input is not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ExecutorInputError(f"--executor-input must be a JSON object, got {type(parsed).__name__}")
    return parsed


def executor_output(executor_input: str | Mapping[str, Any], metrics: Mapping[str, float]) -> dict[str, Any]:
    """The executor output of a step whose ``system.Metrics`` outputs carry `metrics`.

    Args:
        executor_input: The step's executor input (``{{$}}``), as JSON text or parsed.
        metrics: Scalar metrics, flat names to numbers. Non-finite values are left out: the
            launcher parses the file as protobuf JSON, which has no NaN or infinity.

    Returns:
        ``{"artifacts": {name: {"artifacts": [{"name", "uri", "metadata"}]}}}`` for every
        output artifact (no ``artifacts`` key when the step has none), as kfp's executor
        writes it.

    Raises:
        ExecutorInputError: the input is not JSON or lacks an output artifact's URI (named).
    """
    spec = _parse(executor_input)
    scalars = {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    artifacts: dict[str, Any] = {}
    for name, listing in (spec.get("outputs") or {}).get("artifacts", {}).items():
        entries = (listing or {}).get("artifacts") or []
        if not entries:
            continue
        first = entries[0]
        if "uri" not in first:
            raise ExecutorInputError(f"--executor-input: output artifact {name!r} has no uri")
        metadata = dict(first.get("metadata") or {})
        if (first.get("type") or {}).get("schemaTitle") == METRICS_SCHEMA:
            metadata.update(scalars)
        artifacts[name] = {"artifacts": [{"name": first.get("name", ""), "uri": first["uri"], "metadata": metadata}]}
    return {"artifacts": artifacts} if artifacts else {}


def write_executor_output(executor_input: str | Mapping[str, Any], metrics: Mapping[str, float]) -> Path:
    """Write :func:`executor_output` to the file the executor input names, atomically.

    Returns:
        The path written (``outputs.outputFile`` of the executor input).

    Raises:
        ExecutorInputError: no ``outputs.outputFile`` in the executor input, or see
            :func:`executor_output`.
    """
    spec = _parse(executor_input)
    output_file = (spec.get("outputs") or {}).get("outputFile")
    if not output_file:
        raise ExecutorInputError("--executor-input has no outputs.outputFile to write the executor output to")
    path = Path(output_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(executor_output(spec, metrics)).encode())
    return path


__all__ = ["ExecutorInputError", "METRICS_SCHEMA", "executor_output", "write_executor_output"]
