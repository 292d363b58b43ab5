"""``synthmri pipeline compile|submit|run-local``: what the CLI's ``pipeline`` verb runs.

``synthmri pipeline`` runs ``python -m pipelines`` (:mod:`pipelines.__main__`) in its own
process, which calls :func:`run_pipeline_command`; kfp is imported only here.
"""

import argparse
import os
import re
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


def compile_pipeline(name: str, path: Path, parallelism: int, defaults: dict[str, Any] | None = None) -> Path:
    """Compile the pipeline `name` (a key of :data:`PIPELINES`) to `path`, with its defaults.

    Args:
        name: ``quick`` or ``paper``.
        path: Where the YAML goes (parent directories are created).
        parallelism: Concurrent tasks per fan-out loop.
        defaults: Parameter defaults to compile in on top of the pipeline's own (a cluster's
            GPU type, say); a run can still override each one.

    Returns:
        `path`.
    """
    pipeline = PIPELINES[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        pipeline_func=build_pipeline(parallelism), package_path=str(path), pipeline_name=pipeline.name,
        pipeline_display_name=pipeline.display_name, pipeline_parameters={**pipeline.defaults, **(defaults or {})},
    )
    return path


def compile_pipelines(out_dir: Path, parallelism: int, defaults: dict[str, Any] | None = None) -> list[Path]:
    """Compile every registered pipeline to ``<out_dir>/<name>.yaml``.

    Args:
        out_dir: Directory for the compiled pipeline specs; created if missing.
        parallelism: Concurrent tasks per fan-out loop.
        defaults: Parameter defaults compiled into every pipeline (see :func:`compile_pipeline`).

    Returns:
        The written YAML paths, in registry order.
    """
    return [compile_pipeline(name, out_dir / f"{name}.yaml", parallelism, defaults) for name in PIPELINES]


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


def check_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate `params` against the pipeline's parameters, and type them as the backend reads them.

    A scalar given for a string parameter becomes a string (``--param gpu_count=2`` parses
    as the number 2, but ``gpu_count`` is a string parameter: the backend reads a pod's GPU
    limit from a parameter as a string only).

    Raises:
        ValueError: an unknown parameter, or a ``gpu_count`` that is not a whole number of
            at least 1 (named).
    """
    inputs = build_pipeline().component_spec.inputs or {}
    unknown = sorted(set(params) - set(inputs))
    if unknown:
        raise ValueError(f"pipeline {name!r} has no parameter(s) {unknown}; it takes {sorted(inputs)}")
    typed = {key: str(value) if inputs[key].type == "String" and isinstance(value, (int, float)) else value
             for key, value in params.items()}
    if "gpu_count" in typed and not re.fullmatch(r"[1-9][0-9]*", str(typed["gpu_count"])):
        raise ValueError(f"gpu_count={typed['gpu_count']!r}: expected a whole number of GPUs, at least 1")
    return typed


def submit(args: argparse.Namespace) -> int:
    """Upload and start a run on a Kubeflow Pipelines endpoint (``kfp.Client``)."""
    import kfp

    host = args.host or os.environ.get(HOST_ENV)
    if not host:
        raise ValueError(f"no Kubeflow Pipelines endpoint: pass --host or set ${HOST_ENV}")
    params = check_params(args.pipeline, parse_params(args.param))
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

    params = check_params(args.pipeline, parse_params(args.param))
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
            defaults = check_params(args.pipeline, parse_params(args.param))
            for path in compile_pipelines(Path(args.out), args.parallelism, defaults):
                print(path)
            return 0
        if args.action == "submit":
            return submit(args)
        return run_local_command(args)
    except (ValueError, RuntimeError) as exc:
        print(f"synthmri pipeline {args.action}: error: {exc}", file=sys.stderr)
        return 1


__all__ = ["compile_pipeline", "compile_pipelines", "parse_params", "run_pipeline_command", "submit"]
