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
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

THREADS_ENV = "SYNTHMRI_THREADS"
#: Variables the OpenMP, MKL and OpenBLAS runtimes read when they start their pools.
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")


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
    environ = os.environ if environ is None else environ
    threads = available_threads(environ, cgroup_root)
    for name in POOL_VARIABLES:
        environ.setdefault(name, str(threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(environ["OMP_NUM_THREADS"]))
    log.debug("compute threads: %d", threads)
    return threads
