"""``synthmri phantom``: synthetic BraTS-layout subjects for runs without real data."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.common import IMAGE, profile_args


@dsl.container_component
def phantom(
    brats: Output[Dataset],
    subjects: int,
    seed: int,
    profile: str,
) -> dsl.ContainerSpec:
    """Write phantom subjects (NIfTI, BraTS 2021 layout) with tumours and labels.

    Stands in for BraTS when a pipeline run is given no data, so the whole pipeline runs
    anywhere. Volume shape comes from the profile (``phantom.shape``).

    Args:
        brats: Output directory, one folder per subject, as ``prepare`` reads it.
        subjects: Number of subjects to write.
        seed: Random seed; the same seed writes the same bytes.
        profile: Config profile name or YAML path inside the image.

    Returns:
        The container spec running ``synthmri phantom``.
    """
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["synthmri", "phantom"],
        args=[
            *profile_args(profile),
            "--out", brats.path,
            "--subjects", subjects,
            "--seed", seed,
        ],
    )
