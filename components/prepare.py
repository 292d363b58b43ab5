"""``synthmri prepare``: BraTS volumes to a slice store, split by subject.

Two components call the same verb: :func:`prepare` reads a dataset produced upstream in
the pipeline (e.g. by ``phantom``); :func:`prepare_from_uri` reads BraTS from a location
given as a string (``s3://bucket/prefix`` or a path mounted into the pod).
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.common import IMAGE, config_args


def _prepare_spec(source, out, image_size, seed, profile, mlflow_tracking_uri) -> dsl.ContainerSpec:
    """The one ``synthmri prepare`` call behind both components (they differ only in the source's type)."""
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["synthmri", "prepare"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--source", source,
            "--out", out,
            "--size", image_size,
            "--seed", seed,
        ],
    )


@dsl.container_component
def prepare(
    source: Input[Dataset],
    slices: Output[Dataset],
    image_size: int,
    seed: int,
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Slice BraTS volumes from an upstream dataset into a slice store.

    Args:
        source: BraTS-layout directory (one folder per subject).
        slices: Output slice store (manifest.json, index.csv, shards/).
        image_size: Slice size in pixels after padding (below ``data.pad_to`` resamples).
        seed: Seed of the subject shuffle that makes the train/val/test split.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI.

    Returns:
        The container spec running ``synthmri prepare``.
    """
    return _prepare_spec(source.path, slices.path, image_size, seed, profile, mlflow_tracking_uri)


@dsl.container_component
def prepare_from_uri(
    source_uri: str,
    slices: Output[Dataset],
    image_size: int,
    seed: int,
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Slice BraTS volumes at a URI into a slice store.

    Args:
        source_uri: BraTS location: ``s3://bucket/prefix`` (credentials from the pod's
            environment) or a directory mounted into the pod.
        slices: Output slice store (manifest.json, index.csv, shards/).
        image_size: Slice size in pixels after padding (below ``data.pad_to`` resamples).
        seed: Seed of the subject shuffle that makes the train/val/test split.
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI.

    Returns:
        The container spec running ``synthmri prepare``.
    """
    return _prepare_spec(source_uri, slices.path, image_size, seed, profile, mlflow_tracking_uri)
