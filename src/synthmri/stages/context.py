"""The one context every stage runs in: its config, its MLflow run, its progress.

:func:`stage_context` opens the stage's MLflow run (when the stage tracks: the standard tags,
the resolved config as params and ``config.yaml``, each slice store read as a dataset input)
and its Prometheus monitor (progress, losses, duration, failures), and closes both. Stages
log through the :class:`StageContext` it yields; the libraries below never see MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from synthmri.config import Config

if TYPE_CHECKING:
    from synthmri.data.store import SliceStore
    from synthmri.monitoring import StageMonitor
    from synthmri.stages.outputs import StageOutput

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """One running stage, as :func:`stage_context` yields it.

    Attributes:
        verb: The CLI verb (a tag of the MLflow run and a label of every metric series).
        cfg: The resolved config.
        monitor: The stage's Prometheus monitor: ``progress(done, total)``, ``loss(name, value)``.
        run: The MLflow ``ActiveRun``, or None for a stage that does not track.
    """

    verb: str
    cfg: Config
    monitor: "StageMonitor"
    run: Any = None
    datasets: dict[str, str] = field(default_factory=dict)
    output: "StageOutput | None" = None

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, or None without a run."""
        return None if self.run is None else self.run.info.run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the finite numbers of `metrics` (others are skipped: MLflow rejects NaN)."""
        if self.run is None:
            return
        import mlflow

        finite = {k: float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if finite:
            mlflow.log_metrics(finite, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log more params (beyond the flattened config every run carries)."""
        if self.run is not None:
            import mlflow

            mlflow.log_params({k: str(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the run."""
        if self.run is not None:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Copy a file or directory into the run's artifacts."""
        if self.run is None:
            return
        import mlflow

        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dataset(self, role: str, store: "SliceStore") -> None:
        """Record that the stage read `store` as `role` (tag, params and an MLflow dataset input)."""
        self.datasets[role] = store.content_hash
        if self.output is not None:
            self.output.add_store(role, store)
        if self.run is None:
            return
        from synthmri.tracking import log_store

        log_store(role, store)


@contextlib.contextmanager
def stage_context(
    verb: str,
    cfg: Config,
    *,
    experiment: str | None = None,
    run_name: str | None = None,
    datasets: Mapping[str, "SliceStore"] | None = None,
    tags: Mapping[str, str] | None = None,
    unit: str = "items",
    total: int | None = None,
    instance: str | None = None,
    output: "StageOutput | None" = None,
) -> Iterator[StageContext]:
    """Run one stage: its MLflow run (if `experiment`) and its progress monitor.

    Args:
        verb: The CLI verb, e.g. ``evaluate-segmenter``.
        cfg: The resolved config.
        experiment: MLflow experiment kind (``generators``, ``segmenters``, ``evaluation``,
            ``pipeline``); None: the stage does not track.
        run_name: The run's name.
        datasets: Role -> slice store read by the stage (tags, params and dataset inputs).
        tags: More run tags.
        unit: What the monitor's progress counts.
        total: The expected count, when known.
        instance: The monitor's grouping key (parallel runs of one stage need distinct ones).
        output: The stage's output (:func:`synthmri.stages.outputs.stage_output`): the run's id
            goes into its running marker at once, the datasets into its completion record.

    Yields:
        The :class:`StageContext`.
    """
    from synthmri.monitoring import StageMonitor

    with contextlib.ExitStack() as stack:
        run = None
        if experiment is not None:
            from synthmri.tracking import stage_run

            run = stack.enter_context(stage_run(cfg, stage=verb, experiment=experiment, run_name=run_name or verb,
                                                datasets=datasets, tags=tags))
        if output is not None:
            if run is not None:
                output.add_run(run.info.run_id)  # so a later attempt can end it if this process dies
            for role, store in (datasets or {}).items():
                output.add_store(role, store)
        monitor = stack.enter_context(StageMonitor(verb, unit=unit, total=total, instance=instance))
        context = StageContext(verb=verb, cfg=cfg, monitor=monitor, run=run, output=output,
                               datasets={role: store.content_hash for role, store in (datasets or {}).items()})
        try:
            yield context
        except KeyboardInterrupt:
            if run is not None:
                # Interrupted (Ctrl-C, SIGTERM turned into an interrupt): KILLED, not FAILED, in MLflow.
                import mlflow

                mlflow.end_run("KILLED")
            raise
