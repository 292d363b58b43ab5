"""Busy processes for the benchmarks that time work beside them (bench_busy_cpu, bench_demo)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from typing import Iterator

#: One single-threaded CPU-bound process.
BUSY_LOOP = "while True: pass"


@contextlib.contextmanager
def busy_processes(count: int, settle: float = 1.0) -> Iterator[None]:
    """`count` CPU-bound loops, started `settle` seconds before the body and killed after it."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        time.sleep(settle if count else 0.0)  # let them take the CPUs first
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
