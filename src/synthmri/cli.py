"""``synthmri <verb>``: one command line for every stage (DVC and Kubeflow call the same verbs).

Each verb parses its flags, resolves the config (profile, then ``--set key=value``, then
the verb's own flags) and calls one library function. Heavy imports happen inside the
handlers so ``synthmri --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from synthmri import __version__
from synthmri.config import GENERATOR_MODELS, SEGMENTER_ARCHS, Config, ConfigError, load_config, parse_override
from synthmri.data.store import StoreError
from synthmri.io import atomic_write_bytes, atomic_write_json, expand_artifact_paths, scalar_metrics
from synthmri.promote import PromotionError

log = logging.getLogger("synthmri")

PROFILE_ENV = "SYNTHMRI_PROFILE"


class UsageError(Exception):
    """Bad command-line input; printed without a traceback, exit status 2."""


def _config(args: argparse.Namespace, **flag_overrides: Any) -> Config:
    """Profile -> --set overrides -> the verb's explicit flags (those not None)."""
    overrides: dict[str, Any] = {}
    for text in args.set or []:
        key, value = parse_override(text)
        overrides[key] = value
    overrides.update({k: v for k, v in flag_overrides.items() if v is not None})
    return load_config(args.profile, overrides)


# ---------------------------------------------------------------------------- handlers


def _phantom(args: argparse.Namespace) -> int:
    from synthmri.data.phantom import write_phantom_dataset

    cfg = _config(args, **{"phantom.subjects": args.subjects, "phantom.shape": args.shape, "phantom.seed": args.seed})
    paths = write_phantom_dataset(args.out, cfg.phantom)
    print(f"wrote {len(paths)} phantom subjects to {args.out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from synthmri.data.prepare import prepare

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    cfg = _config(args, **{"data.size": args.size, "data.test_subjects": args.test_subjects, "data.seed": args.seed,
                           "data.layout": args.layout})
    workers = args.workers or min(os.cpu_count() or 1, 8)
    if args.source:
        result = prepare(args.source, args.out, cfg, workers=workers, endpoint_url=args.endpoint_url,
                         download_dir=args.download_dir)
    elif args.phantom_subjects:
        # No data given (a pipeline run without a data URI): phantom subjects, made for this run only.
        import tempfile

        from synthmri.data.phantom import write_phantom_dataset

        phantom = replace(cfg.phantom, subjects=args.phantom_subjects, seed=cfg.seed if args.seed is None else args.seed)
        # Phantoms carry BraTS 2021 names but are none of the published subjects: a seeded split.
        cfg = replace(cfg, data=replace(cfg.data, split="seeded"))
        with tempfile.TemporaryDirectory(prefix="synthmri-phantom-") as scratch:
            write_phantom_dataset(Path(scratch), phantom)
            result = prepare(scratch, args.out, cfg, workers=workers)
    else:
        raise UsageError("--source is empty: give a BraTS directory or s3:// URI, or --phantom-subjects N")
    print(result.summary())
    return result.exit_code(strict=args.strict)


def _under_torchrun(args: argparse.Namespace) -> int:
    """Run this same command as `args.nproc_per_node` data-parallel processes under torchrun."""
    import subprocess

    argv, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
        elif item == "--nproc-per-node":
            skip = True
        elif not item.startswith("--nproc-per-node="):
            argv.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={args.nproc_per_node}", "-m", "synthmri", *argv]
    log.info("%d processes under torchrun: %s", args.nproc_per_node, " ".join(command))
    return subprocess.run(command, check=False).returncode


def _train_generator(args: argparse.Namespace) -> int:
    from synthmri.generators.train import train_generator

    if args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        return _under_torchrun(args)

    model = args.model or _config(args).generator.model
    overrides: dict[str, Any] = {"generator.model": model, "seed": args.seed}
    if args.iterations is not None:
        if model != "ddpm":
            raise UsageError(f"--iterations sets the diffusion model's steps; {model} trains for --kimg "
                             "thousand images")
        overrides["generator.ddpm.iterations"] = args.iterations
    if args.kimg is not None:
        if model == "ddpm":
            raise UsageError("--kimg sets a GAN's training length; the diffusion model takes --iterations")
        overrides[f"generator.{model}.kimg"] = args.kimg
    cfg = _config(args, **overrides)
    result = train_generator(args.data, args.out, cfg, resume=args.resume, register=not args.no_register)
    print(result.summary())
    return 0


def _generate(args: argparse.Namespace) -> int:
    from synthmri.generators.sample import generate

    cfg = _config(args, **{"generator.n_synthetic": args.n, "seed": args.seed})
    manifest = generate(args.generator, args.out, cfg)
    print(f"wrote {manifest['counts']['slices']} synthetic slices to {args.out}")
    return 0


def _evaluate_synthetic(args: argparse.Namespace) -> int:
    from synthmri.metrics.evaluate_synthetic import evaluate_synthetic

    cfg = _config(args)
    summary = evaluate_synthetic(args.real, args.synthetic, args.out, cfg, segmenter=args.segmenter)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    _write_metrics(args, summary)
    return 0


def _share(args: argparse.Namespace) -> int:
    from synthmri.metrics.share import share

    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be a correlation in [-1, 1], got {args.threshold}")
    cfg = _config(args)
    result = share(args.synthetic, args.real, args.out, cfg, threshold=args.threshold)
    print(result.summary())
    return 0


def _train_segmenter(args: argparse.Namespace) -> int:
    from synthmri.segmenters.train import train_repeats

    cfg = _config(args, **{"segmenter.arch": args.arch, "segmenter.augment": args.aug, "seed": args.seed,
                           "segmenter.repeats": args.repeats})
    if args.train in ("synthetic", "mixed") and not args.synthetic:
        raise UsageError(f"--train {args.train} needs at least one --synthetic store")
    if args.train in ("real", "mixed", "ratio") and not args.real:
        raise UsageError(f"--train {args.train} needs --real")
    if args.real_share is not None and args.train != "ratio":
        raise UsageError("--real-share goes with --train ratio")
    if args.real_share is not None and not 0.0 <= args.real_share <= 1.0:
        raise UsageError(f"--real-share must be in [0, 1], got {args.real_share}")
    # --train ratio without --real-share: the whole sweep of segmenter.ratio_shares, one folder per share.
    runs = [(None, args.out)] if args.train != "ratio" else [(args.real_share, args.out)] if args.real_share is not None \
        else [(share, args.out / f"share-{round(share * 100):03d}") for share in cfg.segmenter.ratio_shares]
    if args.train == "ratio" and any(share < 1.0 for share, _ in runs) and not args.synthetic:
        raise UsageError("--train ratio below a real share of 1 needs at least one --synthetic store")
    for share, out in runs:
        for result in train_repeats(train=args.train, real=args.real, synthetic=args.synthetic or [], out=out, cfg=cfg,
                                    name=args.name, real_share=share, first_repeat=args.repeat_index):
            print(result.summary())
    return 0


def _evaluate_segmenter(args: argparse.Namespace) -> int:
    from synthmri.segmenters.evaluate import evaluate_segmenter

    cfg = _config(args, **{"evaluation.eval_slices": args.eval_slices})
    summary = evaluate_segmenter(args.model, args.data, args.out, cfg)
    print(summary.describe())
    _write_metrics(args, {key: summary.summary.get(key) for key in ("mean_dice", "dice", "hausdorff", "hausdorff95")})
    return 0


def _report(args: argparse.Namespace) -> int:
    from synthmri.report import write_report

    cfg = _config(args)
    path = write_report(
        out=args.out, evaluations=expand_artifact_paths(args.evaluation),
        memorization=expand_artifact_paths(args.memorization), real=args.real,
        synthetic=expand_artifact_paths(args.synthetic), promotion=expand_artifact_paths(args.promotion), cfg=cfg,
    )
    # Single-file copies for orchestrators that show a report by type (Kubeflow's HTML/Markdown artifacts).
    for copy, name in ((args.html_out, "report.html"), (args.markdown_out, "report.md")):
        if copy is not None:
            atomic_write_bytes(copy, (path.parent / name).read_bytes())
    print(f"report: {path}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from synthmri.promote import promote

    cfg = _config(args)
    version = args.version
    if Path(version).suffix == ".json":
        # The registration record train-generator wrote: promote exactly the version it made.
        record = Path(version)
        if not record.is_file():
            raise UsageError(f"--version {version}: registration file not found")
        version = str(json.loads(record.read_text())["version"])
    decision = promote(
        model=args.model, version=version, memorization=args.memorization,
        real_evaluation=expand_artifact_paths(args.real_evaluation),
        synthetic_evaluation=expand_artifact_paths(args.synthetic_evaluation),
        out=args.out, cfg=cfg,
    )
    print(decision.describe())
    _write_metrics(args, {"passed": float(decision.passed), **{c.name: c.value for c in decision.criteria}})
    return 0 if decision.passed or args.exit_zero else 1


def _gather(args: argparse.Namespace) -> int:
    from synthmri.segmenters.evaluate import gather_evaluations

    gathered = gather_evaluations(expand_artifact_paths(args.evaluation), args.out)
    print(f"gathered {gathered['evaluations']} evaluations into {args.out}")
    return 0


def _grid(args: argparse.Namespace) -> int:
    from synthmri.segmenters.grid import segmenter_grid

    cfg = _config(args)
    cells = segmenter_grid(archs=_names(args.archs), sources=_names(args.train),
                           augment=[_switch(v) for v in _names(args.augment)],
                           repeats=cfg.segmenter.repeats if args.repeats is None else args.repeats,
                           seed=cfg.seed if args.seed is None else args.seed)
    atomic_write_json(args.out, cells)
    print(f"{len(cells)} segmenter runs to {args.out}")
    return 0


def _whole_number(text: str) -> int:
    """An int flag that also takes ``3.0``: a pipeline passes loop items' numbers as JSON floats."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def _names(values: list[str]) -> list[str]:
    """Words from flags given as words, comma lists or a JSON list (what a pipeline passes)."""
    names: list[str] = []
    for value in values:
        text = value.strip()
        if text.startswith("["):
            try:
                names += [str(v) for v in json.loads(text)]
            except json.JSONDecodeError as exc:
                raise UsageError(f"{text!r}: not a JSON list ({exc})") from None
        else:
            names += [part.strip() for part in text.split(",") if part.strip()]
    return names


def _switch(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("on", "true", "aug", "1", "yes"):
        return True
    if lowered in ("off", "false", "no-aug", "0", "no"):
        return False
    raise UsageError(f"--augment takes on/off (or true/false), got {value!r}")


def _add_metrics_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--metrics-out", type=Path, help=f"also write {what} as flat JSON here (pipeline metrics)")
    p.add_argument("--executor-input", metavar="JSON",
                   help=f"Kubeflow executor input ({{{{$}}}}): write {what} into the executor output it names, "
                        "as the metadata of the step's Metrics outputs, so the Kubeflow UI shows them")


def _write_metrics(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """``--metrics-out``/``--executor-input``: the finite scores of the summary, flat, for a pipeline."""
    metrics = scalar_metrics(summary)
    if getattr(args, "metrics_out", None) is not None:
        atomic_write_json(args.metrics_out, metrics)
    if getattr(args, "executor_input", None) is not None:
        from synthmri.executor_output import write_executor_output

        write_executor_output(args.executor_input, metrics)


def _reader_study(args: argparse.Namespace) -> int:
    from synthmri.reader import finish, open_study, run_until_done

    cfg = _config(args)
    study = open_study(args.out, real=args.real, synthetic=args.synthetic or [], per_source=args.per_source,
                       seed=args.seed, reader=args.reader or "", data=cfg.data)
    if not args.finish and not study.complete:
        run_until_done(study, args.host, args.port, announce=lambda line: print(line, flush=True))
    print(finish(study, cfg).summary())
    return 0


def _summary(args: argparse.Namespace) -> int:
    from synthmri.summary import print_summary

    cfg = _config(args)
    return print_summary(args.root, cfg)


def _pipeline(args: argparse.Namespace) -> int:
    # Kubeflow lives outside the library: pipelines/ is imported only for this verb.
    root = Path(args.project_root).resolve()
    if not (root / "pipelines" / "__init__.py").is_file():
        raise UsageError(f"{root} has no pipelines/ package; pass --project-root of the synthmri checkout")
    if args.parallelism < 1:
        raise UsageError(f"--parallelism must be at least 1, got {args.parallelism}")
    sys.path.insert(0, str(root))
    from pipelines.cli import run_pipeline_command

    return run_pipeline_command(args)


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthmri",
        description="Synthetic brain-tumour MRI: prepare BraTS, train generators, vet and use their images.",
    )
    parser.add_argument("--version", action="version", version=f"synthmri {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default=os.environ.get(PROFILE_ENV),
                        help="profile name (demo, paper) or YAML path; default $SYNTHMRI_PROFILE, else the paper settings")
    common.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one config value, e.g. --set data.size=64 (repeatable)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    p = verb("phantom", _phantom, "Write BraTS-2021-layout phantom subjects (NIfTI) with tumours.")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--subjects", type=int, help="number of subjects (profile: phantom.subjects)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="volume shape (default 240 240 155)")
    p.add_argument("--seed", type=int, help="random seed; same seed, same bytes")

    p = verb("prepare", _prepare, "Slice BraTS volumes into a slice store, split by subject.")
    p.add_argument("--source", default="", help="BraTS directory (one folder per subject) or s3://bucket/prefix")
    p.add_argument("--phantom-subjects", type=int,
                   help="without --source: prepare this many phantom subjects made on the fly (pipelines without data)")
    p.add_argument("--out", type=Path, required=True, help="slice store directory")
    p.add_argument("--size", type=int, help="slice size after padding (below pad_to resamples)")
    p.add_argument("--test-subjects", type=int, help="subjects held out for testing")
    p.add_argument("--seed", type=int, help="seed of the subject shuffle")
    p.add_argument("--layout", choices=("auto", "brats2020", "brats2021", "brats2023", "generic"),
                   help="file naming (profile: data.layout, default auto: detected); it also picks the label map "
                        "unless data.label_map is set (BraTS 2023: enhancing tumour is 3)")
    p.add_argument("--workers", type=int, help="subjects read in parallel (default: CPU count, at most 8)")
    p.add_argument("--endpoint-url", help="S3 endpoint for s3:// sources, e.g. MinIO (default: $AWS_ENDPOINT_URL); "
                   "credentials come from the environment only")
    p.add_argument("--download-dir", type=Path, help="s3:// sources: keep the downloaded files here, so an "
                   "interrupted download resumes (default: a folder beside --out, removed after success)")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any subject was rejected")

    p = verb("train-generator", _train_generator, "Train a generator on the training slices and register it in MLflow.")
    p.add_argument("--model", choices=GENERATOR_MODELS,
                   help="generator family (default: the profile's generator.model)")
    p.add_argument("--data", type=Path, required=True, help="real slice store")
    p.add_argument("--out", type=Path, required=True, help="directory for checkpoints and samples")
    p.add_argument("--iterations", type=int, help="ddpm: training iterations (overrides the profile)")
    p.add_argument("--kimg", type=float, help="GANs: thousands of real images to train on (overrides the profile)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--no-register", action="store_true", help="do not register the model in MLflow")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="data-parallel processes (one per GPU); above 1 the command re-runs itself under torchrun")

    p = verb("generate", _generate, "Sample a synthetic slice store from a generator.")
    p.add_argument("--generator", required=True, help="models:/synthmri-ddpm@candidate, runs:/..., or a checkpoint path")
    p.add_argument("--n", type=int, help="number of synthetic slices (profile: generator.n_synthetic)")
    p.add_argument("--out", type=Path, required=True, help="synthetic slice store directory")
    p.add_argument("--seed", type=int, help="sampling seed; same seed, same bytes on CPU")

    p = verb("evaluate-synthetic", _evaluate_synthetic,
             "Memorization against every training slice; FID/IS and in-domain FD, KID, precision/recall.")
    p.add_argument("--real", type=Path, required=True, help="real slice store (train+val: the generator's training set, the reference; test: the baseline)")
    p.add_argument("--synthetic", type=Path, required=True, help="synthetic slice store")
    p.add_argument("--out", type=Path, required=True, help="output directory (memorization.csv, summary.json)")
    p.add_argument("--segmenter", type=Path, help="segmenter trained on real slices (train-segmenter output): "
                   "its features give the in-domain metrics; without it they are skipped")
    _add_metrics_flags(p, "the scores")

    p = verb("share", _share, "A shareable synthetic store: every near-copy of a training slice removed, with reasons.")
    p.add_argument("--synthetic", type=Path, required=True, help="synthetic slice store")
    p.add_argument("--real", type=Path, required=True,
                   help="real slice store (train+val: what must not leak; test split: the baseline)")
    p.add_argument("--out", type=Path, required=True, help="directory of the shareable store (removed.csv, share_report.json)")
    p.add_argument("--threshold", type=float, help="remove slices with max r above this (default: "
                   "memorization.share_threshold, else the baseline's maximum)")

    p = verb("train-segmenter", _train_segmenter, "Train segmentation networks on real, synthetic or mixed slices.")
    p.add_argument("--arch", choices=SEGMENTER_ARCHS, help="segmentation architecture (profile: segmenter.arch)")
    p.add_argument("--train", choices=("real", "synthetic", "mixed", "ratio"), required=True,
                   help="training data: the real train split, the synthetic stores pooled, both sampled equally "
                        "often, or a fixed pool with a share of real slices (--real-share)")
    p.add_argument("--real-share", type=float, help="--train ratio: share of real slices in the pool, 0 to 1 "
                   "(pool size: segmenter.ratio_total); without it every share of segmenter.ratio_shares, "
                   "into OUT/share-PPP")
    p.add_argument("--real", type=Path, help="real slice store (validation always comes from its val split)")
    p.add_argument("--synthetic", type=Path, action="append", help="synthetic slice store (repeatable: an ensemble)")
    p.add_argument("--out", type=Path, required=True, help="directory for the checkpoint and history")
    p.add_argument("--aug", action=argparse.BooleanOptionalAction, default=None, help="paper augmentation on/off")
    p.add_argument("--seed", type=_whole_number, help="random seed of the first repeat")
    p.add_argument("--repeats", type=int, help="runs with seeds seed, seed+1, ... (profile: segmenter.repeats); "
                   "several go to OUT/repeat-NN")
    p.add_argument("--repeat-index", type=_whole_number, default=0,
                   help="index of the first repeat in run names (a pipeline runs repeat r as its own task)")
    p.add_argument("--name", help="run name (default: <generators>-<arch>-<train>-<aug|orig>-r<repeat>)")

    p = verb("evaluate-segmenter", _evaluate_segmenter,
             "3D Dice and Hausdorff (max, 95th percentile, mm) per label and region on the test subjects.")
    p.add_argument("--model", type=Path, required=True,
                   help="train-segmenter output directory (every repeat is scored) or a model.pt")
    p.add_argument("--data", type=Path, required=True, help="real slice store (its test split is scored)")
    p.add_argument("--out", type=Path, required=True, help="output directory (per_subject.csv, summary.json)")
    p.add_argument("--eval-slices", choices=("filtered", "all"), help="restack filtered slices (paper) or all")
    _add_metrics_flags(p, "the scores")

    p = verb("promote", _promote, "Gate a registered generator; passing sets the alias 'champion'.")
    p.add_argument("--model", required=True, help="registered model name, e.g. synthmri-ddpm")
    p.add_argument("--version", default="candidate",
                   help="version number, alias, or a registration.json from train-generator (default: candidate)")
    p.add_argument("--memorization", type=Path, required=True, help="evaluate-synthetic output directory")
    p.add_argument("--real-evaluation", action="append", required=True,
                   help="evaluate-segmenter output of real-only training (repeatable: repeats and settings of a grid, "
                        "narrowed to the profile's architecture with augmentation)")
    p.add_argument("--synthetic-evaluation", action="append", required=True,
                   help="evaluate-segmenter output of synthetic-only training (repeatable, as --real-evaluation)")
    p.add_argument("--out", type=Path, help="write the decision as JSON here")
    p.add_argument("--exit-zero", action="store_true", help="record a failing gate but exit 0 (for DVC demos)")
    _add_metrics_flags(p, "the criteria's values and the verdict (passed 0/1)")

    p = verb("report", _report, "Write the Markdown/HTML report: the paper's Figures 1-4 and Tables 1-7, "
             "memorization and promotion.")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--evaluation", action="append", required=True,
                   help="evaluate-segmenter or gather output (repeatable): Tables 3-7, Figures 2-4")
    p.add_argument("--memorization", action="append",
                   help="evaluate-synthetic output directory, one per generator (repeatable): Tables 1-2, memorization")
    p.add_argument("--real", type=Path, help="real slice store (the reference row of Figure 1)")
    p.add_argument("--synthetic", action="append", help="synthetic slice store (repeatable): one Figure 1 grid each")
    p.add_argument("--promotion", action="append", help="promotion decision JSON (repeatable)")
    p.add_argument("--html-out", type=Path, help="also copy report.html to this file")
    p.add_argument("--markdown-out", type=Path, help="also copy report.md to this file")

    p = verb("gather", _gather, "Collect several evaluate-segmenter outputs (a pipeline's fan-in) into one "
             "directory that the report and the promotion gate read run by run.")
    p.add_argument("--evaluation", action="append", required=True,
                   help="evaluate-segmenter output, or a JSON artifact list of them (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="gathered directory (summary.json, runs/)")

    p = verb("grid", _grid, "Write the segmenter runs of an experiment grid (architecture x data x augmentation x "
             "repeat) as a JSON list, for a pipeline to fan out.")
    p.add_argument("--archs", nargs="+", default=[SEGMENTER_ARCHS[0]], help="architectures (words, a,b or a JSON list)")
    p.add_argument("--train", nargs="+", default=["synthetic", "mixed"],
                   help="training sources: real, synthetic, mixed (words, a,b or a JSON list)")
    p.add_argument("--augment", nargs="+", default=["on", "off"], help="augmentation settings: on, off")
    p.add_argument("--repeats", type=int, help="repeats per setting (profile: segmenter.repeats)")
    p.add_argument("--seed", type=int, help="seed of the first repeat; repeat r uses seed + r")
    p.add_argument("--out", type=Path, required=True, help="JSON file of the runs")

    p = verb("reader-study", _reader_study, "A blinded web app for a radiologist: real or synthetic, image by image; "
             "writes the confusion table per generator (paper, Table 8) to CSV and MLflow.")
    p.add_argument("--real", type=Path, help="real slice store (images from its test split: held-out patients)")
    p.add_argument("--synthetic", type=Path, action="append",
                   help="synthetic slice store (repeatable; named by its manifest's generator)")
    p.add_argument("--per-source", type=int, help="images per source (real and each generator)")
    p.add_argument("--seed", type=int, help="seed of the selection and order (default 0)")
    p.add_argument("--out", type=Path, required=True,
                   help="study directory (plan.json, answers.jsonl, confusion.csv); run again to resume")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (no authentication; default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--reader", help="the reader's name or initials (kept in the plan and in MLflow)")
    p.add_argument("--finish", action="store_true",
                   help="do not serve: write the confusion table from the answers so far (a study stopped early)")

    p = verb("summary", _summary, "Summarise the last local pipeline run: report, registry, scores.")
    p.add_argument("--root", type=Path, default=Path("."), help="project directory of the run (default: .)")

    p = verb("pipeline", _pipeline, "Kubeflow: compile the pipelines to YAML, submit a run to a Kubeflow Pipelines "
             "endpoint, or run one on this machine (kfp.local, no Docker).")
    p.add_argument("action", choices=("compile", "submit", "run-local"),
                   help="compile: every pipeline to --out; submit: start a run of --pipeline on --host; "
                        "run-local: run --pipeline here, every task a local process")
    p.add_argument("--pipeline", choices=("quick", "paper"), default="quick", help="which pipeline (default: quick)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="pipeline parameter, the value as YAML, e.g. --param 'generators=[ddpm, stylegan2]' (repeatable; "
                        "compile: a default compiled into the YAML)")
    p.add_argument("--parallelism", type=int, default=8,
                   help="concurrent tasks per fan-out loop, fixed when compiling (default: 8)")
    p.add_argument("--out", type=Path, help="compile: directory for the compiled YAML")
    p.add_argument("--host", help="submit: Kubeflow Pipelines endpoint (default: $KFP_HOST); the token comes "
                   "from $KFP_TOKEN, else the pod's service account")
    p.add_argument("--namespace", help="submit: Kubeflow profile namespace (default: $KFP_NAMESPACE)")
    p.add_argument("--experiment", default="synthmri", help="submit: Kubeflow experiment (default: synthmri)")
    p.add_argument("--run-name", help="submit: run name (default: Kubeflow's)")
    p.add_argument("--pipeline-root", type=Path, default=Path("outputs/kfp-local"),
                   help="run-local: directory for every task's artifacts (default: outputs/kfp-local)")
    p.add_argument("--project-root", default=".", help="synthmri checkout holding pipelines/ (default: .)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``synthmri`` command."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.handler(args)
    except (UsageError, ConfigError) as exc:
        print(f"synthmri {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, FileNotFoundError, PromotionError, ValueError) as exc:
        print(f"synthmri {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"synthmri {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
