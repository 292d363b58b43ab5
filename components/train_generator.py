"""``synthmri train-generator``: train a generator and register it in MLflow."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.common import GPU_IMAGE, config_args


@dsl.container_component
def train_generator(
    slices: Input[Dataset],
    generator: Output[Model],
    model: str,
    seed: int,
    profile: str,
    mlflow_tracking_uri: str,
    gpu_count: str,
) -> dsl.ContainerSpec:
    """Train a generator on the training split and register it in the MLflow registry.

    Training length, batch size and every other setting come from the profile
    (``generator.<model>.*``), as the paper's Table 9 gives them.

    The new registered version (``synthmri-<model>``) gets the alias ``candidate``; the
    ``promote`` stage later decides whether it becomes ``champion``.

    Args:
        slices: Real slice store; its train and val splits are used (every non-test subject,
            as the paper trained its generators).
        generator: Output directory with checkpoints and sample grids; ``generate`` reads it.
        model: Generator family: ``progan``, ``stylegan1``, ``stylegan2``, ``stylegan3`` or ``ddpm``.
        seed: Random seed.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking and registry server URI.
        gpu_count: GPUs of the pod, a whole number as a string (the pipeline's ``gpu_count``,
            which also sets the pod's GPU limit); above 1 the verb runs one data-parallel
            process per GPU under ``torchrun`` (gradients averaged every step).

    Returns:
        The container spec running ``synthmri train-generator``.
    """
    return dsl.ContainerSpec(
        image=GPU_IMAGE,
        command=["synthmri", "train-generator"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--model", model,
            "--data", slices.path,
            "--out", generator.path,
            "--seed", seed,
            "--nproc-per-node", gpu_count,
            # A retried pod continues from its last checkpoint; a first run starts at step 0.
            "--resume",
        ],
    )
