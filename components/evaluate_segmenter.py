"""``synthmri evaluate-segmenter``: 3D Dice and Hausdorff per label on the test subjects."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.common import GPU_IMAGE, config_args, metrics_args


@dsl.container_component
def evaluate_segmenter(
    segmenter: Input[Model],
    real: Input[Dataset],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Segment every test slice, restack per subject and score in 3D.

    Args:
        segmenter: Directory written by ``train-segmenter``.
        real: Real slice store; its test split is scored.
        evaluation: Output directory (``per_subject.csv``, ``summary.json``) read by
            ``gather``, ``promote`` and ``report``.
        metrics: Mean Dice, and Dice, maximum and 95th-percentile Hausdorff per structure,
            as flat JSON.
        profile: Config profile name or YAML path inside the image (``evaluation.eval_slices``
            chooses filtered or all slices).
        mlflow_tracking_uri: MLflow tracking server URI.

    Returns:
        The container spec running ``synthmri evaluate-segmenter``.
    """
    return dsl.ContainerSpec(
        image=GPU_IMAGE,
        command=["synthmri", "evaluate-segmenter"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--model", segmenter.path,
            "--data", real.path,
            "--out", evaluation.path,
            *metrics_args(metrics),
        ],
    )
