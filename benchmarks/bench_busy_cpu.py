"""Benchmark one training stage alone and beside N busy processes, against its fair share.

The stage is the demo's StyleGAN2 ``synthmri train-generator`` (a short run, ``--kimg``),
started as a user starts it, in a fresh process, with MLflow on a sqlite file in a scratch
folder. The busy processes are single-threaded CPU-bound Python loops, started before the
stage and stopped after it.

Two thread policies, in the same run:

- ``follow``: the default (threads.py): the pools start at the CPUs the process may use and
  then follow the CPUs other processes leave free;
- ``fixed``: ``SYNTHMRI_THREADS`` set to the CPUs of the machine, a fixed pool as large as
  the machine (what every stage did before threads followed the load, and what torch does
  by itself).

Fair share: beside N busy processes on C CPUs the stage's share is C / (N + 1) CPUs. Alone
it ran on min(C, its threads) CPUs, so its fair slowdown is that number divided by its share
(3x for two busy processes on two CPUs). ``ratio_to_fair`` is the measured slowdown (wall
time of the whole stage, start-up included) over the fair slowdown: at most 1 means the
stage got at least its share, and the target is at most 1.3. The training loop's own time
(from the stage's last progress line) is reported beside it.

Usage::

    python benchmarks/bench_busy_cpu.py --out benchmarks/results/busy_cpu.json
    python benchmarks/bench_busy_cpu.py --busy 2 --kimg 0.2 --out /tmp/busy.json   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthmri.config import load_config
from synthmri.data.phantom import write_phantom_dataset
from synthmri.data.prepare import prepare
from synthmri.io import atomic_write_json
from synthmri.threads import affinity_cpus

from busy import BUSY_LOOP, busy_processes  # benchmarks/busy.py, beside this script

REPO = Path(__file__).resolve().parents[1]
FINISHED = re.compile(r"finished: (\d+) iterations in ([\d.]+) s")


def stage_environment(scratch: Path, policy: str) -> dict[str, str]:
    """The stage's environment: no thread settings of the caller's, then the policy's."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and k != "SYNTHMRI_THREADS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}", PYTHONUNBUFFERED="1")
    if policy == "fixed":
        env["SYNTHMRI_THREADS"] = str(os.cpu_count() or 1)
    return env


def run_stage(scratch: Path, policy: str, busy: int, kimg: float) -> dict:
    """Run the stage beside `busy` CPU-bound processes; returns its wall and loop times."""
    with busy_processes(busy):
        out = scratch / f"generator-{policy}-{busy}"
        command = [sys.executable, "-m", "synthmri", "train-generator", "--profile", str(REPO / "configs" / "demo.yaml"),
                   "--model", "stylegan2", "--kimg", str(kimg), "--no-register", "--data", str(scratch / "slices"),
                   "--out", str(out), "--overwrite"]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=scratch, env=stage_environment(scratch, policy),
                                capture_output=True, text=True)
        wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    finished = FINISHED.findall(result.stderr)
    if not finished:
        raise RuntimeError(f"no 'finished: N iterations in S s' line from the stage:\n{result.stderr[-3000:]}")
    iterations, loop_seconds = finished[-1]
    print(f"  {policy:6s} beside {busy} busy: {wall:6.1f} s wall, {float(loop_seconds):6.1f} s training loop",
          flush=True)
    return {"wall_seconds": wall, "loop_seconds": float(loop_seconds), "iterations": int(iterations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, nargs="+", default=[2, 4], help="numbers of busy processes")
    parser.add_argument("--kimg", type=float, default=0.4, help="thousands of images the stage trains on")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    cpus = affinity_cpus()
    with tempfile.TemporaryDirectory(prefix="bench-busy-") as tmp:
        scratch = Path(tmp)
        cfg = load_config(REPO / "configs" / "demo.yaml")
        write_phantom_dataset(scratch / "phantom", cfg.phantom)
        prepare(scratch / "phantom", scratch / "slices", cfg)
        runs: dict[str, dict[str, dict]] = {"follow": {}, "fixed": {}}
        for busy in [0, *args.busy]:
            for policy in ("follow", "fixed"):  # alternating: both see the same machine
                runs[policy][str(busy)] = run_stage(scratch, policy, busy, args.kimg)

    results: dict[str, dict] = {}
    for policy, by_busy in runs.items():
        alone = by_busy["0"]
        results[policy] = {"alone": alone, "busy": {}}
        for busy in map(str, args.busy):
            share = cpus / (int(busy) + 1)
            fair = max(1.0, cpus / share)  # alone, both policies ran on all its CPUs
            slowdown = by_busy[busy]["wall_seconds"] / alone["wall_seconds"]
            loop_slowdown = by_busy[busy]["loop_seconds"] / alone["loop_seconds"]
            results[policy]["busy"][busy] = {
                **by_busy[busy], "fair_share_cpus": share, "fair_slowdown": fair,
                "slowdown": slowdown, "ratio_to_fair": slowdown / fair,
                "loop_slowdown": loop_slowdown, "loop_ratio_to_fair": loop_slowdown / fair,
            }
    report = {
        "benchmark": "busy_cpu",
        "stage": f"synthmri train-generator --profile demo --model stylegan2 --kimg {args.kimg} --no-register",
        "busy_process": f"{sys.executable} -c '{BUSY_LOOP}'",
        "policies": {"follow": "default: threads follow the CPUs other processes leave free",
                     "fixed": f"SYNTHMRI_THREADS={os.cpu_count()}: a fixed pool the size of the machine"},
        "fair_slowdown": "CPUs / (CPUs / (busy + 1)) = busy + 1 where busy + 1 >= CPUs, at least 1",
        "target": "ratio_to_fair <= 1.3",
        "cpus": cpus,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "results": results,
    }
    atomic_write_json(args.out, report)
    for policy in results:
        for busy, row in results[policy]["busy"].items():
            print(f"{policy:6s} beside {busy}: {row['slowdown']:.2f}x alone, fair {row['fair_slowdown']:.2f}x, "
                  f"ratio to fair {row['ratio_to_fair']:.2f} (training loop {row['loop_ratio_to_fair']:.2f})")


if __name__ == "__main__":
    main()
