"""Where and with what each stage runs on Kubernetes: the one place pipelines set it.

Pipelines call :func:`place` on every task. It looks the stage up by the verb the task
runs, in :data:`STAGE_RESOURCES`, which the stages themselves declare (``synthmri.stages``):

- CPU and memory requests for every stage, and ``$SYNTHMRI_THREADS`` set to the CPU request
  (torch would otherwise start a thread per core of the node);
- for GPU stages only: the accelerator (type and count), the GPU node pool's node selector
  and tolerations (kfp-kubernetes), all from pipeline parameters. CPU stages carry none of
  them, so they never land on (or wait for) the tainted GPU nodes;
- credentials from Kubernetes Secrets as environment variables (``use_secret_as_env``),
  only on the stages that need them, never in the image or the compiled YAML;
- the cluster's service endpoints from the ``synthmri-endpoints`` ConfigMap (k8s/base).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from kfp import dsl, kubernetes
from kfp.dsl import pipeline_channel

from synthmri.stages import VERBS, Resources
from synthmri.threads import THREADS_ENV

#: ConfigMap of k8s/base with the in-cluster endpoints (Pushgateway, S3/MinIO).
ENDPOINTS_CONFIG_MAP = "synthmri-endpoints"
ENDPOINT_KEYS = ("SYNTHMRI_PUSHGATEWAY", "AWS_ENDPOINT_URL")

#: Size of the in-memory /dev/shm of GPU stages (counts against the pod's memory limit).
SHARED_MEMORY = "2Gi"

#: Keys of the S3 credentials Secret, exposed under the same names (boto3 reads them).
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
#: Keys of the optional MLflow credentials Secret (a server behind basic auth).
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


#: What one stage's container needs: declared by the stage itself (``synthmri.stages``).
StageResources = Resources

#: Requests sized for the demo profile (64x64 slices, tens of subjects). Paper-scale
#: pipelines pass their own table to :func:`place`.
STAGE_RESOURCES: dict[str, StageResources] = {
    name: verb.resources for name, verb in VERBS.items() if verb.resources is not None
}


@dataclass(frozen=True)
class Cluster:
    """The cluster settings a run was given, as pipeline parameters (or constants).

    Attributes:
        gpu_type: Accelerator resource of the GPU node pool, e.g. ``nvidia.com/gpu``.
        gpu_count: GPUs for multi-GPU stages (``train-generator``), as a string (``"2"``):
            the backend reads a pod resource given by a parameter as a string, and a number
            there silently gives the pod no GPU limit at all.
        gpu_node_selector: Node labels of the GPU node pool, a dict.
        gpu_tolerations: Tolerations for the GPU node pool's taints, a list of dicts.
        s3_secret: Name of the Secret with the S3 credentials.
        mlflow_secret: Name of the (optional) Secret with MLflow credentials.
    """

    gpu_type: Any
    gpu_count: Any
    gpu_node_selector: Any
    gpu_tolerations: Any
    s3_secret: Any
    mlflow_secret: Any


def stage_of(task: dsl.PipelineTask) -> str:
    """The ``synthmri`` verb a task runs, e.g. ``train-generator``."""
    spec = task.container_spec
    command = list(spec.command or []) if spec is not None else []
    if len(command) < 2 or command[0] != "synthmri":
        raise ValueError(f"task {task.name!r} does not run a 'synthmri <verb>' command: {command}")
    return command[1]


def request_threads(cpu: str) -> int:
    """Compute threads for a Kubernetes CPU request: ``"4"`` -> 4, ``"500m"`` -> 1, ``"2.5"`` -> 3."""
    millicores = float(cpu[:-1]) if cpu.endswith("m") else float(cpu) * 1000
    return max(1, math.ceil(millicores / 1000))


def place(task: dsl.PipelineTask, cluster: Optional[Cluster],
          table: Optional[dict[str, StageResources]] = None) -> dsl.PipelineTask:
    """Set one task's resources, node pool, endpoints and credentials.

    Args:
        task: A task of a ``synthmri`` component.
        cluster: The run's cluster settings; None sets requests only (no GPU, no Secret),
            for a pipeline meant for a plain CPU cluster.
        table: Resources per verb; defaults to :data:`STAGE_RESOURCES`.

    Returns:
        The same task, for chaining.

    Raises:
        KeyError: the task's verb has no row in the table.
    """
    stage = stage_of(task)
    resources = (table or STAGE_RESOURCES)[stage]
    task.set_cpu_request(resources.cpu)
    # torch reads the node's cores, not the pod's share: size its pools to the request.
    task.set_env_variable(THREADS_ENV, str(request_threads(resources.cpu)))
    task.set_memory_request(resources.memory)
    task.set_memory_limit(resources.memory)
    if cluster is None:
        return task
    if resources.gpu:
        gpu_count = cluster.gpu_count if resources.multi_gpu else 1
        task.set_accelerator_type(cluster.gpu_type)
        task.set_accelerator_limit(gpu_count)
        # kfp 2.17 writes a parameter given to the two calls above into the task's resources but
        # does not register it as an input of the task, so no enclosing ParallelFor declares it
        # and the backend's driver fails ("parent DAG does not have input parameter"). Register
        # them as kfp-kubernetes does for its own settings; every loop level then passes them on.
        task.register_pipeline_channels(
            [value for value in (cluster.gpu_type, gpu_count) if isinstance(value, pipeline_channel.PipelineChannel)])
        kubernetes.add_node_selector_json(task, cluster.gpu_node_selector)
        kubernetes.add_toleration_json(task, cluster.gpu_tolerations)
        # A container's /dev/shm is 64 MiB; NCCL between GPU processes and loader workers need more.
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=SHARED_MEMORY)
    # All optional: without the ConfigMap a stage pushes no metrics and uses AWS's S3; without the
    # S3 Secret, reading s3:// fails in boto3 with a message naming the missing credentials; without
    # the MLflow Secret the server must allow anonymous access.
    kubernetes.use_config_map_as_env(task, ENDPOINTS_CONFIG_MAP, {k: k for k in ENDPOINT_KEYS}, optional=True)
    if resources.s3:
        kubernetes.use_secret_as_env(task, cluster.s3_secret, {k: k for k in S3_SECRET_KEYS}, optional=True)
    if resources.mlflow:
        kubernetes.use_secret_as_env(task, cluster.mlflow_secret, {k: k for k in MLFLOW_SECRET_KEYS}, optional=True)
    return task
