"""``synthmri train-segmenter``: train a segmentation network on real, synthetic, mixed or ratio-mixed slices.

Two components run the verb, because the Kubeflow backend's driver decides an
``IfPresent`` from parameter inputs only: an optional *artifact* input can never switch
``--synthetic`` on. ``train_segmenter_real`` trains on real slices alone (the baseline and
the feature network) and has no synthetic input; ``train_segmenter`` always takes one.
"""

from typing import Any, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.common import GPU_IMAGE, config_args, optional_flag, optional_override


def _container(*, real: Any, segmenter: Any, train: Any, seed: Any, profile: Any, mlflow_tracking_uri: Any,
               arch: Any, augment: Any, repeat: Any, synthetic_args: list[Any]) -> dsl.ContainerSpec:
    return dsl.ContainerSpec(
        image=GPU_IMAGE,
        command=["synthmri", "train-segmenter"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--train", train,
            "--real", real.path,
            *synthetic_args,
            "--out", segmenter.path,
            "--seed", seed,
            "--repeats", "1",  # the pipeline fans repeats out as separate tasks
            optional_flag("repeat", "--repeat-index", repeat),
            optional_flag("arch", "--arch", arch),
            # --aug/--no-aug cannot be chosen from a runtime boolean; the config key can.
            optional_override("augment", "segmenter.augment", augment),
        ],
    )


@dsl.container_component
def train_segmenter(
    real: Input[Dataset],
    synthetic: Input[Dataset],
    segmenter: Output[Model],
    train: str,
    seed: int,
    profile: str,
    mlflow_tracking_uri: str,
    arch: Optional[str] = None,
    augment: Optional[bool] = None,
    real_share: Optional[float] = None,
    repeat: Optional[int] = None,
) -> dsl.ContainerSpec:
    """Train one segmenter with synthetic data (one repeat of one cell of the paper's grid).

    Args:
        real: Real slice store: training data for ``mixed`` and ``ratio``, and the
            validation subjects of every run that trains on real data.
        synthetic: Synthetic slice store of one generator.
        segmenter: Output directory with the best checkpoint and the training history.
        train: Training source: ``synthetic``, ``mixed`` or ``ratio``.
        seed: Random seed of this repeat.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI.
        arch: Segmentation architecture (``unet``, ``swin``); when omitted the profile decides.
        augment: Paper augmentation on or off; when omitted the profile decides.
        real_share: ``ratio`` only: share of real slices in the fixed pool (paper Fig. 4).
        repeat: Which repeat of its setting this task is (run names end in ``-r<repeat>``);
            when omitted, 0.

    Returns:
        The container spec running ``synthmri train-segmenter``.
    """
    return _container(real=real, segmenter=segmenter, train=train, seed=seed, profile=profile,
                      mlflow_tracking_uri=mlflow_tracking_uri, arch=arch, augment=augment, repeat=repeat,
                      synthetic_args=["--synthetic", synthetic.path,
                                      optional_flag("real_share", "--real-share", real_share)])


@dsl.container_component
def train_segmenter_real(
    real: Input[Dataset],
    segmenter: Output[Model],
    seed: int,
    profile: str,
    mlflow_tracking_uri: str,
    arch: Optional[str] = None,
    augment: Optional[bool] = None,
    repeat: Optional[int] = None,
) -> dsl.ContainerSpec:
    """Train one segmenter on real slices only: the baseline of relative Dice, and the
    network whose features judge synthetic data in-domain.

    Args:
        real: Real slice store (train split to train, val split to select the checkpoint).
        segmenter: Output directory with the best checkpoint and the training history.
        seed: Random seed of this repeat.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI.
        arch: Segmentation architecture (``unet``, ``swin``); when omitted the profile decides.
        augment: Paper augmentation on or off; when omitted the profile decides.
        repeat: Which repeat of its setting this task is; when omitted, 0.

    Returns:
        The container spec running ``synthmri train-segmenter --train real``.
    """
    return _container(real=real, segmenter=segmenter, train="real", seed=seed, profile=profile,
                      mlflow_tracking_uri=mlflow_tracking_uri, arch=arch, augment=augment, repeat=repeat,
                      synthetic_args=[])
