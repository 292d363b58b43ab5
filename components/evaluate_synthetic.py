"""``synthmri evaluate-synthetic``: memorization of synthetic slices."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.common import IMAGE, config_args


@dsl.container_component
def evaluate_synthetic(
    real: Input[Dataset],
    synthetic: Input[Dataset],
    memorization: Output[Artifact],
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Measure how closely synthetic slices copy the training slices.

    For each synthetic slice, the highest Pearson correlation against every training
    slice, compared with the same statistic for held-out real test slices.

    Args:
        real: Real slice store; its train split is the reference, its test split the
            held-out baseline.
        synthetic: Synthetic slice store from ``generate``.
        memorization: Output directory (``memorization.csv``, ``summary.json``) read by
            ``promote`` and ``report``.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI.

    Returns:
        The container spec running ``synthmri evaluate-synthetic``.
    """
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["synthmri", "evaluate-synthetic"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--real", real.path,
            "--synthetic", synthetic.path,
            "--out", memorization.path,
        ],
    )
