"""``synthmri generate``: sample a synthetic slice store from a trained generator."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.common import GPU_IMAGE, config_args


@dsl.container_component
def generate(
    generator: Input[Model],
    synthetic: Output[Dataset],
    n_synthetic: int,
    seed: int,
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Sample synthetic slices (5 channels, labels snapped to 0/51/102/204).

    Reads the generator from the upstream checkpoint directory rather than from the
    registry alias, so a run samples exactly the generator it trained even when other
    runs register newer versions meanwhile.

    Args:
        generator: Checkpoint directory written by ``train-generator``.
        synthetic: Output synthetic slice store, same layout as the real one.
        n_synthetic: Number of synthetic slices.
        seed: Sampling seed; the same seed gives the same bytes on CPU.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI.

    Returns:
        The container spec running ``synthmri generate``.
    """
    return dsl.ContainerSpec(
        image=GPU_IMAGE,
        command=["synthmri", "generate"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--generator", generator.path,
            "--n", n_synthetic,
            "--out", synthetic.path,
            "--seed", seed,
        ],
    )
