"""Kubernetes resources of each stage: the one place a pipeline sets them.

Pipelines call :func:`apply_resources` on every task. It looks the stage up by the verb
the task runs, so a new component only needs a row in :data:`STAGE_RESOURCES`. GPU node
pools (kfp-kubernetes node selectors and tolerations) belong in this function too.
"""

from dataclasses import dataclass
from typing import Optional

from kfp import dsl


@dataclass(frozen=True)
class StageResources:
    """Requests of one stage's container.

    Attributes:
        cpu: CPU request (Kubernetes quantity). No CPU limit is set: batch stages may use
            idle cores rather than be throttled.
        memory: Memory request, also used as the limit so a stage that outgrows it fails
            clearly (OOMKilled) instead of starving its node.
        accelerated: The stage benefits from a GPU (training and sampling).
    """

    cpu: str
    memory: str
    accelerated: bool = False


#: Requests sized for the demo profile (64x64 slices, tens of subjects). Paper-scale
#: pipelines pass their own table to :func:`apply_resources`.
STAGE_RESOURCES: dict[str, StageResources] = {
    "phantom": StageResources(cpu="1", memory="2Gi"),
    "prepare": StageResources(cpu="2", memory="4Gi"),
    "train-generator": StageResources(cpu="4", memory="8Gi", accelerated=True),
    "generate": StageResources(cpu="4", memory="8Gi", accelerated=True),
    "evaluate-synthetic": StageResources(cpu="2", memory="8Gi"),
    "train-segmenter": StageResources(cpu="4", memory="8Gi", accelerated=True),
    "evaluate-segmenter": StageResources(cpu="2", memory="4Gi"),
    "promote": StageResources(cpu="500m", memory="1Gi"),
    "report": StageResources(cpu="1", memory="2Gi"),
}


def stage_of(task: dsl.PipelineTask) -> str:
    """The ``synthmri`` verb a task runs, e.g. ``train-generator``."""
    spec = task.container_spec
    command = list(spec.command or []) if spec is not None else []
    if len(command) < 2 or command[0] != "synthmri":
        raise ValueError(f"task {task.name!r} does not run a 'synthmri <verb>' command: {command}")
    return command[1]


def apply_resources(
    task: dsl.PipelineTask,
    accelerator: Optional[str] = None,
    table: Optional[dict[str, StageResources]] = None,
) -> dsl.PipelineTask:
    """Set CPU/memory requests (and a GPU for accelerated stages) on one task.

    Args:
        task: A task of a ``synthmri`` component.
        accelerator: Accelerator type for accelerated stages, e.g. ``nvidia.com/gpu``;
            None keeps every stage on CPU (the demo). CPU-only stages never get one.
        table: Resources per verb; defaults to :data:`STAGE_RESOURCES`.

    Returns:
        The same task, for chaining.
    """
    resources = (table or STAGE_RESOURCES)[stage_of(task)]
    task.set_cpu_request(resources.cpu)
    task.set_memory_request(resources.memory)
    task.set_memory_limit(resources.memory)
    if accelerator and resources.accelerated:
        task.set_accelerator_type(accelerator)
        task.set_accelerator_limit(1)
    return task
