"""``synthmri promote``: gate a registered generator; passing sets the alias ``champion``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from synthmri.config import Config
from synthmri.stages.arguments import UsageError, add_metrics_arguments, resolve_config, write_metrics
from synthmri.stages.base import Resources, Verb

if TYPE_CHECKING:
    from synthmri.promote import Decision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri promote``."""
    parser.add_argument("--model", required=True, help="registered model name, e.g. synthmri-ddpm")
    parser.add_argument("--version", default="candidate",
                        help="version number, alias, or a registration.json from train-generator (default: candidate)")
    parser.add_argument("--memorization", type=Path, required=True, help="evaluate-synthetic output directory")
    parser.add_argument("--real-evaluation", action="append", required=True,
                        help="evaluate-segmenter output of real-only training (repeatable: repeats and settings of a "
                             "grid, narrowed to the profile's architecture with augmentation)")
    parser.add_argument("--synthetic-evaluation", action="append", required=True,
                        help="evaluate-segmenter output of synthetic-only training (repeatable, as --real-evaluation)")
    parser.add_argument("--out", type=Path, help="write the decision as JSON here")
    parser.add_argument("--exit-zero", action="store_true", help="record a failing gate but exit 0 (for DVC demos)")
    add_metrics_arguments(parser, "the criteria's values and the verdict (passed 0/1)")


def registered_version(version: str) -> str:
    """The version to gate: `version`, or the one a train-generator ``registration.json`` names."""
    if Path(version).suffix != ".json":
        return version
    record = Path(version)
    if not record.is_file():
        raise UsageError(f"--version {version}: registration file not found")
    return str(json.loads(record.read_text())["version"])


def main(args: argparse.Namespace) -> int:
    """Judge the evidence; exit 1 when the gate fails (unless --exit-zero)."""
    from synthmri.io import expand_artifact_paths

    cfg = resolve_config(args)
    decision = run(
        model=args.model, version=registered_version(args.version), memorization=args.memorization,
        real_evaluation=expand_artifact_paths(args.real_evaluation),
        synthetic_evaluation=expand_artifact_paths(args.synthetic_evaluation),
        out=args.out, cfg=cfg,
    )
    print(decision.describe())
    write_metrics(args, {"passed": float(decision.passed), **{c.name: c.value for c in decision.criteria}})
    return 0 if decision.passed or args.exit_zero else 1


def run(model: str, version: str, memorization: Path, real_evaluation: Path | list[Path],
        synthetic_evaluation: Path | list[Path], out: Path | None, cfg: Config) -> "Decision":
    """Gate a registered generator version (see :func:`synthmri.promote.promote`), monitored.

    The monitor counts one decision, grouped by `model`; the stage opens no MLflow run (the
    decision lives on the model version's tags and aliases).

    Args:
        model: Registered model name (``synthmri-ddpm``) or generator family (``ddpm``).
        version: Version number or alias (``candidate``).
        memorization: evaluate-synthetic output directory (or its summary.json).
        real_evaluation: evaluate-segmenter output(s) of real-only training.
        synthetic_evaluation: evaluate-segmenter output(s) of synthetic-only training.
        out: Where to write the decision as JSON, or None.
        cfg: Resolved config.

    Returns:
        The decision.

    Raises:
        FileNotFoundError: An evidence file is missing.
        PromotionError: The model, version or evidence is wrong (named).
    """
    from synthmri.promote import promote
    from synthmri.stages.context import stage_context

    with stage_context("promote", cfg, unit="decisions", total=1, instance=str(model) if model else None) as context:
        decision = promote(model=model, version=version, memorization=memorization, real_evaluation=real_evaluation,
                           synthetic_evaluation=synthetic_evaluation, out=out, cfg=cfg)
        context.monitor.progress(1)
    return decision


VERB = Verb(name="promote", help="Gate a registered generator; passing sets the alias 'champion'.",
            add_arguments=add_arguments, main=main, resources=Resources(cpu="500m", memory="1Gi"))
