"""``synthmri pipeline <action>``: what the CLI's ``pipeline`` verb runs.

``synthmri.cli`` puts the project root on ``sys.path`` and calls
:func:`run_pipeline_command` with its parsed arguments, so kfp is imported only here.
"""

import argparse
import sys
from pathlib import Path

from kfp import compiler

from pipelines import PIPELINES


def compile_pipelines(out_dir: Path) -> list[Path]:
    """Compile every registered pipeline to ``<out_dir>/<name>.yaml``.

    Args:
        out_dir: Directory for the compiled pipeline specs; created if missing.

    Returns:
        The written YAML paths, in registry order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline_func in PIPELINES.items():
        path = out_dir / f"{name}.yaml"
        compiler.Compiler().compile(pipeline_func=pipeline_func, package_path=str(path))
        written.append(path)
    return written


def run_pipeline_command(args: argparse.Namespace) -> int:
    """Run one ``synthmri pipeline`` action.

    Args:
        args: Parsed arguments of the ``pipeline`` verb: ``action`` (``compile``) and
            ``out`` (directory for the compiled YAML).

    Returns:
        Exit status: 0 on success, 2 for an unknown action.
    """
    if args.action == "compile":
        for path in compile_pipelines(Path(args.out)):
            print(path)
        return 0
    print(f"synthmri pipeline: unknown action {args.action!r}", file=sys.stderr)
    return 2
