"""``synthmri train-segmenter``: segmentation networks on real, synthetic or mixed slices.

The stage around :mod:`synthmri.segmenters.train`: each run gets its MLflow run (named
``<generators>-<arch>-<train>-<aug|orig>-r<repeat>``, tagged with its setting, its stores as
datasets) and progress monitor, which the training loop reports to; ``result.json``, written
last, marks the run finished with its config and inputs.

Repeats (:func:`run_repeats`, ``--repeats N``): N runs with seeds ``seed, seed + 1, ...``
in ``out/repeat-00``, ``out/repeat-01``, ...; a repeat whose ``result.json`` records the same
config and inputs is kept, so a killed sweep resumes at the first unfinished repeat. A run
that SIGTERM stopped (its state in ``checkpoint.pt``) is marked KILLED.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from synthmri.config import SEGMENTER_ARCHS, Config
from synthmri.stages.arguments import UsageError, config_flag, resolve_config, whole_number
from synthmri.stages.base import Resources, Verb

if TYPE_CHECKING:
    from synthmri.segmenters.train import SegmenterTrainResult

log = logging.getLogger(__name__)

TRAINING_SOURCES = ("real", "synthetic", "mixed", "ratio")


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
                                  name=args.name, real_share=share, first_repeat=args.repeat_index):
            print(result.summary())
    return 0


def run(train: str, real: Path | None, synthetic: Sequence[Path], out: Path, cfg: Config, *, name: str | None = None,
        real_share: float | None = None, repeat: int = 0) -> "SegmenterTrainResult":
    """Train one segmenter, tracked, and mark it finished with ``out/result.json``.

    Args:
        train: ``real``, ``synthetic``, ``mixed`` or ``ratio`` (see
            :class:`synthmri.segmenters.train.SegmenterTraining`).
        real: The real slice store (not opened by a ``synthetic`` run).
        synthetic: Synthetic slice stores (an ensemble when several).
        out: Output directory: ``model.pt``, ``history.csv``, ``config.yaml``, ``result.json``.
        cfg: The resolved config (``segmenter``, ``seed``, ``tracking``).
        name: MLflow run name; default :func:`synthmri.segmenters.train.run_name`.
        real_share: ``ratio`` only: the share of real slices in the pool, in [0, 1].
        repeat: Which repeat of its setting this run is (in the default run name).

    Raises:
        ValueError: Unknown `train`, or a store it needs is missing.
        ConfigError: Unknown architecture, or a budget smaller than one batch.
        StoreError: A store is missing, incomplete or has nothing to sample.
        RuntimeError: The loss became NaN or infinite (diverged).
        TrainingInterrupted: SIGTERM arrived; the training state was saved, the run marked KILLED.
    """
    import dataclasses

    from synthmri.config import to_dict
    from synthmri.io import atomic_write_json
    from synthmri.segmenters.train import RESULT_NAME, SegmenterTraining, training_inputs
    from synthmri.stages.context import stage_context

    training = SegmenterTraining(train, real, synthetic, out, cfg, name=name, real_share=real_share, repeat=repeat)
    with stage_context("train-segmenter", cfg, experiment="segmenters", run_name=training.name,
                       datasets=training.datasets, tags=training.tags, unit="samples", total=training.total,
                       instance=training.name) as context:
        context.log_params(training.params)
        # SIGTERM raises TrainingInterrupted (a KeyboardInterrupt): the context marks the run KILLED.
        result = training.fit(context)
    record = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}
    inputs = training_inputs(train, training.real_store, training.synthetic_stores, training.real_share)
    atomic_write_json(training.out / RESULT_NAME, {"result": record, "config": to_dict(cfg), "inputs": inputs})
    log.info(result.summary())
    return result


def run_repeats(train: str, real: Path | None, synthetic: Sequence[Path], out: Path, cfg: Config, *,
                repeats: int | None = None, name: str | None = None, real_share: float | None = None,
                first_repeat: int = 0) -> list["SegmenterTrainResult"]:
    """Train `repeats` segmenters that differ only in their seed (the paper's repeated runs).

    One repeat trains into `out` itself, as :func:`run`; several train into
    ``out/repeat-00``, ``out/repeat-01``, ... with seeds ``cfg.seed + i``. A run that
    already finished with the same config and inputs (its ``result.json``) is not trained
    again, so an interrupted sweep resumes.

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

    Returns:
        One result per repeat, in seed order.

    Raises:
        ConfigError: `repeats` < 1; and whatever :func:`run` raises.
    """
    import dataclasses

    from synthmri.config import ConfigError
    from synthmri.segmenters.train import open_stores, training_inputs

    repeats = cfg.segmenter.repeats if repeats is None else int(repeats)
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    out = Path(out)
    _clear_stale_runs(out, repeats)
    real_store, synthetic_stores = open_stores(train, real, synthetic)
    share = float(real_share) if train == "ratio" and real_share is not None else None
    inputs = training_inputs(train, real_store, synthetic_stores, share)
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
                           repeat=first_repeat + number))
    return results



def _finished(out: Path, cfg: Config, inputs: dict[str, Any]) -> "SegmenterTrainResult | None":
    """The result of a run in `out` that finished with this config and these inputs, else None."""
    import json

    from synthmri.config import to_dict
    from synthmri.segmenters.train import MODEL_NAME, RESULT_NAME, SegmenterTrainResult

    try:
        record = json.loads((out / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None
    # Compared as JSON reads back (tuples as lists, label-map keys as strings).
    expected = json.loads(json.dumps({"config": to_dict(cfg), "inputs": inputs}))
    if {k: record.get(k) for k in expected} != expected or not (out / MODEL_NAME).is_file():
        return None
    fields = record["result"]
    return SegmenterTrainResult(**{**fields, "out": Path(fields["out"]), "checkpoint": Path(fields["checkpoint"])})


def _clear_stale_runs(out: Path, repeats: int) -> None:
    """Remove what an earlier run with another repeat count left in `out`: evaluation reads
    ``model.pt`` or every ``repeat-*``, so leftovers would be scored as part of this run."""
    import shutil

    from synthmri.segmenters.train import HISTORY_NAME, MODEL_NAME, REPEAT_GLOB, RESULT_NAME, STATE_NAME

    keep = {f"repeat-{n:02d}" for n in range(repeats)} if repeats > 1 else set()
    for folder in sorted(out.glob(REPEAT_GLOB)):
        if folder.is_dir() and folder.name not in keep:
            log.warning("removing %s, left by an earlier run with more repeats", folder)
            shutil.rmtree(folder)
    if repeats > 1:
        for leftover in (MODEL_NAME, RESULT_NAME, HISTORY_NAME, STATE_NAME):
            if (out / leftover).exists():
                log.warning("removing %s, left by an earlier single run", out / leftover)
                (out / leftover).unlink()


VERB = Verb(name="train-segmenter", help="Train segmentation networks on real, synthetic or mixed slices.",
            add_arguments=add_arguments, main=main, resources=Resources(cpu="4", memory="8Gi", gpu=True))
