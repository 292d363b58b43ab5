"""``synthmri report``: the run's tables, memorization evidence, samples and promotion."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.common import IMAGE, config_args


@dsl.container_component
def report(
    real_evaluation: Input[Artifact],
    synthetic_evaluation: Input[Artifact],
    mixed_evaluation: Input[Artifact],
    memorization: Input[Artifact],
    real: Input[Dataset],
    synthetic: Input[Dataset],
    promotion: Input[Artifact],
    report_dir: Output[Artifact],
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Write the Markdown/HTML report of one quick run.

    Args:
        real_evaluation: ``evaluate-segmenter`` output of real-only training.
        synthetic_evaluation: ``evaluate-segmenter`` output of synthetic-only training.
        mixed_evaluation: ``evaluate-segmenter`` output of real + synthetic training.
        memorization: Directory written by ``evaluate-synthetic``.
        real: Real slice store (reference samples).
        synthetic: Synthetic slice store (synthetic samples).
        promotion: Decision JSON written by ``promote``.
        report_dir: Output directory with the report and its figures.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI.

    Returns:
        The container spec running ``synthmri report``.
    """
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["synthmri", "report"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--out", report_dir.path,
            "--evaluation", real_evaluation.path,
            "--evaluation", synthetic_evaluation.path,
            "--evaluation", mixed_evaluation.path,
            "--memorization", memorization.path,
            "--real", real.path,
            "--synthetic", synthetic.path,
            "--promotion", promotion.path,
        ],
    )
