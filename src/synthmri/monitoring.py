"""Prometheus: progress, throughput, losses, durations and failures of each stage.

Batch pods are short-lived, so metrics are pushed to a Pushgateway named by
``$SYNTHMRI_PUSHGATEWAY`` (``host:port`` or URL); without it every push is a no-op and
the monitor only writes periodic progress lines to the log.
"""

from __future__ import annotations

import logging
import os
import time
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway

log = logging.getLogger(__name__)

PUSHGATEWAY_ENV = "SYNTHMRI_PUSHGATEWAY"
JOB = "synthmri"


class StageMonitor:
    """Metrics of one stage run; use as a context manager around the stage.

    Args:
        stage: CLI verb (a label on every series).
        unit: what `progress` counts (``subjects``, ``images``, ``samples``).
        total: expected count, when known.
        instance: grouping key that separates parallel runs of the same stage.
        push_every: seconds between pushes (and progress log lines).
    """

    def __init__(self, stage: str, unit: str = "items", total: int | None = None,
                 instance: str = "local", push_every: float = 10.0) -> None:
        self.stage, self.unit, self.total, self.instance = stage, unit, total, instance
        self.push_every = push_every
        self.gateway = os.environ.get(PUSHGATEWAY_ENV, "").strip() or None
        self.registry = CollectorRegistry()
        labels = ["stage"]
        self._done = Gauge("synthmri_progress_items", "Items processed so far", labels + ["unit"], registry=self.registry)
        self._ratio = Gauge("synthmri_progress_ratio", "Fraction of the stage completed (0-1)", labels, registry=self.registry)
        self._rate = Gauge("synthmri_throughput_items_per_second", "Items per second since the stage began", labels + ["unit"], registry=self.registry)
        self._loss = Gauge("synthmri_loss", "Latest value of a training loss", labels + ["name"], registry=self.registry)
        self._duration = Gauge("synthmri_stage_duration_seconds", "Wall time of the stage so far", labels, registry=self.registry)
        self._failures = Counter("synthmri_stage_failures", "Stage runs that raised", labels, registry=self.registry)
        self._success = Gauge("synthmri_stage_last_success_unixtime", "When the stage last finished without error", labels, registry=self.registry)
        self._start = time.monotonic()
        self._last_push = 0.0
        self.done = 0

    def progress(self, done: int, total: int | None = None) -> None:
        """Record that `done` items are finished; pushes and logs at most every `push_every` s."""
        self.done = done
        if total is not None:
            self.total = total
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self._done.labels(self.stage, self.unit).set(done)
        self._rate.labels(self.stage, self.unit).set(done / elapsed)
        if self.total:
            self._ratio.labels(self.stage).set(min(done / self.total, 1.0))
        if time.monotonic() - self._last_push >= self.push_every:
            of = f"/{self.total}" if self.total else ""
            log.info("%s: %d%s %s (%.1f %s/s)", self.stage, done, of, self.unit, done / elapsed, self.unit)
            self.push()

    def loss(self, name: str, value: float) -> None:
        """Record the latest value of a named loss."""
        self._loss.labels(self.stage, name).set(float(value))

    def push(self) -> None:
        """Push all series to the Pushgateway, if one is configured; never raises."""
        self._duration.labels(self.stage).set(time.monotonic() - self._start)
        self._last_push = time.monotonic()
        if not self.gateway:
            return
        try:
            push_to_gateway(self.gateway, job=JOB, registry=self.registry,
                            grouping_key={"stage": self.stage, "instance": self.instance}, timeout=5)
        except OSError as exc:  # monitoring must never fail the stage
            log.warning("could not push metrics to %s: %s", self.gateway, exc)

    def __enter__(self) -> "StageMonitor":
        self._start = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            if self.total:
                self._ratio.labels(self.stage).set(1.0)
            self._success.labels(self.stage).set(time.time())
        else:
            self._failures.labels(self.stage).inc()
        self.push()
