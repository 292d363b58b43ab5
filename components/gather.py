"""``synthmri gather``: the fan-in of a grid's evaluations into one artifact."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from components.common import CPU_IMAGE, profile_args


@dsl.container_component
def gather(
    evaluations: Input[List[Artifact]],
    gathered: Output[Artifact],
    profile: str,
) -> dsl.ContainerSpec:
    """Collect the evaluations of a ``dsl.ParallelFor`` into one directory.

    The report and the promotion gate read it run by run, so settings and repeats stay
    apart; one artifact also passes where a list cannot (into another loop).

    Args:
        evaluations: ``evaluate-segmenter`` outputs, from ``dsl.Collected``.
        gathered: Output directory (``summary.json`` listing ``runs/``).
        profile: Config profile name or YAML path inside the image.

    Returns:
        The container spec running ``synthmri gather``.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["synthmri", "gather"],
        args=[*profile_args(profile), "--evaluation", evaluations, "--out", gathered.path],
    )
