"""``synthmri share``: a shareable synthetic store, every near-copy of a training slice removed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from synthmri.config import Config
from synthmri.stages.arguments import UsageError, add_overwrite_argument, resolve_config
from synthmri.stages.base import Resources, Verb

if TYPE_CHECKING:
    from synthmri.metrics.share import ShareResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri share``."""
    parser.add_argument("--synthetic", type=Path, required=True, help="synthetic slice store")
    parser.add_argument("--real", type=Path, required=True,
                        help="real slice store (train+val: what must not leak; test split: the baseline)")
    parser.add_argument("--out", type=Path, required=True,
                        help="directory of the shareable store (removed.csv, share_report.json)")
    parser.add_argument("--memorization", type=Path,
                        help="evaluate-synthetic output of the same stores: its memorization search is reused when "
                        "both stores (by content hash) and the search settings match, else searched again (the log "
                        "and share_report.json say which, and why)")
    parser.add_argument("--threshold", type=float, help="remove slices with max r above this (default: "
                        "memorization.share_threshold, else the baseline's maximum)")
    add_overwrite_argument(parser)


def main(args: argparse.Namespace) -> int:
    """Write the shareable store."""
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be a correlation in [-1, 1], got {args.threshold}")
    cfg = resolve_config(args)
    result = run(args.synthetic, args.real, args.out, cfg, threshold=args.threshold, overwrite=args.overwrite,
                 memorization=args.memorization)
    print(result.summary())
    return 0


def run(synthetic: Path, real: Path, out: Path, cfg: Config, threshold: float | None = None,
        overwrite: bool = False, memorization: Path | None = None) -> "ShareResult":
    """Write the shareable store (:func:`synthmri.metrics.share.share`) in a tracked ``<generator>-share`` run.

    Args:
        synthetic: The synthetic slice store.
        real: The real slice store (train+val: what must not leak; test: the baseline).
        out: Directory of the shareable store and its report; must differ from `synthetic`.
        cfg: ``memorization``, ``data.shard_size`` and ``tracking``.
        threshold: Overrides ``memorization.share_threshold``.
        overwrite: Replace another kind of output at `out`.
        memorization: An evaluate-synthetic output whose search is reused if it matches.

    The store is written whole or not at all, with a ``completion.json`` naming both inputs.

    Returns:
        The ShareResult.

    Raises:
        StoreError: A store is missing or incomplete, sizes differ, or a split is empty.
        ValueError: `out` is the synthetic store itself.
        OutputError: `out` holds another kind of output.
    """
    import dataclasses

    from synthmri.metrics.share import STAGE, open_share_stores, share_name, share_stores
    from synthmri.stages.context import stage_context
    from synthmri.stages.outputs import own_output, refuse_foreign, stage_output

    stores = open_share_stores(synthetic, real, out)
    refuse_foreign(Path(out), STAGE, own_output(STAGE), overwrite)
    name = share_name(stores)
    with stage_output(out, STAGE, cfg, replace=True, overwrite=overwrite) as output, \
            stage_context(STAGE, cfg, experiment="evaluation", run_name=f"{name}-share",
                          datasets={"real": stores.real, "synthetic": stores.synthetic},
                          tags={"synthmri.generator": name}, unit="images", total=len(stores.synthetic) + len(stores.test),
                          instance=stores.generator_name, output=output) as context:
        output.details["generator"] = stores.synthetic.manifest.get("generator")
        result = share_stores(stores, output.path, cfg, threshold, progress=context.monitor.progress,
                              memorization=memorization)
        output.details["search"] = result.search
        context.log_params({"share.threshold": result.threshold, "share.threshold_source": result.threshold_source,
                            "share.search_reused": result.search.startswith("reused")})
        context.log_metrics({"share_kept": result.kept, "share_removed": result.removed,
                             "share_removed_fraction": result.removed_fraction})
        context.log_artifact(result.out / "removed.csv")
        context.log_artifact(result.out / "share_report.json")
    return dataclasses.replace(result, out=Path(out))


VERB = Verb(name="share", help="A shareable synthetic store: every near-copy of a training slice removed, with "
            "reasons.", add_arguments=add_arguments, main=main,
            resources=Resources(cpu="4", memory="16Gi", gpu=True))
