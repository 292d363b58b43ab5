"""``synthmri share``: the synthetic store with every near-copy of a patient removed."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.common import GPU_IMAGE, config_args


@dsl.container_component
def share(
    synthetic: Input[Dataset],
    real: Input[Dataset],
    memorization: Input[Artifact],
    shareable: Output[Dataset],
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Write a shareable synthetic store: slices too close to a training slice removed.

    A slice goes when its highest correlation with any training slice exceeds the
    threshold (``memorization.share_threshold``, else the held-out baseline's maximum);
    ``removed.csv`` names each removed slice and the training slice it copies.

    Args:
        synthetic: Synthetic slice store from ``generate``.
        real: Real slice store (train and val splits, the generator's training set: what must
            not leak; test split: the baseline).
        memorization: ``evaluate-synthetic``'s output for the same stores: its search is
            reused when stores and settings match (else searched again, and the log says why).
        shareable: Output slice store with ``removed.csv`` and ``share_report.json``.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI.

    Returns:
        The container spec running ``synthmri share``.
    """
    return dsl.ContainerSpec(
        image=GPU_IMAGE,
        command=["synthmri", "share"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--synthetic", synthetic.path,
            "--real", real.path,
            "--memorization", memorization.path,
            "--out", shareable.path,
        ],
    )
