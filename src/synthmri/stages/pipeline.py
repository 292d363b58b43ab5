"""``synthmri pipeline``: compile, submit or run locally the Kubeflow pipelines.

Kubeflow lives outside the library: this verb checks its flags and runs ``python -m
pipelines`` from the checkout named by ``--project-root``, in its own process, so nothing in
``synthmri`` imports kfp. ``pipelines/__main__.py`` parses the same flags, from
:func:`add_arguments`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from synthmri.stages.arguments import UsageError, at_least
from synthmri.stages.base import Verb

ACTIONS = ("compile", "submit", "run-local")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri pipeline`` (also parsed by ``python -m pipelines``)."""
    parser.add_argument("action", choices=ACTIONS,
                        help="compile: every pipeline to --out; submit: start a run of --pipeline on --host; "
                             "run-local: run --pipeline here, every task a local process")
    parser.add_argument("--pipeline", choices=("quick", "paper"), default="quick", help="which pipeline (default: quick)")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE",
                        help="pipeline parameter, the value as YAML, e.g. --param 'generators=[ddpm, stylegan2]' "
                             "(repeatable; compile: a default compiled into the YAML)")
    parser.add_argument("--parallelism", type=int, default=8,
                        help="concurrent tasks per fan-out loop, fixed when compiling (default: 8)")
    parser.add_argument("--out", type=Path, help="compile: directory for the compiled YAML")
    parser.add_argument("--host", help="submit: Kubeflow Pipelines endpoint (default: $KFP_HOST); the token comes "
                        "from $KFP_TOKEN, else the pod's service account")
    parser.add_argument("--namespace", help="submit: Kubeflow profile namespace (default: $KFP_NAMESPACE)")
    parser.add_argument("--experiment", default="synthmri", help="submit: Kubeflow experiment (default: synthmri)")
    parser.add_argument("--run-name", help="submit: run name (default: Kubeflow's)")
    parser.add_argument("--pipeline-root", type=Path, default=Path("outputs/kfp-local"),
                        help="run-local: directory for every task's artifacts (default: outputs/kfp-local)")
    parser.add_argument("--project-root", default=".", help="synthmri checkout holding pipelines/ (default: .)")


def main(args: argparse.Namespace) -> int:
    """Run ``python -m pipelines`` with the same flags, the checkout's root on the module path."""
    root = Path(args.project_root).resolve()
    if not (root / "pipelines" / "__init__.py").is_file():
        raise UsageError(f"{root} has no pipelines/ package; pass --project-root of the synthmri checkout")
    at_least(args.parallelism, 1, "--parallelism")
    paths = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    forwarded = args.argv[args.argv.index("pipeline") + 1:]
    return subprocess.run([sys.executable, "-m", "pipelines", *forwarded], env=environment, check=False).returncode


VERB = Verb(name="pipeline", help="Kubeflow: compile the pipelines to YAML, submit a run to a Kubeflow Pipelines "
            "endpoint, or run one on this machine (kfp.local, no Docker).", add_arguments=add_arguments, main=main)
