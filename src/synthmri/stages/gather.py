"""``synthmri gather``: several evaluate-segmenter outputs (a pipeline's fan-in) in one directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthmri.stages.base import Resources, Verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri gather``."""
    parser.add_argument("--evaluation", action="append", required=True,
                        help="evaluate-segmenter output, or a JSON artifact list of them (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="gathered directory (summary.json, runs/)")


def main(args: argparse.Namespace) -> int:
    """Gather the evaluations."""
    from synthmri.io import expand_artifact_paths
    from synthmri.segmenters.summaries import gather_evaluations

    gathered = gather_evaluations(expand_artifact_paths(args.evaluation), args.out)
    print(f"gathered {gathered['evaluations']} evaluations into {args.out}")
    return 0


VERB = Verb(name="gather", help="Collect several evaluate-segmenter outputs (a pipeline's fan-in) into one directory "
            "that the report and the promotion gate read run by run.", add_arguments=add_arguments, main=main,
            resources=Resources(cpu="250m", memory="512Mi", mlflow=False))
