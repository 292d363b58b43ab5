"""``synthmri evaluate-segmenter``: 3D Dice and Hausdorff of a segmenter on the test subjects."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from synthmri.config import EVAL_SLICES, Config
from synthmri.stages.arguments import (add_metrics_arguments, add_overwrite_argument, config_flag, resolve_config,
                                      write_metrics)
from synthmri.stages.base import Resources, Verb

if TYPE_CHECKING:
    from synthmri.data.store import SliceStore
    from synthmri.segmenters.evaluate import EvaluationSetup, EvaluationSummary
    from synthmri.stages.context import StageContext
    from synthmri.stages.outputs import StageOutput

STAGE = "evaluate-segmenter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri evaluate-segmenter``."""
    parser.add_argument("--model", type=Path, required=True,
                        help="train-segmenter output directory (every repeat is scored) or a model.pt")
    parser.add_argument("--data", type=Path, required=True, help="real slice store (its test split is scored)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (per_subject.csv, summary.json)")
    config_flag(parser, "--eval-slices", key="evaluation.eval_slices", choices=EVAL_SLICES,
                help="restack filtered slices (paper) or all")
    add_overwrite_argument(parser)
    add_metrics_arguments(parser, "the scores")


def main(args: argparse.Namespace) -> int:
    """Score the segmenter and print the summary."""
    cfg = resolve_config(args)
    summary = run(args.model, args.data, args.out, cfg, overwrite=args.overwrite)
    print(summary.describe())
    write_metrics(args, {key: summary.summary.get(key) for key in ("mean_dice", "dice", "hausdorff", "hausdorff95")})
    return 0


def run(model: Path, data: Path, out: Path, cfg: Config, overwrite: bool = False) -> "EvaluationSummary":
    """Score every repeat of `model` on the test subjects of `data`, each in its MLflow run.

    Each checkpoint gets the run ``<model name>-eval`` (tagged with its setting, the store as
    a dataset); several repeats also get one for their mean (named after the setting).
    Only finished training runs are scored: each checkpoint's folder must hold the
    ``completion.json`` of ``train-segmenter``, whose inputs (the stores trained on, with
    their generators) the evaluation's own ``completion.json`` repeats for the gate. The
    output is written whole or not at all.

    Args:
        model: train-segmenter output directory (``model.pt``, or ``repeat-*/model.pt``) or a ``model.pt``.
        data: The real slice store; its ``test`` split is scored.
        out: Output directory (see :func:`synthmri.segmenters.evaluate.evaluate_segmenter`).
        cfg: ``evaluation``, ``data.pad_to`` and ``tracking``.
        overwrite: Replace another kind of output at `out`.

    Returns:
        The EvaluationSummary (of the mean when there are several repeats), with its run id.

    Raises:
        FileNotFoundError: No checkpoint at `model`.
        StoreError: The store is incomplete, corrupt, has no test slices or a bad voxel spacing.
        OutputError: A checkpoint's training did not finish (no completion record), or `out`
            holds another kind of output.
    """
    from synthmri.segmenters.evaluate import combine_repeats, prepare_evaluation
    from synthmri.records import require_record
    from synthmri.stages.outputs import own_output, refuse_foreign, stage_output

    out = Path(out)
    refuse_foreign(out, STAGE, own_output(STAGE), overwrite)
    setup = prepare_evaluation(model, data, cfg)
    trained = [require_record(path.parent, "train-segmenter") for path in setup.checkpoints]
    with stage_output(out, STAGE, cfg, replace=True, overwrite=overwrite) as output:
        output.details["models"] = [{"checkpoint": str(path), "run_ids": record.get("run_ids"),
                                     "training": record.get("inputs")}
                                    for path, record in zip(setup.checkpoints, trained)]
        if len(setup.checkpoints) == 1:
            result = _evaluate_checkpoint(setup.checkpoints[0], setup, output, output.path, cfg)
        else:
            results = [_evaluate_checkpoint(path, setup, output, output.path / path.parent.name, cfg)
                       for path in setup.checkpoints]
            combined = combine_repeats(results, setup.checkpoints, output.path)
            with _tracked(cfg, setup.store, combined.summary["model"], combined.summary["convention"], output,
                          repeats=len(results)) as context:
                _log_scores(context, combined)
            result = dataclasses.replace(combined, run_id=context.run_id or "")
    # The files now live at `out`: report that, not the folder they were written in.
    return dataclasses.replace(result, out=out)


def _evaluate_checkpoint(path: Path, setup: "EvaluationSetup", output: "StageOutput", out: Path,
                         cfg: Config) -> "EvaluationSummary":
    """One checkpoint, scored in its own run: params, scores and artifacts."""
    from synthmri.segmenters.evaluate import evaluate_checkpoint
    from synthmri.segmenters.inference import load_segmenter, model_info
    from synthmri.segmenters.summaries import EXAMPLE

    network, checkpoint = load_segmenter(path, setup.dev)
    info = model_info(checkpoint, path)
    with _tracked(cfg, setup.store, info, cfg.evaluation.convention, output) as context:
        result = evaluate_checkpoint(network, info, setup, out, cfg, progress=context.monitor.progress)
        context.log_params({"eval.spacing_source": result.spacing_note[:500], "eval.filled_slices": result.filled_slices})
        _log_scores(context, result, extra=("per_subject.csv", EXAMPLE))
    return dataclasses.replace(result, run_id=context.run_id or "")


def _tracked(cfg: Config, store: "SliceStore", info: dict[str, Any], convention: str, output: "StageOutput",
             repeats: int | None = None) -> "AbstractContextManager[StageContext]":
    """The stage context of one evaluation run: ``<name>-eval``, its tags, the store as a dataset."""
    from synthmri.segmenters.evaluate import evaluation_tags, test_subjects
    from synthmri.stages.context import stage_context

    return stage_context(STAGE, cfg, experiment="evaluation", run_name=f"{info['name']}-eval",
                         datasets={"real": store}, tags=evaluation_tags(info, convention, repeats),
                         unit="subjects", total=len(test_subjects(store)), instance=info["name"], output=output)


def _log_scores(context: "StageContext", result: "EvaluationSummary", extra: tuple[str, ...] = ()) -> None:
    """Log the defined scores as metrics, name the undefined ones in a tag, and log summary.json (and `extra`)."""
    from synthmri.segmenters.summaries import mlflow_metrics

    metrics, undefined = mlflow_metrics(result.summary)
    context.log_metrics(metrics)
    if undefined:
        context.set_tags({"synthmri.undefined_metrics": ",".join(undefined)})
    for name in ("summary.json", *extra):
        context.log_artifact(result.out / name)


VERB = Verb(name="evaluate-segmenter", help="3D Dice and Hausdorff (max, 95th percentile, mm) per label and region "
            "on the test subjects.", add_arguments=add_arguments, main=main,
            resources=Resources(cpu="2", memory="8Gi", gpu=True))
