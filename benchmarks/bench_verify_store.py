"""Benchmark verification on open (``SliceStore(path)``) against what a stage pays anyway.

Every stage opens its stores with :class:`~synthmri.data.store.SliceStore`, which now
verifies the manifest, index.csv against the manifest's content hash, and the sha256 of every
shard before anything is read (synthmri.data.verify). The baseline is what any stage that
reads a store already pays: an unverified open plus reading every slice once (memory-mapped
shards copied out in batches). Measured in the same run, alternating, on two stores:

- ``demo``: the demo's phantom store, made as ``dvc repro`` makes it (``phantom`` then
  ``prepare`` with the demo profile);
- ``full``: 20 subjects at BraTS size, 100 slices each of 5 x 256 x 256 (what ``prepare``
  keeps of 240 x 240 x 155 volumes padded to 256), written directly with ``StoreWriter`` from
  random uint8 data (not through ``prepare``; hashing costs the same on any bytes), shards of
  1024 slices as in the paper profile.

``cold``: no cached verification (every shard hashed); ``warm``: a cache hit (files stat'ed,
index.csv hashed, no shard hashed). Shard mtimes are dated an hour back first, so they count
as settled and are cached (a shard written within the last 2 s is hashed on every open). All
runs read from the page cache: the files were just written and fit in memory.

Usage::

    python benchmarks/bench_verify_store.py --out benchmarks/results/verify_store.json
    python benchmarks/bench_verify_store.py --subjects 4 --rounds 2 --out /tmp/v.json   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from synthmri.config import load_config
from synthmri.data import verify
from synthmri.data.phantom import write_phantom_dataset
from synthmri.data.prepare import prepare
from synthmri.data.store import CHANNELS, SliceRow, SliceStore, StoreWriter
from synthmri.io import atomic_write_json

BATCH = 256


def demo_store(scratch: Path) -> Path:
    """The demo's store: phantom subjects, then prepare, both with the demo profile."""
    cfg = load_config("demo")
    write_phantom_dataset(scratch / "phantom", cfg.phantom)
    prepare(scratch / "phantom", scratch / "demo-slices", cfg)
    return scratch / "demo-slices"


def full_store(scratch: Path, subjects: int, slices_per_subject: int, size: int, shard_size: int) -> Path:
    """`subjects` x `slices_per_subject` random uint8 slices [5, size, size], split 16:2:2 like."""
    out = scratch / "full-slices"
    rng = np.random.default_rng(0)
    with StoreWriter(out, image_size=size, source={"path": "random uint8, not prepared"}, shard_size=shard_size) as writer:
        for number in range(subjects):
            split = "test" if number % 10 == 9 else "val" if number % 10 == 8 else "train"
            subject = f"BraTS2021_{number:05d}"
            data = rng.integers(0, 256, size=(slices_per_subject, len(CHANNELS), size, size), dtype=np.uint8)
            writer.add(data, [SliceRow(f"{subject}-{z:03d}", subject, z, split) for z in range(slices_per_subject)])
    return out


def settle(store: Path) -> None:
    """Date the store's files an hour back: what a store written earlier (by an earlier stage) looks like."""
    past = time.time_ns() - 3600 * 10**9
    for path in store.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(past, past))


def forget(store: Path, cache_file: bool) -> None:
    """Drop this process's memo of verified shards and, with `cache_file`, the store's cache file."""
    verify._MEMO.clear()
    if cache_file:
        file = verify.cache_file(Path(os.path.realpath(store)))
        if file is not None:
            file.unlink(missing_ok=True)


def read_everything(store: SliceStore) -> int:
    """Read every slice once, in batches; returns a checksum so nothing is optimised away."""
    total = 0
    for _, batch in store.iter_batches(np.arange(len(store)), BATCH):
        total += int(batch[:, :, 0, 0].sum())
    return total


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(store: Path, rounds: int) -> dict[str, object]:
    """Median seconds of baseline, cold and warm opens over `rounds` alternating rounds."""
    settle(store)
    read_everything(SliceStore(store, verify=False))  # page cache warm, untimed
    seconds: dict[str, list[float]] = {"baseline": [], "cold": [], "warm": [], "unverified_open": []}
    for _ in range(rounds):
        seconds["baseline"].append(timed(lambda: read_everything(SliceStore(store, verify=False))))
        seconds["unverified_open"].append(timed(lambda: SliceStore(store, verify=False)))
        forget(store, cache_file=True)
        seconds["cold"].append(timed(lambda: SliceStore(store)))
        forget(store, cache_file=False)  # a new process: only the cache file remembers
        seconds["warm"].append(timed(lambda: SliceStore(store)))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    opened = SliceStore(store)
    shard_bytes = sum((store / "shards" / info["name"]).stat().st_size for info in opened.manifest["shards"])
    return {
        "slices": len(opened),
        "shards": len(opened.manifest["shards"]),
        "image_size": opened.image_size,
        "bytes_hashed_cold": shard_bytes + (store / "index.csv").stat().st_size,
        "bytes_hashed_warm": (store / "index.csv").stat().st_size,
        "seconds": median,
        "ratio_cold_vs_baseline": median["cold"] / median["baseline"],
        "ratio_warm_vs_baseline": median["warm"] / median["baseline"],
        "cold_hash_mb_per_s": shard_bytes / 1e6 / max(median["cold"] - median["unverified_open"], 1e-9),
        "all_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=20, help="subjects of the full-size store")
    parser.add_argument("--slices-per-subject", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-verify-store-"))
    os.environ["SYNTHMRI_CACHE_DIR"] = str(scratch / "cache")  # leave the user's cache alone
    try:
        stores = {"demo": demo_store(scratch),
                  "full": full_store(scratch, args.subjects, args.slices_per_subject, args.size, args.shard_size)}
        result = {
            "benchmark": "verify_store",
            "baseline": "SliceStore(path, verify=False) + read every slice once (batches of 256)",
            "cold": "SliceStore(path), no cached verification: every shard's sha256",
            "warm": "SliceStore(path), cached verification: stat of every shard, sha256 of index.csv",
            "page_cache": "warm in every measurement (stores just written, smaller than memory)",
            "hash_threads": max(1, min(verify.HASH_THREADS, os.cpu_count() or 1)),
            "rounds": args.rounds,
            "stores": {
                "demo": {"made_by": "synthmri phantom + prepare, demo profile",
                         **measure(stores["demo"], args.rounds)},
                "full": {"made_by": f"StoreWriter from random uint8 data ({args.subjects} subjects x "
                                    f"{args.slices_per_subject} slices, BraTS 240x240x155 padded to {args.size}), "
                                    "not through prepare",
                         "shard_size": args.shard_size, **measure(stores["full"], args.rounds)},
            },
            "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
        }
        atomic_write_json(args.out, result)
        print(json.dumps({name: {key: value for key, value in store.items() if key not in ("all_seconds", "made_by")}
                          for name, store in result["stores"].items()}, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
