"""What every component shares: the project images and the config flags of the CLI.

Components are thin wrappers around ``synthmri <verb>``; the only knowledge they hold is
which flags a verb takes. Config precedence is the CLI's: profile, then ``--set``
overrides, then the verb's own flags.
"""

from __future__ import annotations

from typing import Any

from kfp import dsl

from synthmri import __version__

#: Registry and repository of the project images (docker/).
IMAGE_REPOSITORY = "ghcr.io/synthmri/synthmri"

#: The CPU image: tagged with the package version, never ``latest``, so a compiled pipeline
#: names exactly the code it runs.
CPU_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"

#: The CUDA image of the same version, for the stages that run on GPU nodes.
GPU_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}-cuda"


def profile_args(profile: Any) -> list[Any]:
    """``--profile <profile>``: the config profile (``demo``, ``paper`` or a YAML path)."""
    return ["--profile", profile]


def tracking_args(mlflow_tracking_uri: Any) -> list[Any]:
    """Point the verb at the MLflow server with a config override.

    The URI travels as ``--set tracking.tracking_uri=<uri>`` rather than as an environment
    variable because KFP sets environment variables only from constants, not from pipeline
    parameters. Note the library lets ``$MLFLOW_TRACKING_URI`` win over the config, so a
    pod that also carries that variable uses the variable.
    """
    return ["--set", f"tracking.tracking_uri={mlflow_tracking_uri}",
            # One MLflow parent run per pipeline run: the stages' runs become its children.
            "--set", f"tracking.pipeline_run={dsl.PIPELINE_JOB_ID_PLACEHOLDER}"]


def config_args(profile: Any, mlflow_tracking_uri: Any) -> list[Any]:
    """Profile and MLflow flags shared by every verb that logs to MLflow."""
    return profile_args(profile) + tracking_args(mlflow_tracking_uri)


def optional_flag(input_name: str, flag: str, value: Any) -> dsl.IfPresentPlaceholder:
    """``flag value`` only when the optional input `input_name` was given, else nothing.

    Lets the profile decide whatever the pipeline does not set explicitly.
    """
    return dsl.IfPresentPlaceholder(input_name=input_name, then=[flag, value])


def optional_override(input_name: str, key: str, value: Any) -> dsl.IfPresentPlaceholder:
    """``--set key=value`` only when the optional input `input_name` was given."""
    return dsl.IfPresentPlaceholder(input_name=input_name, then=["--set", f"{key}={value}"])


def metrics_args(metrics: Any) -> list[Any]:
    """Report a step's scores on its ``Metrics`` output `metrics`, for the Kubeflow UI.

    ``--metrics-out`` writes them as the artifact's file (flat JSON); ``--executor-input``
    hands the verb the executor input, so it also writes the executor output whose artifact
    metadata the launcher records and the UI shows as the run's metrics (what a Python
    component's ``Metrics.log_metric`` produces).
    """
    return ["--metrics-out", metrics.path, "--executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER]
