"""``synthmri grid``: the segmenter runs of an experiment grid, for a pipeline to fan out."""

from kfp import dsl
from kfp.dsl import OutputPath

from components.common import CPU_IMAGE, profile_args


@dsl.container_component
def grid(
    cells: OutputPath(list),
    archs: list,
    train: list,
    augment: list,
    repeats: int,
    seed: int,
    profile: str,
) -> dsl.ContainerSpec:
    """List every combination of architecture, training data, augmentation and repeat.

    Each entry (``arch``, ``train``, ``augment``, ``repeat``, ``seed``, ``name``) is one
    ``train-segmenter`` task of a ``dsl.ParallelFor``.

    Args:
        cells: Output JSON list of the runs.
        archs: Segmentation architectures, e.g. ``["unet", "swin"]``.
        train: Training sources, e.g. ``["synthetic", "mixed"]`` (without and with real data).
        augment: Augmentation settings, ``["on", "off"]`` for both.
        repeats: Runs per setting; repeat ``r`` is seeded ``seed + r``.
        seed: Seed of repeat 0.
        profile: Config profile name or YAML path inside the image.

    Returns:
        The container spec running ``synthmri grid``.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["synthmri", "grid"],
        args=[
            *profile_args(profile),
            "--archs", archs,
            "--train", train,
            "--augment", augment,
            "--repeats", repeats,
            "--seed", seed,
            "--out", cells,
        ],
    )
