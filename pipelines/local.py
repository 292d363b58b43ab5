"""Run a compiled pipeline's container components on this machine, without Docker.

``kfp.local.SubprocessRunner`` executes a pipeline's DAG (loops, fan-ins and all) task by
task in local processes, but it was written for lightweight Python components: it refuses
container components, and it records a task's output artifacts only from the
``executor_output.json`` that the KFP executor writes. Our components run
``synthmri <verb>``, which is on this environment's PATH, and the cluster's launcher
records their outputs from the artifact paths it handed out. :func:`container_components`
makes the local runner do the same for the duration of a run: it lifts the refusal, and
records every declared output artifact at the path the task was given. It also lets a
``dsl.ParallelFor`` loop over a named output of an upstream task (kfp.local finds only
outputs named ``Output``, the return value of a Python component), and resolves a list
input's placeholder (``dsl.Collected`` into a container) to the JSON artifact list the
cluster's launcher passes, which ``synthmri`` reads (:func:`synthmri.io.artifact_paths`).

The patch targets kfp 2.17 (pinned in requirements-lock.txt); the run-local test fails if
a kfp upgrade moves these internals.
"""

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

from kfp import local
from kfp.local import executor_output_utils, io, placeholder_utils, subprocess_task_handler


def _outputs_with_declared_artifacts(original: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def get_outputs_for_task(executor_input: Any, component_spec: Any) -> dict[str, Any]:
        outputs = original(executor_input, component_spec)
        declared = component_spec.output_definitions.artifacts
        for name, artifact_list in executor_input.outputs.artifacts.items():
            if name not in outputs:
                artifacts = [executor_output_utils.runtime_artifact_to_dsl_artifact(a) for a in artifact_list.artifacts]
                outputs[name] = artifacts if declared[name].is_artifact_list else artifacts[0]
        return outputs

    return get_outputs_for_task


def _inputs_from_named_task_outputs(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_parent_input(self: io.IOStore, key: str) -> Any:
        try:
            return original(self, key)
        except ValueError:
            # Loop items bound to `<task>-<output>`: output names are identifiers (no '-'), task names may have one.
            task, _, output = key.removeprefix("pipelinechannel--").rpartition("-")
            if not task:
                raise
            return self.get_task_output(task, output)

    return get_parent_input


def _artifact_list_placeholders(original: Callable[[list[str]], list[Any]]) -> Callable[[list[str]], list[Any]]:
    def convert_placeholder_parts_to_path(parts: list[str]) -> list[Any]:
        if len(parts) == 3 and parts[:2] == ["inputs", "artifacts"]:
            return parts  # {{$.inputs.artifacts['name']}}: the whole list, rendered as JSON
        return original(parts)

    return convert_placeholder_parts_to_path


@contextlib.contextmanager
def container_components() -> Iterator[None]:
    """Let ``kfp.local.SubprocessRunner`` run container components, as the cluster would."""
    handler = subprocess_task_handler.SubprocessTaskHandler
    patches = [
        mock.patch.object(handler, "validate_not_container_component", lambda self, command: None),
        mock.patch.object(handler, "validate_image", lambda self, image: None),
        mock.patch.object(executor_output_utils, "get_outputs_for_task",
                          _outputs_with_declared_artifacts(executor_output_utils.get_outputs_for_task)),
        mock.patch.object(io.IOStore, "get_parent_input", _inputs_from_named_task_outputs(io.IOStore.get_parent_input)),
        mock.patch.object(placeholder_utils, "convert_placeholder_parts_to_path",
                          _artifact_list_placeholders(placeholder_utils.convert_placeholder_parts_to_path)),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


def run_local(pipeline_func: Callable[..., Any], arguments: dict[str, Any], pipeline_root: Path) -> Any:
    """Run a pipeline on this machine with ``kfp.local.SubprocessRunner(use_venv=False)``.

    Every task runs ``synthmri <verb>`` from this Python environment; GPU requests, node
    selectors and Secrets do not apply locally (kfp.local warns and ignores them), so pass
    ``mlflow_tracking_uri`` and a small ``profile`` in `arguments`.

    Args:
        pipeline_func: A ``@dsl.pipeline`` function.
        arguments: Pipeline parameters to override.
        pipeline_root: Directory for every task's artifacts.

    Returns:
        What kfp.local returns for the pipeline (its outputs, if any).

    Raises:
        RuntimeError: a task failed (kfp.local names it; its log is above).
    """
    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    # Tasks call `synthmri` by name: make it this environment's.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    with container_components():
        return pipeline_func(**arguments)
