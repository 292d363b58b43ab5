"""``synthmri promote``: the gate that sets a registered generator's ``champion`` alias."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.common import CPU_IMAGE, config_args, metrics_args


@dsl.container_component
def promote(
    generator: Input[Model],
    memorization: Input[Artifact],
    real_evaluations: Input[Artifact],
    synthetic_evaluations: Input[Artifact],
    decision: Output[Artifact],
    metrics: Output[Metrics],
    model: str,
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Gate a registered generator on memorization and on relative Dice.

    Passing sets the alias ``champion`` and tags the version with the evidence. A failing
    gate is a result, not an error: the step records the decision and exits 0
    (``--exit-zero``) so the report still shows which criterion failed and why.

    Args:
        generator: Checkpoint directory written by ``train-generator``; its
            ``registration.json`` names the registry version this run made, so the gate
            judges exactly that version even when other runs register newer ones.
        memorization: Directory written by ``evaluate-synthetic``.
        real_evaluations: Real-only evaluations (``gather`` output or one evaluation);
            the gate uses the profile's architecture with augmentation, mean over repeats.
        synthetic_evaluations: This generator's evaluations (``gather`` output); the gate
            uses synthetic-only training in the same setting.
        decision: Output JSON file with the decision and its evidence.
        metrics: ``passed`` (0/1) and each criterion's value, as flat JSON.
        model: Generator family (``ddpm``; the profile's registry prefix makes it
            ``synthmri-ddpm``) or a full registered model name.
        profile: Config profile name or YAML path inside the image (``promotion.*``
            thresholds).
        mlflow_tracking_uri: MLflow tracking and registry server URI.

    Returns:
        The container spec running ``synthmri promote``.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["synthmri", "promote"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--model", model,
            "--version", dsl.ConcatPlaceholder([generator.path, "/registration.json"]),
            "--memorization", memorization.path,
            "--real-evaluation", real_evaluations.path,
            "--synthetic-evaluation", synthetic_evaluations.path,
            "--out", decision.path,
            *metrics_args(metrics),
            "--exit-zero",
        ],
    )
