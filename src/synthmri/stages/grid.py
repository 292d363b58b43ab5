"""``synthmri grid``: the segmenter runs of an experiment grid, as a JSON list for a pipeline to fan out."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthmri.config import SEGMENTER_ARCHS
from synthmri.stages.arguments import names, resolve_config, switch
from synthmri.stages.base import Resources, Verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri grid``."""
    parser.add_argument("--archs", nargs="+", default=[SEGMENTER_ARCHS[0]],
                        help="architectures (words, a,b or a JSON list)")
    parser.add_argument("--train", nargs="+", default=["synthetic", "mixed"],
                        help="training sources: real, synthetic, mixed (words, a,b or a JSON list)")
    parser.add_argument("--augment", nargs="+", default=["on", "off"], help="augmentation settings: on, off")
    parser.add_argument("--repeats", type=int, help="repeats per setting (profile: segmenter.repeats)")
    parser.add_argument("--seed", type=int, help="seed of the first repeat; repeat r uses seed + r")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the runs")


def main(args: argparse.Namespace) -> int:
    """Write the grid's runs."""
    from synthmri.io import atomic_write_json
    from synthmri.segmenters.grid import segmenter_grid

    cfg = resolve_config(args)
    cells = segmenter_grid(archs=names(args.archs), sources=names(args.train),
                           augment=[switch(value) for value in names(args.augment)],
                           repeats=cfg.segmenter.repeats if args.repeats is None else args.repeats,
                           seed=cfg.seed if args.seed is None else args.seed)
    atomic_write_json(args.out, cells)
    print(f"{len(cells)} segmenter runs to {args.out}")
    return 0


VERB = Verb(name="grid", help="Write the segmenter runs of an experiment grid (architecture x data x augmentation x "
            "repeat) as a JSON list, for a pipeline to fan out.", add_arguments=add_arguments, main=main,
            resources=Resources(cpu="250m", memory="256Mi", mlflow=False))
