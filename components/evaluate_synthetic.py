"""``synthmri evaluate-synthetic``: is a synthetic store good, and is it a copy of patients?"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.common import GPU_IMAGE, config_args, metrics_args


@dsl.container_component
def evaluate_synthetic(
    real: Input[Dataset],
    synthetic: Input[Dataset],
    evaluation: Output[Artifact],
    segmenter: Input[Model],
    metrics: Output[Metrics],
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Judge synthetic slices: memorization, FID/IS and in-domain distribution metrics.

    Memorization: for each synthetic slice, the highest Pearson correlation against every
    training slice, compared with the same statistic for held-out real test slices.

    Args:
        real: Real slice store; its train and val splits (the generator's training set) are
            the reference, its test split the held-out baseline.
        synthetic: Synthetic slice store from ``generate``.
        evaluation: Output directory (``memorization.csv``, ``summary.json``) read by
            ``promote`` and ``report``.
        metrics: Memorization shares, FID, IS and the in-domain scores, as flat JSON.
        profile: Config profile name or YAML path inside the image (``quality.*`` names the
            Inception weights; ``memorization.*`` the search).
        mlflow_tracking_uri: MLflow tracking server URI.
        segmenter: A segmenter trained on real slices, whose features give the in-domain
            FD, KID and precision/recall. Required: the backend decides an ``IfPresent``
            from parameters only, so an optional artifact could never be passed.

    Returns:
        The container spec running ``synthmri evaluate-synthetic``.
    """
    return dsl.ContainerSpec(
        image=GPU_IMAGE,
        command=["synthmri", "evaluate-synthetic"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--real", real.path,
            "--synthetic", synthetic.path,
            "--segmenter", segmenter.path,
            "--out", evaluation.path,
            *metrics_args(metrics),
        ],
    )
