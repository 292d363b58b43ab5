"""``synthmri <verb>``: the table of verbs and the handling of their errors.

Each verb lives in its own module under :mod:`synthmri.stages` (its flags, its run, its
resources); DVC and the Kubeflow components call the same verbs. Heavy imports happen inside
the verbs, so ``synthmri --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys

from synthmri import __version__
from synthmri.config import ConfigError
from synthmri.data.store import StoreError
from synthmri.promote import PromotionError
from synthmri.stages import VERBS
from synthmri.stages.arguments import UsageError, add_common_arguments


def build_parser() -> argparse.ArgumentParser:
    """The ``synthmri`` parser: one subparser per verb of :data:`synthmri.stages.VERBS`."""
    parser = argparse.ArgumentParser(
        prog="synthmri",
        description="Synthetic brain-tumour MRI: prepare BraTS, train generators, vet and use their images.",
    )
    parser.add_argument("--version", action="version", version=f"synthmri {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS.values():
        sub = verbs.add_parser(verb.name, help=verb.help, description=verb.help)
        add_common_arguments(sub)
        verb.add_arguments(sub)
        sub.set_defaults(handler=verb.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``synthmri`` command: run one verb, turning known errors into messages.

    Returns:
        The verb's exit status; 2 for bad input (flags, config), 1 for a failed stage, 130
        when interrupted.
    """
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.handler(args)
    except (UsageError, ConfigError) as exc:
        print(f"synthmri {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, FileNotFoundError, PromotionError, ValueError) as exc:
        print(f"synthmri {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"synthmri {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
