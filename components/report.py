"""``synthmri report``: the run's tables, memorization evidence, samples and promotions."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output

from components.common import CPU_IMAGE, config_args


@dsl.container_component
def report(
    real_evaluations: Input[Artifact],
    generator_evaluations: Input[List[Artifact]],
    memorization: Input[List[Artifact]],
    promotions: Input[List[Artifact]],
    real: Input[Dataset],
    synthetic: Input[List[Dataset]],
    report_dir: Output[Artifact],
    html: Output[HTML],
    markdown: Output[Markdown],
    profile: str,
    mlflow_tracking_uri: str,
) -> dsl.ContainerSpec:
    """Write the report of one run: Dice and Hausdorff tables (mean ± sd over repeats),
    the generator ranking, memorization evidence, sample slices and every gate decision.

    Args:
        real_evaluations: Real-only evaluations (``gather`` output).
        generator_evaluations: One ``gather`` output per generator (``dsl.Collected``).
        memorization: One ``evaluate-synthetic`` output per generator.
        promotions: One gate decision per generator.
        real: Real slice store (reference sample slices).
        synthetic: One synthetic slice store per generator (sample slices).
        report_dir: Output directory (``report.md``, ``report.html``, ``report.json``, figures).
        html: The self-contained HTML report, shown in the Kubeflow UI.
        markdown: The Markdown report, shown in the Kubeflow UI (without figures).
        profile: Config profile name or YAML path inside the image.
        mlflow_tracking_uri: MLflow tracking server URI; the report is logged there too.

    Returns:
        The container spec running ``synthmri report``.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["synthmri", "report"],
        args=[
            *config_args(profile, mlflow_tracking_uri),
            "--evaluation", real_evaluations.path,
            "--evaluation", generator_evaluations,
            "--memorization", memorization,
            "--promotion", promotions,
            "--real", real.path,
            "--synthetic", synthetic,
            "--out", report_dir.path,
            "--html-out", html.path,
            "--markdown-out", markdown.path,
        ],
    )
