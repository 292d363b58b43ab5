"""``synthmri evaluate-synthetic``: memorization against every training slice, and the image-quality metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthmri.config import Config
from synthmri.stages.arguments import add_metrics_arguments, add_overwrite_argument, resolve_config, write_metrics
from synthmri.stages.base import Resources, Verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri evaluate-synthetic``."""
    parser.add_argument("--real", type=Path, required=True, help="real slice store (train+val: the generator's "
                        "training set, the reference; test: the baseline)")
    parser.add_argument("--synthetic", type=Path, required=True, help="synthetic slice store")
    parser.add_argument("--out", type=Path, required=True, help="output directory (memorization.csv, summary.json)")
    parser.add_argument("--segmenter", type=Path, help="segmenter trained on real slices (train-segmenter output): "
                        "its features give the in-domain metrics; without it they are skipped")
    add_overwrite_argument(parser)
    add_metrics_arguments(parser, "the scores")


def main(args: argparse.Namespace) -> int:
    """Evaluate and print the scores."""
    cfg = resolve_config(args)
    summary = run(args.real, args.synthetic, args.out, cfg, segmenter=args.segmenter, overwrite=args.overwrite)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    write_metrics(args, summary)
    return 0


def run(real: Path, synthetic: Path, out: Path, cfg: Config, segmenter: Path | None = None,
        overwrite: bool = False) -> dict[str, float | int]:
    """Score every synthetic slice (and the real test slices) against the training slices, tracked.

    The distribution metrics come first (a bad weights URI or segmenter fails before the
    long search and before any MLflow run); the memorization search then runs inside the
    stage's MLflow run ``<generator>-memorization`` and progress monitor.

    Args:
        real: Real slice store; its ``train`` and ``val`` splits are the reference, ``test`` the baseline.
        synthetic: Synthetic slice store (all its slices are scored).
        out: Output directory (see :mod:`synthmri.metrics.evaluate_synthetic`).
        cfg: Resolved config: ``memorization``, ``quality`` and ``tracking``.
        segmenter: A train-segmenter output trained on real slices, whose features give the
            in-domain metrics; None skips them (and says so).
        overwrite: Replace another kind of output at `out` (see :mod:`synthmri.stages.outputs`).

    The output is written whole or not at all; its ``completion.json`` names both stores by
    content hash and the generator (name, registry version, checkpoint sha256) the synthetic
    store came from: the evidence ``promote`` binds to a registered version.

    Returns:
        The flat scores (see :func:`synthmri.metrics.evaluate_synthetic.memorization`).

    Raises:
        StoreError: A store is missing, incomplete or corrupt, a split is empty, or the image sizes differ.
        OutputError: `out` holds another kind of output.
    """
    from synthmri.metrics.evaluate_synthetic import STAGE, memorization, memorization_device, open_stores, quality_tags
    from synthmri.metrics.memorization_record import record_details, search_settings
    from synthmri.metrics.quality import quality_metrics
    from synthmri.stages.context import stage_context
    from synthmri.stages.outputs import own_output, refuse_foreign, stage_output

    refuse_foreign(Path(out), STAGE, own_output(STAGE), overwrite)  # before the long work, not after
    stores = open_stores(real, synthetic)
    device = memorization_device()
    features = None
    if segmenter is not None:
        from synthmri.segmenters.features import in_domain_features

        features = in_domain_features(Path(segmenter), cfg.quality.batch_size, device)
    quality = quality_metrics(stores.real, stores.synthetic, cfg, features, device)
    name = stores.generator_name
    with stage_output(out, STAGE, cfg, replace=True, overwrite=overwrite) as output, \
            stage_context(STAGE, cfg, experiment="evaluation", run_name=f"{name}-memorization",
                          datasets={"real": stores.real, "synthetic": stores.synthetic},
                          tags={"synthmri.generator": name}, unit="images",
                          total=len(stores.synthetic) + len(stores.test), instance=name, output=output) as context:
        output.details["generator"] = stores.synthetic.manifest.get("generator")
        result = memorization(stores, output.path, cfg, quality, device, progress=context.monitor.progress)
        # What `share --memorization` checks before reusing this search instead of running it again.
        output.details["memorization"] = record_details(output.path, search_settings(cfg, device))
        context.set_tags(quality_tags(quality))
        summary_path = result.write_summary(context.run_id)
        context.log_metrics(result.metrics)
        for artifact in (*result.artifacts, summary_path.name):
            context.log_artifact(result.out / artifact)
    return result.flat


VERB = Verb(name="evaluate-synthetic", help="Memorization against every training slice; FID/IS and in-domain FD, "
            "KID, precision/recall.", add_arguments=add_arguments, main=main,
            resources=Resources(cpu="4", memory="16Gi", gpu=True, s3=True))
