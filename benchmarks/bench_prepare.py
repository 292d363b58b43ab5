"""Benchmark ``prepare`` against the floors it cannot beat: decompressing the same files.

Every BraTS volume arrives gzip-compressed, and prepare has to inflate each byte once. A
floor is the time to do only that (read each file, gunzip it, discard the result) with the
same number of workers, run as prepare runs its own (threads, with the allocator keeping
freed buffers: ``freed_memory_kept``), by zlib (Python's ``gzip``, what prepare used
before) and by ISA-L's igzip (``isal``, what prepare uses where it is installed, as the
lock pins it). The same two in spawned processes with the default allocator, the loop a
user would write and what the floors were before, are reported beside them. prepare / floor says how much everything else (NIfTI decoding, checks, scaling,
slicing, the foreground filter, shard writes and hashing) adds on top. All are measured in
the same run, alternating, on the same phantom subjects at full BraTS size (240 x 240 x 155).

Usage::

    python benchmarks/bench_prepare.py --out benchmarks/results/prepare.json
    python benchmarks/bench_prepare.py --subjects 4 --shape 120 120 80 --out /tmp/p.json
    python benchmarks/bench_prepare.py --profile --out benchmarks/results/prepare.json  # + where time goes

Targets (issue 19), on at least 20 full-size subjects: ``ratio_vs_zlib_floor`` at most 1.0
and ``ratio_vs_isal_floor`` at most 1.3.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import dataclasses
import functools
import gzip
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
from synthmri.data.prepare import prepare
from synthmri.data.slicing import freed_memory_kept, gzip_decompressor
from synthmri.io import atomic_write_json

DECOMPRESSORS = ("zlib", "isal")
POOLS = ("thread", "process")
FLOORS = [(decompressor, pool) for pool in POOLS for decompressor in DECOMPRESSORS]
#: The paper's slicing; a seeded split, since phantoms are not the authors' published test subjects.
PAPER_OVERRIDES = {"data.test_subjects": 2, "data.split": "seeded"}


def _inflate(path: Path, decompressor: str) -> int:
    if decompressor == "isal":
        from isal import igzip

        return len(igzip.decompress(path.read_bytes()))
    return len(gzip.decompress(path.read_bytes()))


def gzip_floor(files: list[Path], workers: int, decompressor: str, pool: str) -> float:
    """Seconds to read and gunzip every file with `workers` workers (1: one after the other).

    ``pool="process"``: spawned processes and the default allocator, the loop a user would
    write (and what prepare did before). ``pool="thread"``: threads with freed buffers kept
    by the allocator, exactly how prepare now runs its workers.
    """
    inflate = functools.partial(_inflate, decompressor=decompressor)
    start = time.perf_counter()
    if pool == "thread":
        with freed_memory_kept():
            if workers <= 1:
                for path in files:
                    inflate(path)
            else:
                with futures.ThreadPoolExecutor(workers) as threads:
                    list(threads.map(inflate, files))
    elif workers <= 1:
        for path in files:
            inflate(path)
    else:
        with futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as processes:
            list(processes.map(inflate, files, chunksize=1))
    return time.perf_counter() - start


def prepare_seconds(source: Path, out: Path, workers: int) -> float:
    """Seconds of one full ``prepare`` (paper settings) into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("paper", PAPER_OVERRIDES)
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
    prepare(source, out, load_config("paper", PAPER_OVERRIDES), workers=1)
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
        # Warm the page cache and the imports once, untimed.
        for decompressor, pool in FLOORS:
            gzip_floor(files[: args.workers], args.workers, decompressor, pool)
        floors: dict[str, list[float]] = {f"{d}_{p}": [] for d, p in FLOORS}
        prepares = []
        for _ in range(args.rounds):
            prepares.append(prepare_seconds(source, scratch / "store", args.workers))
            for decompressor, pool in FLOORS:
                floors[f"{decompressor}_{pool}"].append(gzip_floor(files, args.workers, decompressor, pool))
        seconds = statistics.median(prepares)
        floor = {name: statistics.median(times) for name, times in floors.items()}
        subjects = len({p.parent for p in files})
        result = {
            "benchmark": "prepare",
            "subjects": subjects,
            "shape": list(args.shape),
            "files": len(files),
            "compressed_bytes": sum(p.stat().st_size for p in files),
            "workers": args.workers,
            "rounds": args.rounds,
            "prepare_decompressor": gzip_decompressor()[0],
            "prepare_workers": "threads, freed buffers kept by the allocator",
            "seconds": seconds,
            "floors": {
                "thread": "the same workers as prepare: threads, freed buffers kept (the floor prepare is held to)",
                "process": "spawned processes, default allocator (a user's loop; what the issue measured)",
            },
            "zlib_floor_seconds": floor["zlib_thread"],
            "isal_floor_seconds": floor["isal_thread"],
            "zlib_process_floor_seconds": floor["zlib_process"],
            "isal_process_floor_seconds": floor["isal_process"],
            "subjects_per_s": subjects / seconds,
            "ratio_vs_zlib_floor": seconds / floor["zlib_thread"],
            "ratio_vs_isal_floor": seconds / floor["isal_thread"],
            "ratio_vs_zlib_process_floor": seconds / floor["zlib_process"],
            "ratio_vs_isal_process_floor": seconds / floor["isal_process"],
            "targets": {"ratio_vs_zlib_floor": 1.0, "ratio_vs_isal_floor": 1.3},
            "all_seconds": {"prepare": prepares, **{f"{name}_floor": times for name, times in floors.items()}},
            "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
        }
        if args.profile:
            result["single_process_profile"] = profile_breakdown(source, scratch / "profiled")
        atomic_write_json(args.out, result)
        print(json.dumps({k: v for k, v in result.items() if k.startswith(("ratio", "seconds", "subjects"))
                          or k.endswith("floor_seconds")}, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
