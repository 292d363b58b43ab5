"""``synthmri reader-study``: a blinded web app in which a radiologist tells real from synthetic."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from synthmri.config import Config
from synthmri.stages.arguments import resolve_config
from synthmri.stages.base import Verb

if TYPE_CHECKING:
    from synthmri.reader import ReaderStudy, StudyResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri reader-study``."""
    parser.add_argument("--real", type=Path, help="real slice store (images from its test split: held-out patients)")
    parser.add_argument("--synthetic", type=Path, action="append",
                        help="synthetic slice store (repeatable; named by its manifest's generator)")
    parser.add_argument("--per-source", type=int, help="images per source (real and each generator)")
    parser.add_argument("--seed", type=int, help="seed of the selection (default 0); the order comes from a secret "
                        "key the study keeps in --out (order.key)")
    parser.add_argument("--out", type=Path, required=True,
                        help="study directory (plan.json, answers.jsonl, confusion.csv); run again to resume")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (no authentication: warns unless loopback; default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--reader", help="the reader's name or initials (kept in the plan and in MLflow)")
    parser.add_argument("--finish", action="store_true",
                        help="do not serve: write the confusion table from the answers so far (a study stopped early)")


def main(args: argparse.Namespace) -> int:
    """Serve the study until every image is answered, then write the confusion table."""
    from synthmri.reader import open_study, run_until_done

    cfg = resolve_config(args)
    study = open_study(args.out, real=args.real, synthetic=args.synthetic or [], per_source=args.per_source,
                       seed=args.seed, reader=args.reader or "", data=cfg.data)
    if not args.finish and not study.complete:
        run_until_done(study, args.host, args.port, announce=lambda line: print(line, flush=True))
    print(run(study, cfg).summary())
    return 0


def run(study: "ReaderStudy", cfg: Config) -> "StudyResult":
    """Write the confusion table and log it to MLflow (experiment ``evaluation``).

    The run is named ``reader-study-<reader>`` (``reader-study`` without a reader); it records
    the study's stores as datasets, the reader as tags, the plan as params, the confusion
    counts as metrics and ``confusion.csv``, ``plan.json`` and ``answers.jsonl`` as artifacts.

    Args:
        study: The study, finished or stopped early.
        cfg: Resolved config (tracking).

    Returns:
        The confusion table, with the MLflow run id.
    """
    import dataclasses

    from synthmri.reader import finish, study_datasets, study_metrics, study_params, study_tags
    from synthmri.reader.study import STAGE
    from synthmri.stages.context import stage_context

    reader = str(study.plan.get("reader", ""))
    with stage_context(STAGE, cfg, experiment="evaluation", run_name=f"reader-study{'-' + reader if reader else ''}",
                       datasets=study_datasets(study), tags=study_tags(study)) as context:
        result = finish(study)
        context.log_params(study_params(study))
        context.log_metrics(study_metrics(result))
        for name in ("confusion.csv", "plan.json", "answers.jsonl"):
            if (study.out / name).is_file():
                context.log_artifact(study.out / name, artifact_path=STAGE)
        return dataclasses.replace(result, run_id=context.run_id)


VERB = Verb(name="reader-study", help="A blinded web app for a radiologist: real or synthetic, image by image; "
            "writes the confusion table per generator (paper, Table 8) to CSV and MLflow.",
            add_arguments=add_arguments, main=main)
