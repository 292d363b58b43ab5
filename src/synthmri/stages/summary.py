"""``synthmri summary``: the last local pipeline run in a few lines."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthmri.stages.arguments import resolve_config
from synthmri.stages.base import Verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri summary``."""
    parser.add_argument("--root", type=Path, default=Path("."), help="project directory of the run (default: .)")


def main(args: argparse.Namespace) -> int:
    """Print the summary."""
    from synthmri.summary import print_summary

    return print_summary(args.root, resolve_config(args))


VERB = Verb(name="summary", help="Summarise the last local pipeline run: report, registry, scores.",
            add_arguments=add_arguments, main=main)
