"""``synthmri train-generator``: train a generator and register it in MLflow."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.common import IMAGE, config_args, optional_flag


@dsl.container_component
def train_generator(
    slices: Input[Dataset],
    generator: Output[Model],
    model: str,
    seed: int,
    profile: str,
    mlflow_tracking_uri: str,
    iterations: Optional[int] = None,
    kimg: Optional[float] = None,
) -> dsl.ContainerSpec:
    """Train a generator on the training split and register it in the MLflow registry.

    The new registered version (``synthmri-<model>``) gets the alias ``candidate``; the
    ``promote`` stage later decides whether it becomes ``champion``.

    Args:
        slices: Real slice store; only its train split is used.
        generator: Output directory with checkpoints and sample grids; ``generate`` reads it.
        model: Generator family: ``progan``, ``stylegan1``, ``stylegan2``, ``stylegan3`` or ``ddpm``.
        seed: Random seed.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking and registry server URI.
        iterations: ``ddpm`` only: training iterations; when omitted the profile decides.
        kimg: GANs only: thousands of real images to train on; when omitted the profile decides.

    Returns:
        The container spec running ``synthmri train-generator``.
    """
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["synthmri", "train-generator"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--model", model,
            "--data", slices.path,
            "--out", generator.path,
            "--seed", seed,
            optional_flag("iterations", "--iterations", iterations),
            optional_flag("kimg", "--kimg", kimg),
            # A retried pod continues from its last checkpoint; a first run starts at step 0.
            "--resume",
        ],
    )
