"""``synthmri pipeline compile|submit|run-local``: what the CLI's ``pipeline`` verb runs.

``synthmri.cli`` puts the project root on ``sys.path`` and calls
:func:`run_pipeline_command` with its parsed arguments, so kfp is imported only here.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler

from pipelines import PIPELINES, build_pipeline

#: Where ``submit`` finds the Kubeflow Pipelines endpoint and token when no flag gives them.
HOST_ENV = "KFP_HOST"
TOKEN_ENV = "KFP_TOKEN"
NAMESPACE_ENV = "KFP_NAMESPACE"


def compile_pipeline(name: str, path: Path, parallelism: int) -> Path:
    """Compile the pipeline `name` (a key of :data:`PIPELINES`) to `path`, with its defaults.

    Args:
        name: ``quick`` or ``paper``.
        path: Where the YAML goes (parent directories are created).
        parallelism: Concurrent tasks per fan-out loop.

    Returns:
        `path`.
    """
    pipeline = PIPELINES[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        pipeline_func=build_pipeline(parallelism), package_path=str(path), pipeline_name=pipeline.name,
        pipeline_display_name=pipeline.display_name, pipeline_parameters=pipeline.defaults,
    )
    return path


def compile_pipelines(out_dir: Path, parallelism: int) -> list[Path]:
    """Compile every registered pipeline to ``<out_dir>/<name>.yaml``.

    Args:
        out_dir: Directory for the compiled pipeline specs; created if missing.
        parallelism: Concurrent tasks per fan-out loop.

    Returns:
        The written YAML paths, in registry order.
    """
    return [compile_pipeline(name, out_dir / f"{name}.yaml", parallelism) for name in PIPELINES]


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pipeline parameters; values are YAML (``3``, ``[ddpm, stylegan2]``, ``''``).

    Raises:
        ValueError: an item without ``=``, or a value that is not valid YAML (named).
    """
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        try:
            params[key] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as exc:
            raise ValueError(f"--param {item!r}: the value is not valid YAML ({exc})") from None
    return params


def _check_params(name: str, params: dict[str, Any]) -> None:
    known = set(build_pipeline().component_spec.inputs or {})
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"pipeline {name!r} has no parameter(s) {unknown}; it takes {sorted(known)}")


def submit(args: argparse.Namespace) -> int:
    """Upload and start a run on a Kubeflow Pipelines endpoint (``kfp.Client``)."""
    import kfp

    host = args.host or os.environ.get(HOST_ENV)
    if not host:
        raise ValueError(f"no Kubeflow Pipelines endpoint: pass --host or set ${HOST_ENV}")
    params = parse_params(args.param)
    _check_params(args.pipeline, params)
    namespace = args.namespace or os.environ.get(NAMESPACE_ENV) or None
    # Without a token kfp.Client falls back to the in-cluster service-account token, if any.
    client = kfp.Client(host=host, existing_token=os.environ.get(TOKEN_ENV) or None, namespace=namespace)
    with tempfile.TemporaryDirectory(prefix="synthmri-submit-") as scratch:
        package = compile_pipeline(args.pipeline, Path(scratch) / f"{args.pipeline}.yaml", args.parallelism)
        result = client.create_run_from_pipeline_package(
            str(package), arguments=params, run_name=args.run_name, experiment_name=args.experiment,
            namespace=namespace,
        )
    print(f"submitted {args.pipeline} as run {result.run_id} on {host}")
    return 0


def run_local_command(args: argparse.Namespace) -> int:
    """Run a pipeline on this machine with ``kfp.local.SubprocessRunner``."""
    from pipelines.local import run_local

    params = parse_params(args.param)
    _check_params(args.pipeline, params)
    root = Path(args.pipeline_root)
    arguments = {**PIPELINES[args.pipeline].defaults,
                 "mlflow_tracking_uri": f"sqlite:///{root.resolve() / 'mlflow.db'}", **params}
    run_local(build_pipeline(args.parallelism, kubernetes=False), arguments, root)
    print(f"{args.pipeline} finished; artifacts under {root}, MLflow at {arguments['mlflow_tracking_uri']}")
    return 0


def run_pipeline_command(args: argparse.Namespace) -> int:
    """Run one ``synthmri pipeline`` action.

    Args:
        args: Parsed arguments of the ``pipeline`` verb (see ``synthmri pipeline --help``).

    Returns:
        Exit status: 0 on success; 1 for bad parameters or a failed run.
    """
    try:
        if args.action == "compile":
            if args.out is None:
                raise ValueError("compile needs --out DIR")
            for path in compile_pipelines(Path(args.out), args.parallelism):
                print(path)
            return 0
        if args.action == "submit":
            return submit(args)
        return run_local_command(args)
    except (ValueError, RuntimeError) as exc:
        print(f"synthmri pipeline {args.action}: error: {exc}", file=sys.stderr)
        return 1


__all__ = ["compile_pipeline", "compile_pipelines", "parse_params", "run_pipeline_command", "submit"]
