"""Prometheus: progress, throughput, losses, durations and failures of each stage.

Batch pods are short-lived, so metrics are pushed to a Pushgateway named by
``$SYNTHMRI_PUSHGATEWAY`` (``host:port`` or URL); without it every push is a no-op and
the monitor only writes periodic progress lines to the log.

Each run pushes to the group ``job="synthmri", stage=<verb>, instance=<instance>``; pods of
the same stage running in parallel need distinct instances (the call site's name, else
``$SYNTHMRI_RUN_INSTANCE``) or they overwrite each other. Pushes add to the group (HTTP
POST), and every series but the last-success time is present in every push, so a failed
run replaces the previous run's progress but keeps its ``last_success`` time for alerts.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, pushadd_to_gateway

from synthmri.threads import follow_load

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

PUSHGATEWAY_ENV = "SYNTHMRI_PUSHGATEWAY"
BAR_WIDTH = 30
BAR_REFRESH = 0.2  # seconds between redraws of the progress bar
RUN_INSTANCE_ENV = "SYNTHMRI_RUN_INSTANCE"
JOB = "synthmri"


def resolve_instance(instance: str | None = None) -> str:
    """The ``instance`` grouping key: `instance` if given, else ``$SYNTHMRI_RUN_INSTANCE``, else ``local``."""
    return instance or os.environ.get(RUN_INSTANCE_ENV, "").strip() or "local"


class StageMonitor:
    """Metrics of one stage run; use as a context manager around the stage.

    Args:
        stage: CLI verb (a label on every series).
        unit: what `progress` counts (``subjects``, ``images``, ``samples``).
        total: expected count, when known.
        instance: grouping key that separates parallel runs of the same stage; default
            ``$SYNTHMRI_RUN_INSTANCE``, else ``local`` (see `resolve_instance`).
        push_every: seconds between pushes (and progress log lines).
        show_bar: draw a progress bar (count, rate, time left) when stderr is a terminal;
            elsewhere progress goes to the log every `push_every` seconds.
    """

    def __init__(self, stage: str, unit: str = "items", total: int | None = None,
                 instance: str | None = None, push_every: float = 10.0, show_bar: bool = True) -> None:
        self.stage, self.unit, self.total, self.instance = stage, unit, total, resolve_instance(instance)
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
        # Present from the start, so every push replaces the previous run's values (0, not absent).
        for gauge in (self._done, self._rate):
            gauge.labels(stage, unit).set(0)
        self._ratio.labels(stage).set(0)
        self._failures.labels(stage)
        self._start = time.monotonic()
        self._last_push = 0.0
        self.done = 0
        # A progress bar only where a person watches: stderr is a terminal.
        self._bar = sys.stderr if show_bar and sys.stderr.isatty() else None
        self._last_draw, self._width = 0.0, 0

    def progress(self, done: int, total: int | None = None) -> None:
        """Record that `done` items are finished; pushes and logs at most every `push_every` s."""
        self.done = done
        follow_load()  # long loops report here: the place to resize threads to the CPUs left free
        if total is not None:
            self.total = total
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self._done.labels(self.stage, self.unit).set(done)
        self._rate.labels(self.stage, self.unit).set(done / elapsed)
        if self.total:
            self._ratio.labels(self.stage).set(min(done / self.total, 1.0))
        if self._bar is not None and time.monotonic() - self._last_draw >= BAR_REFRESH:
            self._draw(done, elapsed)
        if time.monotonic() - self._last_push >= self.push_every:
            if self._bar is None:  # a terminal shows the bar; logs (pods, CI) get a line
                of = f"/{self.total}" if self.total else ""
                log.info("%s: %d%s %s (%.1f %s/s)", self.stage, done, of, self.unit, done / elapsed, self.unit)
            self.push()

    def _draw(self, done: int, elapsed: float) -> None:
        """One line on the terminal: bar, count, rate and time left, redrawn in place."""
        rate = done / elapsed
        if self.total:
            filled = int(BAR_WIDTH * min(done / self.total, 1.0))
            left = f", {(self.total - done) / rate:.0f} s left" if rate > 0 and done < self.total else ""
            line = (f"{self.stage} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self.total} {self.unit} "
                    f"({rate:.2f} {self.unit}/s{left})")
        else:
            line = f"{self.stage} {done} {self.unit} ({rate:.2f} {self.unit}/s)"
        self._bar.write("\r" + line.ljust(self._width))
        self._bar.flush()
        self._width, self._last_draw = len(line), time.monotonic()

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
            pushadd_to_gateway(self.gateway, job=JOB, registry=self.registry,
                               grouping_key={"stage": self.stage, "instance": self.instance}, timeout=5)
        except OSError as exc:  # monitoring must never fail the stage
            log.warning("could not push metrics to %s: %s", self.gateway, exc)

    def __enter__(self) -> "StageMonitor":
        self._start = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None and self._width:
            self._draw(self.done, max(time.monotonic() - self._start, 1e-9))
            self._bar.write("\n")
        elapsed = max(time.monotonic() - self._start, 1e-9)
        if exc_type is None:
            self._ratio.labels(self.stage).set(1.0)
            self._success.labels(self.stage).set(time.time())
            log.info("%s finished: %d %s in %.1f s (%.2f %s/s)", self.stage, self.done, self.unit, elapsed,
                     self.done / elapsed, self.unit)
        else:
            self._failures.labels(self.stage).inc()
            log.info("%s failed after %.1f s (%d %s done)", self.stage, elapsed, self.done, self.unit)
        self.push()


def monitored(stage: str, unit: str = "runs", instance_arg: str | None = None) -> Callable[[F], F]:
    """Decorator: run a stage function inside a `StageMonitor`; one `unit` is done when it returns.

    For stages without a loop to report from (``promote``, ``report``): they still export
    duration, failures, last success and progress (0 or 1 of 1). `instance_arg` names the
    argument whose value separates parallel runs (e.g. ``model``); it is not otherwise used.
    """
    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            instance = None
            if instance_arg is not None:
                try:
                    value = signature.bind_partial(*args, **kwargs).arguments.get(instance_arg)
                except TypeError:  # bad arguments: let the call itself raise
                    value = None
                instance = str(value) if value else None
            with StageMonitor(stage, unit=unit, total=1, instance=instance) as monitor:
                result = func(*args, **kwargs)
                monitor.progress(1)
            return result

        return run  # type: ignore[return-value]

    return decorate
