"""``synthmri phantom``: BraTS-2021-layout phantom subjects (NIfTI) with tumours."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthmri.config import Config
from synthmri.stages.arguments import config_flag, resolve_config
from synthmri.stages.base import Verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri phantom``."""
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    config_flag(parser, "--subjects", key="phantom.subjects", type=int,
                help="number of subjects (profile: phantom.subjects)")
    config_flag(parser, "--shape", key="phantom.shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                help="volume shape (default 240 240 155)")
    config_flag(parser, "--seed", key="phantom.seed", type=int, help="random seed; same seed, same bytes")


def main(args: argparse.Namespace) -> int:
    """Write the phantom subjects."""
    cfg = resolve_config(args)
    paths = run(args.out, cfg)
    print(f"wrote {len(paths)} phantom subjects to {args.out}")
    return 0


def run(out: Path, cfg: Config) -> list[Path]:
    """Write ``cfg.phantom.subjects`` phantom subjects to `out`, counting subjects on the monitor.

    Args:
        out: Dataset directory (created).
        cfg: Resolved config (``cfg.phantom``: subjects, shape, seed).

    Returns:
        The subject directories, in order.

    Raises:
        ValueError: A non-positive subject count or a bad shape.
    """
    from synthmri.data.phantom import write_phantom_dataset
    from synthmri.stages.context import stage_context

    with stage_context("phantom", cfg, unit="subjects", total=cfg.phantom.subjects) as context:
        return write_phantom_dataset(out, cfg.phantom, progress=context.monitor.progress)


VERB = Verb(name="phantom", help="Write BraTS-2021-layout phantom subjects (NIfTI) with tumours.",
            add_arguments=add_arguments, main=main)
