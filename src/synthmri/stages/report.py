"""``synthmri report``: the Markdown/HTML report (the paper's Figures 1-4 and Tables 1-7)."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthmri.config import Config
from synthmri.stages.arguments import add_overwrite_argument, resolve_config
from synthmri.stages.base import Resources, Verb

#: The report's files, logged as artifacts of the stage's MLflow run.
REPORT_FILES = ("report.html", "report.md", "report.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri report``."""
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument("--evaluation", action="append", required=True,
                        help="evaluate-segmenter or gather output (repeatable): Tables 3-7, Figures 2-4")
    parser.add_argument("--memorization", action="append", help="evaluate-synthetic output directory, one per "
                        "generator (repeatable): Tables 1-2, memorization")
    parser.add_argument("--real", type=Path, help="real slice store (the reference row of Figure 1)")
    parser.add_argument("--synthetic", action="append",
                        help="synthetic slice store (repeatable): one Figure 1 grid each")
    parser.add_argument("--promotion", action="append", help="promotion decision JSON (repeatable)")
    parser.add_argument("--html-out", type=Path, help="also copy report.html to this file")
    parser.add_argument("--markdown-out", type=Path, help="also copy report.md to this file")
    add_overwrite_argument(parser)


def main(args: argparse.Namespace) -> int:
    """Write the report (and its single-file copies)."""
    from synthmri.io import atomic_write_bytes, expand_artifact_paths

    cfg = resolve_config(args)
    path = run(
        out=args.out, evaluations=expand_artifact_paths(args.evaluation),
        memorization=expand_artifact_paths(args.memorization), real=args.real,
        synthetic=expand_artifact_paths(args.synthetic), promotion=expand_artifact_paths(args.promotion), cfg=cfg,
        overwrite=args.overwrite,
    )
    # Single-file copies for orchestrators that show a report by type (Kubeflow's HTML/Markdown artifacts).
    for copy, name in ((args.html_out, "report.html"), (args.markdown_out, "report.md")):
        if copy is not None:
            atomic_write_bytes(copy, (path.parent / name).read_bytes())
    print(f"report: {path}")
    return 0


def run(out: Path, evaluations: list[Path], memorization: Path | list[Path] | None, real: Path | None,
        synthetic: list[Path] | None, promotion: Path | list[Path] | None, cfg: Config, overwrite: bool = False) -> Path:
    """Write the report in an MLflow run ``report`` (experiment ``pipeline``) and log its files.

    The run records the real store as dataset ``real`` and the synthetic stores as
    ``synthetic_<i>``; the monitor counts one report.

    Args:
        out: Report directory.
        evaluations: evaluate-segmenter outputs (directories or summary.json files).
        memorization: evaluate-synthetic output directory, several, or None.
        real: Real slice store for sample slices, or None.
        synthetic: Synthetic slice stores for sample slices, or None.
        promotion: Promotion decision JSON, several, or None.
        cfg: Resolved config.
        overwrite: Replace another kind of output at `out`.

    The report directory is written whole or not at all (:mod:`synthmri.stages.outputs`).

    Returns:
        Path to ``out/report.html``.

    Raises:
        FileNotFoundError: An input file is missing.
        ValueError: No evaluations, or an input that is not what its flag says.
    """
    from synthmri.data.store import SliceStore
    from synthmri.report import write_report
    from synthmri.stages.context import stage_context
    from synthmri.stages.outputs import stage_output

    if not evaluations:
        raise ValueError("report: at least one --evaluation is required")
    datasets = {"real": SliceStore(Path(real))} if real is not None else {}
    datasets.update({f"synthetic_{i}": SliceStore(Path(path)) for i, path in enumerate(synthetic or [])})
    with stage_output(out, "report", cfg, replace=True, overwrite=overwrite) as output, \
            stage_context("report", cfg, experiment="pipeline", run_name="report", datasets=datasets,
                          unit="reports", total=1, output=output) as context:
        path = write_report(output.path, evaluations, memorization, real, synthetic, promotion, cfg)
        for name in REPORT_FILES:
            context.log_artifact(output.path / name)
        context.monitor.progress(1)
    return Path(out) / path.name


VERB = Verb(name="report", help="Write the Markdown/HTML report: the paper's Figures 1-4 and Tables 1-7, "
            "memorization and promotion.", add_arguments=add_arguments, main=main,
            resources=Resources(cpu="1", memory="4Gi"))
