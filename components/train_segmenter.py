"""``synthmri train-segmenter``: train a segmentation network on real, synthetic, mixed or ratio-mixed slices."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.common import GPU_IMAGE, config_args, optional_flag, optional_override


@dsl.container_component
def train_segmenter(
    real: Input[Dataset],
    segmenter: Output[Model],
    train: str,
    seed: int,
    profile: str,
    mlflow_tracking_uri: str,
    synthetic: Input[Dataset] = None,
    arch: Optional[str] = None,
    augment: Optional[bool] = None,
    real_share: Optional[float] = None,
    repeat: int = 0,
) -> dsl.ContainerSpec:
    """Train one segmenter (one repeat of one cell of the paper's grid).

    Validation always uses the real store's val split, whatever the training source.

    Args:
        real: Real slice store (training data for ``real``/``mixed``, validation always).
        segmenter: Output directory with the best checkpoint and the training history.
        train: Training source: ``real``, ``synthetic``, ``mixed`` or ``ratio``.
        seed: Random seed of this repeat.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI.
        synthetic: Synthetic slice store; required for ``synthetic`` and ``mixed``,
            left out for ``real`` so real-only training does not wait for a generator.
        arch: Segmentation architecture (``unet``); when omitted the profile decides.
        augment: Paper augmentation on or off; when omitted the profile decides.
        real_share: ``ratio`` only: share of real slices in the fixed pool (paper Fig. 4).
        repeat: Which repeat of its setting this task is (run names end in ``-r<repeat>``).

    Returns:
        The container spec running ``synthmri train-segmenter``.
    """
    return dsl.ContainerSpec(
        image=GPU_IMAGE,
        command=["synthmri", "train-segmenter"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--train", train,
            "--real", real.path,
            dsl.IfPresentPlaceholder(input_name="synthetic", then=["--synthetic", synthetic.path]),
            "--out", segmenter.path,
            "--seed", seed,
            "--repeats", "1",  # the pipeline fans repeats out as separate tasks
            "--repeat-index", repeat,
            optional_flag("arch", "--arch", arch),
            optional_flag("real_share", "--real-share", real_share),
            # --aug/--no-aug cannot be chosen from a runtime boolean; the config key can.
            optional_override("augment", "segmenter.augment", augment),
        ],
    )
