"""``synthmri prepare``: BraTS volumes (or phantom subjects) to a slice store, split by subject."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.common import CPU_IMAGE, config_args


@dsl.container_component
def prepare(
    data_uri: str,
    phantom_subjects: int,
    slices: Output[Dataset],
    image_size: int,
    seed: int,
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Slice BraTS volumes into a slice store (manifest.json, index.csv, shards/).

    Args:
        data_uri: BraTS location: ``s3://bucket/prefix`` (credentials from the pod's
            environment) or a directory mounted into the pod. Empty: phantom subjects made
            in the pod stand in, so the pipeline runs on any cluster without data.
        phantom_subjects: Number of phantom subjects when ``data_uri`` is empty.
        slices: Output slice store, read by every later stage.
        image_size: Slice size in pixels after padding (below ``data.pad_to`` resamples).
        seed: Seed of the subject shuffle that makes the train/val/test split (and of the
            phantom subjects).
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI.

    Returns:
        The container spec running ``synthmri prepare``.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["synthmri", "prepare"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--source", data_uri,
            "--phantom-subjects", phantom_subjects,
            "--out", slices.path,
            "--size", image_size,
            "--seed", seed,
        ],
    )
