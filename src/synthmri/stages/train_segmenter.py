"""``synthmri train-segmenter``: segmentation networks on real, synthetic or mixed slices.

The stage around :mod:`synthmri.segmenters.train`: each run gets its MLflow run (named
``<generators>-<arch>-<train>-<aug|orig>-r<repeat>``, tagged with its setting, its stores as
datasets) and progress monitor, which the training loop reports to; ``completion.json``
(:mod:`synthmri.stages.outputs`), written last, marks the run finished with its config and inputs.

Repeats (:func:`run_repeats`, ``--repeats N``): N runs with seeds ``seed, seed + 1, ...``
in ``out/repeat-00``, ``out/repeat-01``, ...; a repeat whose ``completion.json`` records the
same inputs, config and seed is kept, so a killed sweep resumes at the first unfinished
repeat. A run removes its folder's old record before it writes anything, so a run killed
half-way is never taken for the finished one it overwrote. A run that SIGTERM stopped (its
state in ``checkpoint.pt``) is marked KILLED.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from synthmri.config import SEGMENTER_ARCHS, Config
from synthmri.stages.arguments import UsageError, add_overwrite_argument, config_flag, resolve_config, whole_number
from synthmri.stages.base import Resources, Verb

if TYPE_CHECKING:
    from synthmri.data.store import SliceStore
    from synthmri.segmenters.train import SegmenterTrainResult
    from synthmri.stages.outputs import Kind

log = logging.getLogger(__name__)

TRAINING_SOURCES = ("real", "synthetic", "mixed", "ratio")
STAGE = "train-segmenter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri train-segmenter``."""
    config_flag(parser, "--arch", key="segmenter.arch", choices=SEGMENTER_ARCHS,
                help="segmentation architecture (profile: segmenter.arch)")
    parser.add_argument("--train", choices=TRAINING_SOURCES, required=True,
                        help="training data: the real train split, the synthetic stores pooled, both sampled equally "
                             "often, or a fixed pool with a share of real slices (--real-share)")
    parser.add_argument("--real-share", type=float, help="--train ratio: share of real slices in the pool, 0 to 1 "
                        "(pool size: segmenter.ratio_total); without it every share of segmenter.ratio_shares, "
                        "into OUT/share-PPP")
    parser.add_argument("--real", type=Path, help="real slice store (validation always comes from its val split)")
    parser.add_argument("--synthetic", type=Path, action="append",
                        help="synthetic slice store (repeatable: an ensemble)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the checkpoint and history")
    config_flag(parser, "--aug", key="segmenter.augment", action=argparse.BooleanOptionalAction,
                help="paper augmentation on/off")
    config_flag(parser, "--seed", key="seed", type=whole_number, help="random seed of the first repeat")
    config_flag(parser, "--repeats", key="segmenter.repeats", type=int,
                help="runs with seeds seed, seed+1, ... (profile: segmenter.repeats); several go to OUT/repeat-NN")
    parser.add_argument("--repeat-index", type=whole_number, default=0,
                        help="index of the first repeat in run names (a pipeline runs repeat r as its own task)")
    parser.add_argument("--name", help="run name (default: <generators>-<arch>-<train>-<aug|orig>-r<repeat>)")
    add_overwrite_argument(parser)


def check_sources(args: argparse.Namespace) -> None:
    """Refuse a training source without the stores it needs, naming the flag."""
    if args.train in ("synthetic", "mixed") and not args.synthetic:
        raise UsageError(f"--train {args.train} needs at least one --synthetic store")
    if args.train in ("real", "mixed", "ratio") and not args.real:
        raise UsageError(f"--train {args.train} needs --real")
    if args.real_share is not None and args.train != "ratio":
        raise UsageError("--real-share goes with --train ratio")
    if args.real_share is not None and not 0.0 <= args.real_share <= 1.0:
        raise UsageError(f"--real-share must be in [0, 1], got {args.real_share}")


def ratio_runs(args: argparse.Namespace, shares: tuple[float, ...]) -> list[tuple[float | None, Path]]:
    """(real share, output folder) of each run: one, or the ``--train ratio`` sweep into OUT/share-PPP."""
    if args.train != "ratio":
        return [(None, args.out)]
    if args.real_share is not None:
        return [(args.real_share, args.out)]
    return [(share, args.out / f"share-{round(share * 100):03d}") for share in shares]


def main(args: argparse.Namespace) -> int:
    """Train every requested run and print each result."""
    cfg = resolve_config(args)
    check_sources(args)
    runs = ratio_runs(args, cfg.segmenter.ratio_shares)
    if args.train == "ratio" and any(share < 1.0 for share, _ in runs) and not args.synthetic:
        raise UsageError("--train ratio below a real share of 1 needs at least one --synthetic store")
    for share, out in runs:
        for result in run_repeats(train=args.train, real=args.real, synthetic=args.synthetic or [], out=out, cfg=cfg,
                                  name=args.name, real_share=share, first_repeat=args.repeat_index,
                                  overwrite=args.overwrite):
            print(result.summary())
    return 0


def run(train: str, real: Path | None, synthetic: Sequence[Path], out: Path, cfg: Config, *, name: str | None = None,
        real_share: float | None = None, repeat: int = 0, overwrite: bool = False) -> "SegmenterTrainResult":
    """Train one segmenter, tracked, and mark it finished with ``out/completion.json``.

    Args:
        train: ``real``, ``synthetic``, ``mixed`` or ``ratio`` (see
            :class:`synthmri.segmenters.train.SegmenterTraining`).
        real: The real slice store (not opened by a ``synthetic`` run).
        synthetic: Synthetic slice stores (an ensemble when several).
        out: Output directory: ``model.pt``, ``history.csv``, ``config.yaml``, ``completion.json``
            (the result, the inputs by content hash with each synthetic store's generator, the
            config's hash and the seed).
        cfg: The resolved config (``segmenter``, ``seed``, ``tracking``).
        name: MLflow run name; default :func:`synthmri.segmenters.train.run_name`.
        real_share: ``ratio`` only: the share of real slices in the pool, in [0, 1].
        repeat: Which repeat of its setting this run is (in the default run name).
        overwrite: Train into `out` even if it holds another kind of output.

    Raises:
        ValueError: Unknown `train`, or a store it needs is missing.
        ConfigError: Unknown architecture, or a budget smaller than one batch.
        StoreError: A store is missing, incomplete or has nothing to sample.
        RuntimeError: The loss became NaN or infinite (diverged).
        TrainingInterrupted: SIGTERM arrived; the training state was saved, the run marked KILLED.
        OutputError: `out` holds another kind of output.
    """
    import dataclasses

    from synthmri.segmenters.train import SegmenterTraining
    from synthmri.stages.context import stage_context
    from synthmri.stages.outputs import other_files, stage_output

    with stage_output(out, STAGE, cfg, replace=False, overwrite=overwrite, accept=other_files) as output:
        training = SegmenterTraining(train, real, synthetic, out, cfg, name=name, real_share=real_share, repeat=repeat)
        with stage_context(STAGE, cfg, experiment="segmenters", run_name=training.name, datasets=training.datasets,
                           tags=training.tags, unit="samples", total=training.total, instance=training.name,
                           output=output) as context:
            context.log_params(training.params)
            # SIGTERM raises TrainingInterrupted (a KeyboardInterrupt): the context marks the run KILLED.
            result = training.fit(context)
        output.inputs = training_record(train, training.real_store, training.synthetic_stores, training.real_share)
        output.details["result"] = {k: str(v) if isinstance(v, Path) else v
                                    for k, v in dataclasses.asdict(result).items()}
    log.info(result.summary())
    return result


def _own_or_other_files(kind: "Kind") -> bool:
    """What a sweep's folder may already hold: its own earlier runs, or files of the user's."""
    from synthmri.stages.outputs import other_files

    return other_files(kind) or (kind.what in ("record", "running") and kind.verb == STAGE)


def training_record(train: str, real: "SliceStore | None", synthetic: Sequence["SliceStore"],
                    real_share: float | None) -> dict[str, Any]:
    """What a run trains on, recorded with it and compared (by content) before training it again.

    Each synthetic store comes with its generator (name, registry version, checkpoint sha256),
    so an evaluation of this run can say which generator its synthetic slices came from.
    """
    from synthmri.records import store_provenance

    return {"train": train, "real_share": real_share,
            "real": store_provenance(real) if real is not None else None,
            "synthetic": [store_provenance(store) for store in synthetic]}


def run_repeats(train: str, real: Path | None, synthetic: Sequence[Path], out: Path, cfg: Config, *,
                repeats: int | None = None, name: str | None = None, real_share: float | None = None,
                first_repeat: int = 0, overwrite: bool = False) -> list["SegmenterTrainResult"]:
    """Train `repeats` segmenters that differ only in their seed (the paper's repeated runs).

    One repeat trains into `out` itself, as :func:`run`; several train into
    ``out/repeat-00``, ``out/repeat-01``, ... with seeds ``cfg.seed + i``. A run that
    already finished with the same inputs, config and seed (its ``completion.json``) is not
    trained again, so an interrupted sweep resumes.

    Args:
        train: As :func:`run`.
        real: As :func:`run`.
        synthetic: As :func:`run`.
        out: Output directory.
        cfg: As :func:`run`; ``seed`` is the first repeat's.
        repeats: Number of seeds; default ``segmenter.repeats``.
        name: Run-name prefix; each repeat appends ``-r<repeat>`` (default: the run name of
            :func:`synthmri.segmenters.train.run_name`).
        real_share: As :func:`run`.
        first_repeat: Index of the first repeat in run names (a pipeline task that runs
            repeat 3 of a grid alone passes 3).
        overwrite: As :func:`run`.

    Returns:
        One result per repeat, in seed order.

    Raises:
        ConfigError: `repeats` < 1; and whatever :func:`run` raises.
    """
    import dataclasses

    from synthmri.config import ConfigError
    from synthmri.segmenters.train import open_stores
    from synthmri.stages.outputs import refuse_foreign

    repeats = cfg.segmenter.repeats if repeats is None else int(repeats)
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    out = Path(out)
    refuse_foreign(out, STAGE, _own_or_other_files, overwrite)
    _clear_stale_runs(out, repeats)
    real_store, synthetic_stores = open_stores(train, real, synthetic)
    share = float(real_share) if train == "ratio" and real_share is not None else None
    inputs = training_record(train, real_store, synthetic_stores, share)
    results = []
    for number in range(repeats):
        seeded = dataclasses.replace(cfg, seed=cfg.seed + number)
        folder = out / f"repeat-{number:02d}" if repeats > 1 else out
        done = _finished(folder, seeded, inputs)
        if done is not None:
            log.info("repeat %d/%d (seed %d) already finished in %s: kept", number + 1, repeats, seeded.seed, folder)
            results.append(done)
            continue
        log.info("repeat %d/%d (seed %d) -> %s", number + 1, repeats, seeded.seed, folder)
        label = name if repeats == 1 or not name else f"{name}-r{first_repeat + number}"
        results.append(run(train, real, synthetic, folder, seeded, name=label, real_share=real_share,
                           repeat=first_repeat + number, overwrite=overwrite))
    return results



def _finished(out: Path, cfg: Config, inputs: dict[str, Any]) -> "SegmenterTrainResult | None":
    """The result of a run in `out` that finished with these inputs, this config and seed, else None."""
    from synthmri.segmenters.train import MODEL_NAME, SegmenterTrainResult
    from synthmri.records import finished_record

    record = finished_record(out, STAGE, cfg, inputs)
    if record is None or not isinstance(record.get("result"), dict) or not (out / MODEL_NAME).is_file():
        return None
    fields = record["result"]
    try:
        return SegmenterTrainResult(**{**fields, "out": Path(fields["out"]), "checkpoint": Path(fields["checkpoint"])})
    except (TypeError, KeyError):
        return None  # a record of another version of this result: train again


def _clear_stale_runs(out: Path, repeats: int) -> None:
    """Remove what an earlier run with another repeat count left in `out`: evaluation reads
    ``model.pt`` or every ``repeat-*``, so leftovers would be scored as part of this run."""
    import shutil

    from synthmri.segmenters.train import HISTORY_NAME, MODEL_NAME, REPEAT_GLOB, STATE_NAME
    from synthmri.records import RECORD_NAME

    keep = {f"repeat-{n:02d}" for n in range(repeats)} if repeats > 1 else set()
    for folder in sorted(out.glob(REPEAT_GLOB)):
        if folder.is_dir() and folder.name not in keep:
            log.warning("removing %s, left by an earlier run with more repeats", folder)
            shutil.rmtree(folder)
    if repeats > 1:
        for leftover in (MODEL_NAME, RECORD_NAME, HISTORY_NAME, STATE_NAME):
            if (out / leftover).exists():
                log.warning("removing %s, left by an earlier single run", out / leftover)
                (out / leftover).unlink()


VERB = Verb(name="train-segmenter", help="Train segmentation networks on real, synthetic or mixed slices.",
            add_arguments=add_arguments, main=main, resources=Resources(cpu="4", memory="8Gi", gpu=True))
