"""``python -m pipelines``: what ``synthmri pipeline`` runs, with the same flags."""

import argparse
import logging
import sys

from pipelines.cli import run_pipeline_command
from synthmri.stages.arguments import add_common_arguments
from synthmri.stages.pipeline import add_arguments


def main(argv: list[str]) -> int:
    """Parse the ``synthmri pipeline`` flags and run the action."""
    parser = argparse.ArgumentParser(prog="synthmri pipeline", description=__doc__)
    add_common_arguments(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_pipeline_command(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
