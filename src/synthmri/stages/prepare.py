"""``synthmri prepare``: BraTS volumes (or phantom subjects) to a slice store, split by subject."""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from synthmri.config import DATA_LAYOUTS, Config
from synthmri.stages.arguments import UsageError, add_overwrite_argument, at_least, config_flag, resolve_config
from synthmri.stages.base import Resources, Verb

if TYPE_CHECKING:
    from synthmri.data.prepare import PrepareResult
    from synthmri.stages.outputs import Kind


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri prepare``."""
    parser.add_argument("--source", default="", help="BraTS directory (one folder per subject) or s3://bucket/prefix")
    parser.add_argument("--phantom-subjects", type=int, help="without --source: prepare this many phantom subjects "
                        "made on the fly (pipelines without data)")
    parser.add_argument("--out", type=Path, required=True, help="slice store directory")
    config_flag(parser, "--size", key="data.size", type=int, help="slice size after padding (below pad_to resamples)")
    config_flag(parser, "--test-subjects", key="data.test_subjects", type=int, help="subjects held out for testing")
    config_flag(parser, "--seed", key="data.seed", type=int, help="seed of the subject shuffle")
    config_flag(parser, "--layout", key="data.layout", choices=DATA_LAYOUTS,
                help="file naming (profile: data.layout, default auto: detected); it also picks the label map "
                     "unless data.label_map is set (BraTS 2023: enhancing tumour is 3)")
    parser.add_argument("--workers", type=int, help="subjects read in parallel, in threads (default: the CPUs this process may "
                        "use, from its affinity, cgroup quota and $SYNTHMRI_THREADS; at most 8)")
    parser.add_argument("--endpoint-url", help="S3 endpoint for s3:// sources, e.g. MinIO (default: "
                        "$AWS_ENDPOINT_URL); credentials come from the environment only")
    parser.add_argument("--download-dir", type=Path, help="s3:// sources: keep the downloaded files here, so an "
                        "interrupted download resumes (default: a folder beside --out, removed after success)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero if any subject was rejected")
    add_overwrite_argument(parser)


def main(args: argparse.Namespace) -> int:
    """Prepare the store; exit 1 when nothing was prepared or a split has no slices (or, with --strict,
    anything rejected)."""
    at_least(args.workers, 1, "--workers")
    cfg = resolve_config(args)
    from synthmri.threads import available_threads

    workers = args.workers or min(available_threads(), 8)  # the CPUs this process may use, not the node's
    if args.source:
        result = run(args.source, args.out, cfg, workers=workers, endpoint_url=args.endpoint_url,
                     download_dir=args.download_dir, overwrite=args.overwrite)
    elif args.phantom_subjects:
        # No data given (a pipeline run without a data URI): phantom subjects, made for this run only.
        import tempfile

        from synthmri.stages import phantom

        phantom_cfg = replace(cfg.phantom, subjects=args.phantom_subjects,
                              seed=cfg.seed if args.seed is None else args.seed)
        # Phantoms carry BraTS 2021 names but are none of the published subjects: a seeded split.
        cfg = replace(cfg, data=replace(cfg.data, split="seeded"))
        with tempfile.TemporaryDirectory(prefix="synthmri-phantom-") as scratch:
            phantom.run(Path(scratch), replace(cfg, phantom=phantom_cfg))
            result = run(scratch, args.out, cfg, workers=workers, overwrite=args.overwrite)
    else:
        raise UsageError("--source is empty: give a BraTS directory or s3:// URI, or --phantom-subjects N")
    print(result.summary())
    return result.exit_code(strict=args.strict)


def run(source: str | Path, out: Path, cfg: Config, *, workers: int = 1, endpoint_url: str | None = None,
        download_dir: Path | None = None, overwrite: bool = False) -> "PrepareResult":
    """Prepare the slice store at `out` from `source`, monitored (see :func:`synthmri.data.prepare.prepare`).

    An ``s3://`` source is downloaded first under its own monitor (``download``, counting
    files, one instance per store); the slicing counts subjects (``prepare``).

    Args:
        source: BraTS directory or ``s3://bucket/prefix``.
        out: Slice store directory.
        cfg: Resolved config.
        workers: Processes reading subjects in parallel.
        endpoint_url: S3 endpoint for an ``s3://`` source.
        download_dir: Where to download and keep an ``s3://`` source (default: beside `out`,
            removed after success).
        overwrite: Replace what `out` holds even if it is not a real slice store (a synthetic
            store, another stage's output); by default that is refused.

    Returns:
        Counts per split, rejected subjects and the manifest.

    Raises:
        PrepareError: The source is missing or unusable, or a split (train always; test and val when
            the split assigned subjects to them) ends without slices; no manifest is written then.
        SourceError: An ``s3://`` source cannot be listed or downloaded.
        OutputError: `out` holds another kind of output.
    """
    from synthmri.data.prepare import prepare_directory, source_directory
    from synthmri.data.sources import is_s3_uri
    from synthmri.stages.context import stage_context
    from synthmri.stages.outputs import refuse_foreign

    refuse_foreign(Path(out), "prepare", _real_store, overwrite)

    with contextlib.ExitStack() as stack:
        downloading = (stage_context("download", cfg, unit="files", instance=Path(out).name)
                       if is_s3_uri(str(source)) else contextlib.nullcontext(None))
        with downloading as download:
            progress = download.monitor.progress if download is not None else None
            root = stack.enter_context(source_directory(source, out, workers=workers, endpoint_url=endpoint_url,
                                                        download_dir=download_dir, progress=progress))
        with stage_context("prepare", cfg, unit="subjects") as context:
            return prepare_directory(str(source), root, out, cfg, workers=workers, progress=context.monitor.progress)


def _real_store(kind: "Kind") -> bool:
    """What prepare may write over: a real slice store, finished or not."""
    return kind.what == "partial-store" or (kind.what == "store" and not kind.generator)


VERB = Verb(name="prepare", help="Slice BraTS volumes into a slice store, split by subject.",
            add_arguments=add_arguments, main=main, resources=Resources(cpu="2", memory="4Gi", s3=True))
