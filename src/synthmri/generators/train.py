"""Train a generator on every non-test slice of a slice store, checkpoint it, register it.

The generator learns from the ``train`` and ``val`` splits together
(:data:`synthmri.data.splits.GENERATOR_TRAIN_SPLITS`: all subjects but the test subjects, as
the authors trained theirs); ``val`` only selects the segmenter's checkpoint.

One loop for every family (the family supplies network, train step and sampler; see
:mod:`synthmri.generators`): random minibatches from a seeded generator, one train step,
an EMA of the weights, losses to MLflow and Prometheus, atomic checkpoints, sample grids.
A run resumes from ``out/checkpoint.pt`` to the same total number of iterations, and
SIGTERM (a pod being evicted) checkpoints and stops cleanly.

Outputs in ``out``: ``checkpoint.pt`` (resumable state), ``samples.png`` (latest grid),
``generator.pt`` (final EMA weights: what ``generate`` and the pyfunc consume) and
``registration.json`` (registry name, version, run id and model URI).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from synthmri.config import Config, ConfigError, to_dict
from synthmri.data.splits import GENERATOR_TRAIN_SPLITS
from synthmri.data.store import SliceStore, StoreError
from synthmri.generators import GeneratorFamily, get_family
from synthmri.generators.checkpoint import GENERATOR_FORMAT, load_checkpoint, save_checkpoint
from synthmri.generators.distributed import Runtime, runtime
from synthmri.generators.sample import CHECKPOINT_NAME, REGISTRATION_NAME, batch_seed, save_grid
from synthmri.io import atomic_write_json
from synthmri.monitoring import StageMonitor
from synthmri.tracking import registered_model_name, stage_run

log = logging.getLogger(__name__)

STATE_NAME = "checkpoint.pt"
GRID_NAME = "samples.png"
GRID_IMAGES = 4
CANDIDATE_ALIAS = "candidate"


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM arrived; the state was checkpointed. ``result`` says where training stopped.

    A KeyboardInterrupt so the CLI exits 130 ("interrupted") without a traceback.
    """

    def __init__(self, result: "TrainResult") -> None:
        super().__init__(result.summary())
        self.result = result


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        model: family name.
        step: iterations completed (equals ``iterations`` unless interrupted).
        iterations: the run's target.
        checkpoint: the resumable ``checkpoint.pt``.
        generator: ``generator.pt`` (None if interrupted).
        run_id: MLflow run id.
        registered_name: registry name, or None when not registered.
        version: registry version, or None when not registered.
        final_losses: mean of each loss over the last logging window (``loss`` for the
            DDPM; ``loss_g``, ``loss_d`` and the regularisers for GANs).
        seconds: wall time of this invocation.
    """

    model: str
    step: int
    iterations: int
    checkpoint: Path
    generator: Path | None
    run_id: str
    registered_name: str | None
    version: int | None
    final_losses: dict[str, float]
    seconds: float

    @property
    def completed(self) -> bool:
        return self.step >= self.iterations

    def summary(self) -> str:
        """One line for the CLI."""
        loss = "".join(f", {name} {value:.4f}" for name, value in self.final_losses.items()
                       if name.startswith("loss"))
        if not self.completed:
            return (f"{self.model}: stopped at iteration {self.step}/{self.iterations}{loss}; "
                    f"checkpoint {self.checkpoint} (continue with --resume); MLflow run {self.run_id}")
        registered = (f"; registered {self.registered_name} version {self.version} (@{CANDIDATE_ALIAS})"
                      if self.version is not None else "; not registered")
        return (f"{self.model}: {self.step} iterations in {self.seconds:.0f}s{loss}; generator {self.generator}; "
                f"MLflow run {self.run_id}{registered}")


def ema_decay(decay: float, step: int) -> float:
    """EMA decay at `step`: ramps up from ~0.1 so early averages are not dominated by the init."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, network: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * network`` for parameters; buffers are copied."""
    for averaged, current in zip(ema.parameters(), network.parameters()):
        averaged.lerp_(current, 1.0 - decay)
    for averaged, current in zip(ema.buffers(), network.buffers()):
        averaged.copy_(current)


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
    """An event set by SIGTERM while the context is open (handlers need the main thread)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_settings(settings: Any, model: str) -> None:
    for key in ("iterations", "batch_size", "log_every", "checkpoint_every", "sample_grid_every"):
        if int(getattr(settings, key)) < 1:
            raise ConfigError(f"generator.{model}.{key} must be positive, got {getattr(settings, key)}")
    if not 0.0 <= settings.ema_decay < 1.0:
        raise ConfigError(f"generator.{model}.ema_decay must be in [0, 1), got {settings.ema_decay}")


def _restore(path: Path, model: str, model_args: Mapping[str, Any], data_hash: str, network: torch.nn.Module,
             ema: torch.nn.Module, trainer: Any, rng: torch.Generator, run: Runtime) -> tuple[int, str | None]:
    """Load `path` into the training state; returns (step, MLflow run id that wrote it)."""
    state = load_checkpoint(path)
    if state["model"] != model:
        raise ConfigError(f"{path}: a {state['model']!r} checkpoint cannot resume a {model!r} run")
    changed = sorted(k for k in set(model_args) | set(state["model_args"]) if model_args.get(k) != state["model_args"].get(k))
    if changed:
        raise ConfigError(f"{path}: network settings differ from the config in {changed}; "
                         "resume with the original settings or train into a new --out")
    if state["data_hash"] != data_hash:
        raise StoreError(f"{path}: trained on data {state['data_hash'][:12]}, but --data has {data_hash[:12]}")
    network.load_state_dict(state["state_dict"])
    ema.load_state_dict(state["ema_state_dict"])
    trainer.load_state_dict(state["trainer"])
    ranks = state["rng_state"].get("ranks")
    if ranks is not None and len(ranks) == run.world_size:
        rng.set_state(ranks[run.rank])
    elif run.world_size == 1:
        rng.set_state(state["rng_state"]["torch"])
    else:
        # Another process count than the run that wrote it: fresh, distinct batch streams.
        rng.manual_seed(batch_seed(int(state["step"]), run.rank))
        log.warning("%s was written by %s process(es), resuming with %d: batch order reseeded",
                    path, len(ranks) if ranks else 1, run.world_size)
    return int(state["step"]), state.get("mlflow_run_id")


def training_positions(store: SliceStore) -> np.ndarray:
    """Positions (index order) of the slices a generator trains on: every non-test slice.

    Args:
        store: the real slice store.

    Returns:
        The positions of the :data:`~synthmri.data.splits.GENERATOR_TRAIN_SPLITS` slices.

    Raises:
        StoreError: the store has no such slices.
    """
    positions = store.indices(GENERATOR_TRAIN_SPLITS)
    if len(positions) == 0:
        raise StoreError(f"{store.path}: no slices in the {' or '.join(GENERATOR_TRAIN_SPLITS)} split to train on")
    return positions


def train_generator(data: Path, out: Path, cfg: Config, resume: bool = False, register: bool = True) -> TrainResult:
    """Train ``cfg.generator.model`` on the non-test slices (train and val) of the store at `data`.

    Runs on the GPU when there is one (bfloat16 autocast if the family's
    ``mixed_precision`` is on) and data-parallel under ``torchrun``: ``batch_size`` is the
    global batch, split evenly across processes; rank 0 alone logs, checkpoints, samples
    grids and registers.

    Args:
        data: real slice store.
        out: output directory (see the module docstring).
        cfg: resolved config; the family's section sets iterations, batch size, EMA decay
            and logging/checkpoint/sample intervals; ``cfg.seed`` seeds init and batches.
        resume: continue from ``out/checkpoint.pt`` if it exists (else start at 0).
        register: log the pyfunc model and register it as ``synthmri-<model>`` with alias
            ``candidate``.

    Returns:
        The :class:`TrainResult` (on every process; only rank 0's names a run and files).

    Raises:
        ConfigError: unknown model, bad settings, or a checkpoint trained with other
            network settings (ConfigError and StoreError are ValueErrors).
        StoreError: no train or val slices, or a checkpoint trained on other data.
        TrainingInterrupted: SIGTERM arrived; the state was checkpointed first.
    """
    family = get_family(cfg.generator.model)
    settings = family.settings(cfg)
    _check_settings(settings, family.name)
    with runtime(getattr(settings, "mixed_precision", False)) as run:
        if settings.batch_size % run.world_size:
            raise ConfigError(f"generator.{family.name}.batch_size ({settings.batch_size}) must divide evenly "
                              f"across {run.world_size} processes")
        return _train(family, settings, Path(data), Path(out), cfg, resume, register, run)


def _train(family: GeneratorFamily, settings: Any, data: Path, out: Path, cfg: Config, resume: bool,
           register: bool, run: Runtime) -> TrainResult:
    import mlflow

    started = time.monotonic()
    store = SliceStore(data)
    train_positions = training_positions(store)
    state_path = out / STATE_NAME
    if run.is_main:
        out.mkdir(parents=True, exist_ok=True)
        # Final products of an earlier run must not pass for this run's while it trains or if it fails.
        stale = [CHECKPOINT_NAME, REGISTRATION_NAME, GRID_NAME] + ([] if resume else [STATE_NAME])
        for name in stale:
            (out / name).unlink(missing_ok=True)

    # Network, EMA copy, optimiser state and the one RNG that drives batches and noise.
    model_args = family.model_args(cfg, store.image_size)
    torch.manual_seed(cfg.seed)
    network = family.build(model_args).to(run.device)
    run.broadcast_module(network)
    ema = copy.deepcopy(network).requires_grad_(False)
    trainer = family.trainer(network, model_args, cfg, run)
    rng = torch.Generator().manual_seed(cfg.seed if run.rank == 0 else batch_seed(cfg.seed, run.rank))
    # A trainer whose batch follows a schedule (ProGAN's per-resolution minibatch) says how
    # many steps the run takes and how big the next batch is; otherwise the section does.
    iterations = int(getattr(trainer, "planned_iterations", settings.iterations))
    next_batch = getattr(trainer, "next_batch_size", lambda: settings.batch_size)
    step, previous_run = 0, None
    if resume and state_path.is_file():
        step, previous_run = _restore(state_path, family.name, model_args, store.content_hash, network, ema,
                                      trainer, rng, run)
        log.info("resuming %s from iteration %d of %d", state_path, step, iterations)
    elif resume:
        log.warning("--resume: no checkpoint at %s, starting from iteration 0", state_path)

    tags = {"synthmri.model": family.name}
    if previous_run:
        tags.update({"synthmri.resumed_from_run": previous_run, "synthmri.resumed_from_step": str(step)})
    run_name = f"{family.name}-s{cfg.seed}"
    # Only rank 0 talks to MLflow and Prometheus; the others train and all-reduce.
    tracked = (stage_run(cfg, stage="train-generator", experiment="generators", run_name=run_name,
                         datasets={"real": store}, tags=tags) if run.is_main else contextlib.nullcontext(None))
    monitored = (StageMonitor("train-generator", unit="iterations", total=iterations, instance=family.name)
                 if run.is_main else None)
    with tracked as mlflow_run, (monitored or contextlib.nullcontext()), _sigterm_flag() as stop:
        run_id = mlflow_run.info.run_id if mlflow_run is not None else ""
        if run.is_main:
            mlflow.log_params({"model.parameters": sum(p.numel() for p in network.parameters()),
                               "distributed.world_size": run.world_size, "device": run.device.type,
                               "mixed_precision": run.mixed_precision})

        def checkpoint() -> None:
            rng_states = run.gather_objects(rng.get_state())  # collective: every rank calls it
            if not run.is_main:
                return
            save_checkpoint(state_path, {
                "model": family.name, "model_args": model_args, "state_dict": network.state_dict(),
                "ema_state_dict": ema.state_dict(), "trainer": trainer.state_dict(), "step": step,
                "config": to_dict(cfg), "image_size": store.image_size, "data_hash": store.content_hash,
                "rng_state": {"torch": rng_states[0], "ranks": rng_states}, "mlflow_run_id": run_id,
            })

        def sample_grid() -> None:
            if not run.is_main:
                return
            # The same noise every time, so grids show the model changing, not the seed.
            images = family.sample(ema, model_args, GRID_IMAGES, torch.Generator().manual_seed(cfg.seed),
                                   family.sampling_options(cfg))
            save_grid(images, out / GRID_NAME)
            with tempfile.TemporaryDirectory() as tmp:
                mlflow.log_artifact(str(save_grid(images, Path(tmp) / f"step-{step:07d}.png")), artifact_path="samples")

        window: dict[str, list[float]] = {}
        window_steps, window_images, final_losses, window_start = 0, 0, {}, time.monotonic()
        network.train()
        while step < iterations:
            global_batch = int(next_batch())
            picks = torch.randint(len(train_positions), (global_batch // run.world_size,), generator=rng).numpy()
            batch = torch.from_numpy(store.read(train_positions[picks]))
            losses = trainer.step(batch, rng)
            step += 1
            window_steps += 1
            window_images += global_batch
            update_ema(ema, network, ema_decay(settings.ema_decay, step))
            for name, value in losses.items():
                if not np.isfinite(value):
                    raise FloatingPointError(f"{family.name}: {name} is {value} at iteration {step}; lower the learning rate")
                window.setdefault(name, []).append(value)
            if monitored is not None:
                monitored.progress(step)
            if run.is_main and (step % settings.log_every == 0 or step == iterations):
                seconds = max(time.monotonic() - window_start, 1e-9)
                means = {name: float(np.mean(values)) for name, values in window.items()}
                throughput = {"iterations_per_second": window_steps / seconds,
                              "kimg_per_second": window_images / seconds / 1000.0}
                mlflow.log_metrics({**means, **throughput}, step=step)
                for name, value in means.items():
                    monitored.loss(name, value)
                final_losses, window, window_steps, window_images, window_start = means, {}, 0, 0, time.monotonic()
            if step % settings.checkpoint_every == 0:
                checkpoint()
            if step % settings.sample_grid_every == 0:
                sample_grid()
            if run.any(stop.is_set()):
                checkpoint()
                result = TrainResult(family.name, step, iterations, state_path, None, run_id, None, None,
                                     final_losses, time.monotonic() - started)
                log.warning("SIGTERM: checkpointed iteration %d to %s", step, state_path)
                if run.is_main:
                    mlflow.end_run(status="KILLED")
                raise TrainingInterrupted(result)

        # Final state, grid, the generator file and (optionally) the registry entry.
        if step % settings.checkpoint_every or not state_path.is_file():
            checkpoint()
        generator_path = out / CHECKPOINT_NAME
        record: dict[str, Any] = {"name": None, "version": None, "run_id": run_id, "model_uri": None}
        if run.is_main:
            if step % settings.sample_grid_every or not (out / GRID_NAME).is_file():
                sample_grid()
            mlflow.log_artifact(str(out / GRID_NAME))
            save_checkpoint(generator_path, {
                "format": GENERATOR_FORMAT, "model": family.name, "model_args": model_args,
                "state_dict": {k: v.cpu() for k, v in ema.state_dict().items()}, "config": to_dict(cfg),
                "image_size": store.image_size, "data_hash": store.content_hash, "step": step,
                "sampling": family.sampling_options(cfg), "sample_batch_size": int(cfg.generator.sample_batch_size),
            })
            if register:
                record = _register(cfg, family.name, generator_path, store.image_size, store.content_hash, run_id)
            atomic_write_json(out / REGISTRATION_NAME, record)

    result = TrainResult(family.name, step, iterations, state_path, generator_path if run.is_main else None,
                         run_id, record["name"], record["version"], final_losses, time.monotonic() - started)
    log.info("%s", result.summary())
    return result


def _register(cfg: Config, model: str, generator_path: Path, image_size: int, data_hash: str,
              run_id: str) -> dict[str, Any]:
    """Log the pyfunc to the active run, register it, alias it ``candidate`` and tag it."""
    import mlflow
    from mlflow import MlflowClient

    from synthmri.generators.pyfunc import log_generator_model

    info = log_generator_model(generator_path, image_size)
    name = registered_model_name(cfg.tracking, model)
    version = mlflow.register_model(info.model_uri, name)
    client = MlflowClient()
    client.set_registered_model_alias(name, CANDIDATE_ALIAS, version.version)
    for key, value in {"synthmri.data.real": data_hash, "synthmri.run_id": run_id,
                       "synthmri.profile": cfg.profile, "synthmri.seed": str(cfg.seed)}.items():
        client.set_model_version_tag(name, version.version, key, value)
    log.info("registered %s version %s with alias %s", name, version.version, CANDIDATE_ALIAS)
    return {"name": name, "version": int(version.version), "run_id": run_id, "model_uri": f"models:/{name}/{version.version}"}
