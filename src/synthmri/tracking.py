"""MLflow: one place that knows experiment names, run tags and the registry.

Every stage opens its run through :func:`stage_run`, so every run carries the same
params (the flattened resolved config), the config file, the profile, seed, package
version, git commit and the content hash of each slice store it read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from synthmri import __version__
from synthmri.config import Config, TrackingConfig, dump_config, flatten

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "SYNTHMRI_PARENT_RUN_ID"

#: Experiment tag that tells the MLflow UI what an experiment is for. Untagged, MLflow 3 opens
#: an experiment on its GenAI traces overview; tagged as classic model development, on the
#: runs table, where synthmri's runs and their compare view are.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

#: MLflow keeps a dataset digest in 36 characters (``MAX_DATASET_DIGEST_SIZE``; a VARCHAR(36)
#: in PostgreSQL): the first 32 hex digits of a store's sha256 (128 bits) fit, the full hash is
#: the run's ``synthmri.data.<name>`` tag.
DATASET_DIGEST_CHARS = 32


#: Values this process's MLflow exported to its own environment: ``mlflow.set_tracking_uri``
#: and ``set_registry_uri`` write the very variables that let a user override the profile.
_EXPORTED: dict[str, str] = {}


def _from_environment(name: str) -> str | None:
    """$name, unless it is only what an earlier :func:`configure` call exported."""
    value = os.environ.get(name) or None
    return None if value is not None and _EXPORTED.get(name) == value else value


#: Seconds a stage waits for an HTTP tracking server to answer before it gives up (a float).
WAIT_ENV = "SYNTHMRI_TRACKING_WAIT"
DEFAULT_WAIT_S = 10.0
#: After this long without an answer the wait is announced on the log.
ANNOUNCE_AFTER_S = 2.0
#: MLflow's retries of one HTTP request, unless the user set them: MLflow's own defaults (7
#: retries, backoff factor 2) spend about four minutes on a server that is gone; these, about 15 s.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}

#: HTTP tracking URIs that answered in this process (each is waited for once).
_ANSWERED: set[str] = set()


class TrackingUnreachableError(ConnectionError):
    """No MLflow tracking server answered at the configured URI within :data:`WAIT_ENV` seconds."""


def redact(uri: str) -> str:
    """`uri` without the password of a ``scheme://user:password@host`` URI."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", uri)


def connection_reason(text: str) -> str:
    """The gist of a requests/urllib3 connection error, e.g. ``[Errno 111] Connection refused``."""
    for pattern in (r"\[Errno -?\d+\] [^'\")\]]+", r"ResponseError\('([^']+)'", r"(Read timed out|timed out)"):
        if found := re.search(pattern, text):
            return (found.group(1) if found.groups() else found.group(0)).strip()
    return " ".join(text.split())[:200]


def _wait_seconds() -> float:
    value = os.environ.get(WAIT_ENV, "").strip()
    if not value:
        return DEFAULT_WAIT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"${WAIT_ENV} must be a number of seconds, got {value!r}")
    return seconds


def wait_for_server(uri: str, wait_s: float | None = None) -> None:
    """Return once the HTTP(S) tracking server at `uri` answers; other URIs return at once.

    Any HTTP answer counts (a 401 or 404 too, and a TLS handshake MLflow may still reject):
    only no connection, or no answer, is waited out. One ``HEAD`` on the reachable path; a wait
    longer than :data:`ANNOUNCE_AFTER_S` is logged.

    Args:
        uri: The tracking (or registry) URI.
        wait_s: How long to wait; default $SYNTHMRI_TRACKING_WAIT, else :data:`DEFAULT_WAIT_S`.

    Raises:
        TrackingUnreachableError: Nothing answered within `wait_s` (the message names `uri`).
    """
    if not re.match(r"https?://", uri, re.IGNORECASE) or uri in _ANSWERED:
        return
    import requests

    wait = _wait_seconds() if wait_s is None else wait_s
    per_try = 5.0
    with contextlib.suppress(ValueError):
        per_try = min(per_try, float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or per_try))
    start, announced = time.monotonic(), False
    while True:
        remaining = wait - (time.monotonic() - start)
        try:
            requests.head(uri, timeout=max(0.2, min(per_try, remaining)), allow_redirects=False).close()
        except requests.exceptions.SSLError:
            pass  # it answered; whether its certificate passes is MLflow's settings' business
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            elapsed, reason = time.monotonic() - start, connection_reason(str(exc))
            if elapsed + 0.5 > wait:
                raise TrackingUnreachableError(
                    f"no MLflow tracking server answers at {redact(uri)} ({reason}; waited {elapsed:.0f} s): "
                    f"start it or point MLFLOW_TRACKING_URI at one; ${WAIT_ENV} sets the wait") from None
            if not announced and elapsed >= ANNOUNCE_AFTER_S:
                log.warning("waiting for the MLflow tracking server at %s (%s), up to %.0f s",
                            redact(uri), reason, wait)
                announced = True
            time.sleep(min(0.5, max(0.0, wait - elapsed - 0.5)))
            continue
        except requests.exceptions.RequestException:
            pass  # not a connection problem (a malformed URI, say): MLflow reports it in its words
        if announced:
            log.info("MLflow tracking server at %s answered", redact(uri))
        _ANSWERED.add(uri)
        return


def tracking_uri(cfg: TrackingConfig) -> str:
    """The tracking URI: $MLFLOW_TRACKING_URI wins over the profile (cluster pods set it)."""
    return _from_environment("MLFLOW_TRACKING_URI") or cfg.tracking_uri


def configure(cfg: TrackingConfig) -> None:
    """Point MLflow's tracking and registry at the configured store.

    A user's $MLFLOW_TRACKING_URI / $MLFLOW_REGISTRY_URI win over the profile; the values
    MLflow itself exports when called here do not, so a later call in the same process
    (a notebook, a test) follows its own config.

    An HTTP(S) server is waited for (:func:`wait_for_server`) before MLflow's first request, and
    MLflow's retries default to :data:`HTTP_RETRY_DEFAULTS` where the user set none, so a server
    that is gone fails a stage in seconds, not minutes.

    Raises:
        TrackingUnreachableError: No server answers at an HTTP(S) URI.
    """
    import mlflow

    uri = tracking_uri(cfg)
    registry = _from_environment("MLFLOW_REGISTRY_URI") or uri
    user_set = {name for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI") if _from_environment(name)}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        if name in user_set:
            _EXPORTED.pop(name, None)
        elif os.environ.get(name):
            _EXPORTED[name] = os.environ[name]
    servers = [target for target in dict.fromkeys((uri, registry)) if re.match(r"https?://", target, re.IGNORECASE)]
    if servers:
        for name, value in HTTP_RETRY_DEFAULTS.items():
            if not os.environ.get(name):
                os.environ[name] = value
    for target in servers:
        wait_for_server(target)


def experiment_name(cfg: TrackingConfig, kind: str) -> str:
    """``synthmri-generators``, ``synthmri-segmenters``, ``synthmri-evaluation``, ``synthmri-pipeline``."""
    return f"{cfg.experiment_prefix}-{kind}"


def ensure_experiment(cfg: TrackingConfig, kind: str) -> str:
    """The id of experiment `kind` (see :func:`experiment_name`), created if missing.

    The experiment is tagged :data:`EXPERIMENT_KIND` (classic model development), so the MLflow
    UI opens it on the runs table; an experiment a user tagged otherwise keeps its tag.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    name = experiment_name(cfg, kind)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # a parallel stage created it first
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def slice_store_dataset(store: Any) -> Any:
    """A slice store as an MLflow dataset: its directory name, its location, its content hash.

    Logged as a run input (``mlflow.log_input``), it fills the runs table's Dataset column and
    the run page's lineage; the digest is the first :data:`DATASET_DIGEST_CHARS` hex digits of
    the store's content hash.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # A local path matches MLflow's local-artifact source under two names; either is right.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(store.path).absolute()))
    return MetaDataset(source=source, name=Path(store.path).name, digest=store.content_hash[:DATASET_DIGEST_CHARS])


def registered_model_name(cfg: TrackingConfig, model: str) -> str:
    """Registry name of a generator, e.g. ``synthmri-ddpm``."""
    return f"{cfg.registered_model_prefix}-{model}"


def git_commit() -> str:
    """The source commit: $SYNTHMRI_GIT_COMMIT (set in images), else git, else 'unknown'."""
    if commit := os.environ.get("SYNTHMRI_GIT_COMMIT"):
        return commit
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent)
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pipeline_parent_run(cfg: TrackingConfig) -> str | None:
    """The run id of the parent run of pipeline run ``cfg.pipeline_run``, created on first use.

    The parent lives in the ``pipeline`` experiment, named ``pipeline-<id>`` and tagged
    ``synthmri.pipeline_run``. Stages of one pipeline run may start it at the same time; each
    creates a parent when it finds none, then all settle on the earliest one (start time, then
    run id) and a stage that made a later duplicate deletes it.

    Returns:
        The parent's run id, or None when no pipeline run is configured.
    """
    if not cfg.pipeline_run:
        return None
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment_id = ensure_experiment(cfg, "pipeline")
    query = f"tags.`synthmri.pipeline_run` = '{cfg.pipeline_run}' and tags.`synthmri.stage` = 'pipeline'"

    def parents() -> list[Any]:
        runs = client.search_runs([experiment_id], filter_string=query, max_results=50)
        return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))

    found = parents()
    if found:
        return found[0].info.run_id
    mine = client.create_run(experiment_id, run_name=f"pipeline-{cfg.pipeline_run}",
                             tags={"synthmri.stage": "pipeline", "synthmri.pipeline_run": cfg.pipeline_run,
                                   "synthmri.version": __version__, "synthmri.git_commit": git_commit()})
    client.set_terminated(mine.info.run_id)
    first = parents()[0].info.run_id
    if first != mine.info.run_id:
        client.delete_run(mine.info.run_id)  # another stage made the parent first
    return first


def log_store(role: str, store: Any) -> None:
    """Record on the active run that it read slice store `store` as `role`.

    The content hash becomes the tag ``synthmri.data.<role>`` and the param
    ``data.<role>.hash`` (with ``data.<role>.slices``), and the store an MLflow dataset input
    with context `role`.
    """
    import mlflow

    mlflow.set_tag(f"synthmri.data.{role}", store.content_hash)
    mlflow.log_params({f"data.{role}.hash": store.content_hash, f"data.{role}.slices": str(len(store))})
    mlflow.log_input(slice_store_dataset(store), context=role)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


@contextlib.contextmanager
def stage_run(
    cfg: Config,
    *,
    stage: str,
    experiment: str,
    run_name: str,
    datasets: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Any]:
    """Open an MLflow run for one stage, with the project's standard params and tags.

    Args:
        cfg: the resolved config (logged as params and as ``config.yaml``).
        stage: CLI verb, e.g. ``train-segmenter``.
        experiment: experiment kind (see :func:`experiment_name`).
        run_name: readable run name, e.g. ``ddpm-unet-synthetic-aug-r0``.
        datasets: name -> SliceStore read by this stage; each content hash becomes a tag
            ``synthmri.data.<name>`` and a param ``data.<name>.hash``, and each store an
            MLflow dataset input of the run with context `name`.
        tags: more tags.

    Yields:
        The active ``mlflow.ActiveRun``.
    """
    import mlflow

    configure(cfg.tracking)
    mlflow.set_experiment(experiment_id=ensure_experiment(cfg.tracking, experiment))
    all_tags = {
        "synthmri.stage": stage,
        "synthmri.profile": cfg.profile,
        "synthmri.seed": str(cfg.seed),
        "synthmri.version": __version__,
        "synthmri.git_commit": git_commit(),
        **(tags or {}),
    }
    if parent := os.environ.get(PARENT_RUN_ENV) or pipeline_parent_run(cfg.tracking):
        all_tags["mlflow.parentRunId"] = parent
    params = {k: _param_value(v) for k, v in flatten(cfg).items()}
    for name, store in (datasets or {}).items():
        all_tags[f"synthmri.data.{name}"] = store.content_hash
        params[f"data.{name}.hash"] = store.content_hash
        params[f"data.{name}.slices"] = str(len(store))
    with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
        mlflow.log_params(params)
        for name, store in (datasets or {}).items():
            mlflow.log_input(slice_store_dataset(store), context=name)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            dump_config(cfg, path)
            mlflow.log_artifact(str(path))
        log.info("MLflow run %s (%s) in experiment %s", run.info.run_id, run_name, experiment_name(cfg.tracking, experiment))
        yield run
