"""Benchmark ``make demo`` end to end on clean clones: before and after a change, quiet and busy.

Each run clones the repository at a commit into a scratch folder (``git clone``, so nothing
of this checkout's outputs, caches or MLflow database comes along), points ``.venv`` at an
existing environment (the install is not what is timed: ``make -o .venv/.installed``), and
times ``make demo``: ``dvc repro`` of the whole pipeline, then ``synthmri summary``.

- quiet: nothing else running (as far as this machine allows: it is shared);
- busy: N single-threaded CPU-bound processes beside it, started before and stopped after.

Fair share: beside N busy processes on C CPUs the demo's share is C / (N + 1) CPUs; alone it
may use all C, so its fair slowdown is N + 1 (3x for two busy processes on two CPUs); the
target is within 1.3x of that.

Usage::

    python benchmarks/bench_demo.py --before b36848a --after HEAD --venv .venv \\
        --out benchmarks/results/demo_busy.json
    python benchmarks/bench_demo.py --before b36848a --runs before-quiet before-busy \\
        --out benchmarks/results/demo_busy_before.json
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthmri.io import atomic_write_json
from synthmri.threads import affinity_cpus

from busy import BUSY_LOOP, busy_processes  # benchmarks/busy.py, beside this script

REPO = Path(__file__).resolve().parents[1]


def clone(commit: str, where: Path, venv: Path) -> str:
    """A clean clone of this repository at `commit` in `where`; returns the full commit id."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(where)], check=True)
    subprocess.run(["git", "-C", str(where), "checkout", "--quiet", commit], check=True)
    (where / ".venv").symlink_to(venv.resolve())
    return subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def run_demo(checkout: Path, busy: int, log: Path) -> float:
    """Seconds of ``make demo`` in `checkout` beside `busy` CPU-bound processes."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and k != "SYNTHMRI_THREADS"
           and not k.startswith("MLFLOW_")}
    with busy_processes(busy):
        start = time.perf_counter()
        with open(log, "w") as handle:
            result = subprocess.run(["make", "-o", ".venv/.installed", "demo"], cwd=checkout, env=env,
                                    stdout=handle, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"make demo failed in {checkout} ({result.returncode}); log: {log}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="commit before the change")
    parser.add_argument("--after", default="HEAD", help="commit after the change")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv", help="an installed environment to reuse")
    parser.add_argument("--busy", type=int, default=2, help="busy processes in the busy run")
    parser.add_argument("--runs", nargs="+", default=["before-quiet", "after-quiet", "after-busy"],
                        choices=["before-quiet", "after-quiet", "after-busy", "before-busy"],
                        help="which runs, in this order (ratios are reported for the pairs present)")
    parser.add_argument("--scratch", type=Path, help="where the clones go (kept; default: a temporary folder)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-demo-"))
    scratch.mkdir(parents=True, exist_ok=True)
    cpus = affinity_cpus()
    runs: dict[str, dict] = {}
    for name in args.runs:
        label, kind = name.split("-")
        commit, busy = (args.before if label == "before" else args.after), (args.busy if kind == "busy" else 0)
        checkout = scratch / name
        full = clone(commit, checkout, args.venv)
        seconds = run_demo(checkout, busy, scratch / f"{name}.log")
        runs[name] = {"commit": full, "busy_processes": busy, "seconds": seconds, "log": str(scratch / f"{name}.log")}
        print(f"{name}: {seconds:.0f} s", flush=True)

    fair = float(args.busy + 1)  # C / (C / (N + 1)): the demo alone runs on all C CPUs
    result: dict = {
        "benchmark": "make demo end to end on clean clones (install not timed)",
        "cpus": cpus,
        "busy_process": f"{sys.executable} -c '{BUSY_LOOP}'",
        "runs": runs,
        "fair_slowdown": fair,
        "targets": {"quiet_after_vs_before": 1.0, "busy_after_ratio_to_fair": 1.3},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
    }
    seconds = {name: run["seconds"] for name, run in runs.items()}
    if {"before-quiet", "after-quiet"} <= seconds.keys():
        result["quiet_after_vs_before"] = seconds["after-quiet"] / seconds["before-quiet"]
    for label in ("after", "before"):
        if {f"{label}-quiet", f"{label}-busy"} <= seconds.keys():
            slowdown = seconds[f"{label}-busy"] / seconds[f"{label}-quiet"]
            result[f"busy_{label}_vs_quiet_{label}"] = slowdown
            result[f"busy_{label}_ratio_to_fair"] = slowdown / fair
    atomic_write_json(args.out, result)
    print({k: v for k, v in result.items() if k not in ("runs", "machine")})


if __name__ == "__main__":
    main()
