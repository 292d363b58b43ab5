"""Thread pools sized to the CPUs this process may really use.

torch and the OpenMP/BLAS libraries under it start as many threads as the machine has
cores. In a Kubernetes pod that requests 4 CPUs on a 64-core node that is 64 threads on a
4-CPU quota, and on a shared workstation every process spins against every other. The
number that counts is the smallest of:

- ``$SYNTHMRI_THREADS``, when set (a pipeline passes its task's CPU request here);
- the CPUs the scheduler lets this process run on (``sched_getaffinity``);
- the cgroup CPU quota, rounded up (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us``).

:func:`apply_thread_limit` sets it before torch builds its pools (the CLI calls it first).

That ceiling is not enough on a shared workstation: two busy processes beside a stage on two
cores leave it one CPU, and two OpenMP threads that wait on each other at every barrier while
the kernel parks one of them run many times slower than one thread alone (a demo StyleGAN2
trained 8x slower than alone, where its fair share of the CPUs costs 3x). So where the count
came from the affinity alone, nothing having fixed it, :class:`LoadFollower` watches how
much CPU the other processes on this process's CPUs use (``/proc/stat`` minus this process's
own time) and resizes the pools to the CPUs left free, every few seconds, from the main
thread's progress reports (:func:`follow_load`). A fixed count (``$SYNTHMRI_THREADS``, or a
cgroup quota, which the kernel already enforces) is never changed: set ``$SYNTHMRI_THREADS``
for runs that must be bit-for-bit repeatable, since float reductions split by thread count.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

THREADS_ENV = "SYNTHMRI_THREADS"
#: Variables the OpenMP, MKL and OpenBLAS runtimes read when they start their pools.
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
#: Seconds between two looks at the load: long enough to average the kernel's ticks, short
#: enough that a stage adapts within a few of its progress lines.
FOLLOW_INTERVAL = 5.0


class ThreadSettingError(ValueError):
    """``$SYNTHMRI_THREADS`` is not a whole number of at least 1."""


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup CPU quota in CPUs (``1.5`` for 150 ms per 100 ms), or None when unlimited or unknown.

    Args:
        root: Where the cgroup file system is mounted (tests give a folder of their own).
    """
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or "100000")
        v1_quota, v1_period = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if v1_quota.is_file() and v1_period.is_file():
            quota_us = int(v1_quota.read_text().strip())
            return None if quota_us <= 0 else quota_us / int(v1_period.read_text().strip())
    except (OSError, ValueError) as exc:
        log.debug("cgroup CPU quota unreadable under %s: %s", root, exc)
    return None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (all of them where the OS cannot say)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_jiffies(cpus: set[int], stat_path: Path = PROC_STAT) -> tuple[int, int]:
    """``(busy, total)`` clock ticks the kernel has counted on `cpus` since boot.

    Busy is user, nice, system, irq, softirq and steal time; idle and iowait make up the
    rest of the total. Guest time is already inside user time, so it is not added again.
    """
    busy = total = 0
    for line in stat_path.read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in (fields + ["0"] * 8)[:8])
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + irq + softirq + steal + idle + iowait
    return busy, total


class LoadFollower:
    """Resizes the thread pools to the CPUs other processes leave free (module docstring).

    Args:
        ceiling: The most threads to run (:func:`available_threads`).
        cpus: The CPUs this process may run on; only their load counts.
        interval: Seconds between two looks at the load.
        stat_path: The kernel's CPU counters (tests give a file of their own).
        own_seconds: CPU seconds this process has used, all its threads together.
        clock: Wall clock in seconds.
        set_threads: Applies a new count; default: torch's pools, if torch is loaded.
    """

    def __init__(self, ceiling: int, cpus: set[int], interval: float = FOLLOW_INTERVAL, *,
                 stat_path: Path = PROC_STAT, own_seconds: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] | None = None) -> None:
        self.ceiling, self.cpus, self.interval = ceiling, set(cpus), interval
        self.stat_path, self.own_seconds, self.clock = stat_path, own_seconds, clock
        self.set_threads = set_threads or _set_torch_threads
        self.threads = ceiling
        self._asked_fewer = False  # the previous look asked for fewer threads
        self.ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._sample()

    def _sample(self) -> tuple[float, int, int, float]:
        busy, total = cpu_jiffies(self.cpus, self.stat_path)
        return self.clock(), busy, total, self.own_seconds()

    def free_cpus(self, before: tuple[float, int, int, float], after: tuple[float, int, int, float]) -> float | None:
        """CPUs the other processes left idle between two samples; None if no tick passed."""
        busy = after[1] - before[1]
        elapsed_per_cpu = (after[2] - before[2]) / max(len(self.cpus), 1)
        if elapsed_per_cpu <= 0:
            return None
        own = (after[3] - before[3]) * self.ticks_per_second
        others = max(0.0, busy - own) / elapsed_per_cpu
        return max(0.0, len(self.cpus) - others)

    def observe(self) -> int:
        """Look at the load if `interval` has passed and resize the pools; returns the count in force.

        Fewer threads only when two looks in a row ask for fewer: a blip of other work (a git
        command, an import) leaves the count alone, so a run on a quiet machine keeps its
        thread count, and with it its floating-point sums. More threads at once.
        """
        if self.clock() - self._last[0] < self.interval:
            return self.threads
        now = self._sample()
        free = self.free_cpus(self._last, now)
        self._last = now
        if free is None:
            return self.threads
        # Half a CPU or more counts as one: a thread that gets half a core still helps.
        threads = min(self.ceiling, max(1, int(free + 0.5)))
        asked_fewer, self._asked_fewer = self._asked_fewer, threads < self.threads
        if threads < self.threads and not asked_fewer:
            return self.threads
        if threads != self.threads:
            log.debug("other processes leave %.1f of %d CPUs free: %d compute threads", free, len(self.cpus), threads)
            self.set_threads(threads)
            self.threads = threads
            self._asked_fewer = False
        return self.threads


def _set_torch_threads(threads: int) -> None:
    """Resize torch's intra-op pool (and MKL's, which torch resizes with it), if torch is loaded."""
    if (torch := sys.modules.get("torch")) is not None:
        torch.set_num_threads(threads)


_follower: LoadFollower | None = None
#: The pool variables apply_thread_limit wrote itself (so a later call can tell them from a user's).
_POOLS_SET_HERE: dict[str, str] = {}


def follow_load() -> None:
    """Let the installed :class:`LoadFollower` look at the load; call it often from long loops.

    Cheap (a clock read) between looks. Only the main thread resizes: OpenMP's thread count
    belongs to the thread that sets it, and the main thread is the one that runs the maths.
    """
    if _follower is not None and threading.current_thread() is threading.main_thread():
        _follower.observe()


def available_threads(environ: dict[str, str] | None = None, cgroup_root: Path = CGROUP_ROOT,
                      affinity: int | None = None) -> int:
    """How many compute threads this process should run: see the module docstring.

    Args:
        environ: The environment (default: ``os.environ``).
        cgroup_root: Where to read the cgroup quota.
        affinity: CPUs allowed by affinity (default: asked of the OS).

    Raises:
        ThreadSettingError: ``$SYNTHMRI_THREADS`` is set but not a whole number >= 1.
    """
    environ = os.environ if environ is None else environ
    limits = [affinity_cpus() if affinity is None else affinity]
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        limits.append(max(1, math.ceil(quota)))
    if setting := environ.get(THREADS_ENV, "").strip():
        if not setting.isdigit() or int(setting) < 1:
            raise ThreadSettingError(f"${THREADS_ENV} must be a whole number of at least 1, got {setting!r}")
        limits.append(int(setting))
    return max(1, min(limits))


def apply_thread_limit(environ: dict[str, str] | None = None, cgroup_root: Path = CGROUP_ROOT) -> int:
    """Size torch's and the native libraries' thread pools to :func:`available_threads`.

    A pool variable the user set (``OMP_NUM_THREADS=...``) is left as it is. torch is told
    directly only if something already imported it.

    Returns:
        The thread count applied.
    """
    global _follower
    environ = os.environ if environ is None else environ
    threads = available_threads(environ, cgroup_root)
    # A pool variable someone else set fixes the count; one an earlier call here set does not.
    pools_fixed = any(environ.get(name, _POOLS_SET_HERE.get(name)) != _POOLS_SET_HERE.get(name)
                      for name in POOL_VARIABLES)
    for name in POOL_VARIABLES:
        if name not in environ:
            environ[name] = str(threads)
            if environ is os.environ:
                _POOLS_SET_HERE[name] = environ[name]
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(environ["OMP_NUM_THREADS"]))
    _follower = None
    if not pools_fixed and not environ.get(THREADS_ENV, "").strip() and cgroup_cpu_quota(cgroup_root) is None:
        try:
            _follower = LoadFollower(threads, os.sched_getaffinity(0))
        except (AttributeError, OSError, ValueError) as exc:  # no /proc/stat (not Linux): a fixed count
            log.debug("not following the load: %s", exc)
    log.debug("compute threads: %d%s", threads, " (following the load)" if _follower else "")
    return threads

