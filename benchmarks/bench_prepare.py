"""Benchmark ``prepare`` against the floor it cannot beat: decompressing the same files.

Every BraTS volume arrives gzip-compressed, and prepare has to inflate each byte once. The
floor is the time to do only that (read each file, gunzip it, discard the result) with the
same number of worker processes and the same decompressor prepare uses. The ratio
prepare / floor says how much everything else (NIfTI decoding, checks, scaling, slicing,
the foreground filter, shard writes and hashing) adds on top. Both are measured in the
same run, alternating, on the same phantom subjects at full BraTS size (240 x 240 x 155).

Usage::

    python benchmarks/bench_prepare.py --out benchmarks/results/prepare.json
    python benchmarks/bench_prepare.py --subjects 4 --shape 120 120 80 --out /tmp/p.json
    python benchmarks/bench_prepare.py --profile --out benchmarks/results/prepare.json  # + where time goes

Target (issue 7): ``ratio_vs_gzip_floor`` at most 1.3 on at least 20 full-size subjects.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import dataclasses
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from synthmri.config import load_config
from synthmri.data.phantom import write_phantom_dataset
from synthmri.data.prepare import gunzip, prepare
from synthmri.io import atomic_write_json


def _inflate(path: Path) -> int:
    return len(gunzip(path.read_bytes(), path.name))


def gzip_floor(files: list[Path], workers: int) -> float:
    """Seconds to read and gunzip every file with `workers` processes (1: in this process)."""
    start = time.perf_counter()
    if workers <= 1:
        for path in files:
            _inflate(path)
    else:
        with futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_inflate, files, chunksize=1))
    return time.perf_counter() - start


def prepare_seconds(source: Path, out: Path, workers: int) -> float:
    """Seconds of one full ``prepare`` (paper settings) into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("paper", {"data.test_subjects": 2})
    start = time.perf_counter()
    prepare(source, out, cfg, workers=workers)
    return time.perf_counter() - start


def profile_breakdown(source: Path, out: Path, top: int = 12) -> list[dict[str, object]]:
    """Where a single-process prepare spends its time: the `top` functions by own time (cProfile)."""
    import cProfile
    import pstats

    shutil.rmtree(out, ignore_errors=True)
    profiler = cProfile.Profile()
    profiler.enable()
    prepare(source, out, load_config("paper", {"data.test_subjects": 2}), workers=1)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, _, own s, cumulative s, _)
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [{"function": f"{Path(where[0]).name}:{where[2]}", "calls": value[0], "own_seconds": round(value[2], 4),
             "cumulative_seconds": round(value[3], 4)} for where, value in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3, help="alternating prepare/floor rounds; medians reported")
    parser.add_argument("--data", type=Path, help="phantom directory to reuse (made there when missing)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one single-process prepare and record where its time goes")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        source = args.data or scratch / "brats"
        if not source.is_dir():
            phantom = dataclasses.replace(load_config("demo").phantom, subjects=args.subjects, shape=tuple(args.shape))
            write_phantom_dataset(source, phantom)
        files = sorted(source.rglob("*.nii.gz"))
        # Warm the page cache and the process pool's imports once, untimed.
        gzip_floor(files[: args.workers], args.workers)
        floors, prepares = [], []
        for _ in range(args.rounds):
            prepares.append(prepare_seconds(source, scratch / "store", args.workers))
            floors.append(gzip_floor(files, args.workers))
        seconds, floor = statistics.median(prepares), statistics.median(floors)
        subjects = len({p.parent for p in files})
        result = {
            "benchmark": "prepare",
            "subjects": subjects,
            "shape": list(args.shape),
            "files": len(files),
            "compressed_bytes": sum(p.stat().st_size for p in files),
            "workers": args.workers,
            "rounds": args.rounds,
            "seconds": seconds,
            "gzip_floor_seconds": floor,
            "subjects_per_s": subjects / seconds,
            "ratio_vs_gzip_floor": seconds / floor,
            "all_seconds": {"prepare": prepares, "gzip_floor": floors},
            "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
        }
        if args.profile:
            result["single_process_profile"] = profile_breakdown(source, scratch / "profiled")
        atomic_write_json(args.out, result)
        print(json.dumps({k: result[k] for k in ("subjects", "workers", "seconds", "gzip_floor_seconds",
                                                 "subjects_per_s", "ratio_vs_gzip_floor")}, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
