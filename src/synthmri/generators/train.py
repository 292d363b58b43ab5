"""Train a generator on every non-test slice of a slice store: the library half of ``train-generator``.

The generator learns from the ``train`` and ``val`` splits together
(:data:`synthmri.data.splits.GENERATOR_TRAIN_SPLITS`: all subjects but the test subjects, as
the authors trained theirs); ``val`` only selects the segmenter's checkpoint.

One task for every family (the family supplies network, train step and sampler; see
:mod:`synthmri.generators`) on the shared skeleton of :mod:`synthmri.training`: random
minibatches from a seeded generator, one train step, an EMA of the weights, window means of
the losses and the throughput to the reporter, atomic checkpoints, sample grids. A run
resumes from ``out/checkpoint.pt`` to the same total number of iterations, and SIGTERM (a pod
being evicted) checkpoints and stops cleanly.

Outputs in ``out``: ``checkpoint.pt`` (resumable state), ``samples.png`` (latest grid) and
``generator.pt`` (final EMA weights: what ``generate`` and the pyfunc consume). Tracking and
registration (``registration.json``) are the stage's: :mod:`synthmri.stages.train_generator`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
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
from synthmri.generators.checkpoint import GENERATOR_FORMAT
from synthmri.generators.distributed import Runtime, runtime
from synthmri.generators.sample import CHECKPOINT_NAME, REGISTRATION_NAME, batch_seed, save_grid
from synthmri.io import atomic_torch_save
from synthmri.training import (
    EMA,
    Cadence,
    NullReporter,
    Reporter,
    TrainingInterrupted,
    TrainingTask,
    restore,
    train,
)

log = logging.getLogger(__name__)

STATE_NAME = "checkpoint.pt"
GRID_NAME = "samples.png"
GRID_IMAGES = 4
CANDIDATE_ALIAS = "candidate"


@dataclass(frozen=True)
class GeneratorTrainResult:
    """What a generator's training run produced.

    Attributes:
        model: Family name.
        step: Iterations completed (equals ``iterations`` unless interrupted).
        iterations: The run's target.
        checkpoint: The resumable ``checkpoint.pt``.
        generator: ``generator.pt`` (None if interrupted, and on processes other than rank 0).
        run_id: MLflow run id ("" when not tracked).
        registered_name: Registry name, or None when not registered.
        version: Registry version, or None when not registered.
        final_losses: Mean of each loss over the last logging window (``loss`` for the
            DDPM; ``loss_g``, ``loss_d`` and the regularisers for GANs).
        seconds: Wall time of this invocation.
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
        """Whether the run reached its target."""
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


def training_positions(store: SliceStore) -> np.ndarray:
    """Positions (index order) of the slices a generator trains on: every non-test slice.

    Args:
        store: The real slice store.

    Returns:
        The positions of the :data:`~synthmri.data.splits.GENERATOR_TRAIN_SPLITS` slices.

    Raises:
        StoreError: The store has no such slices.
    """
    positions = store.indices(GENERATOR_TRAIN_SPLITS)
    if len(positions) == 0:
        raise StoreError(f"{store.path}: no slices in the {' or '.join(GENERATOR_TRAIN_SPLITS)} split to train on")
    return positions


class GeneratorTraining(TrainingTask):
    """One generator's training run, built and (when resuming) restored, ready to :meth:`fit`.

    Build it with :func:`open_training`. Rank 0 alone writes files and reports; every process
    trains and joins the collectives (gradient averaging, the SIGTERM vote, checkpoint RNGs).

    Args:
        family: The model family.
        settings: Its config section (checked).
        cfg: The resolved config.
        store: The real slice store.
        positions: The slices to train on (:func:`training_positions`).
        out: The output directory.
        run: This process's runtime.

    Attributes:
        iterations: Steps of the whole run (a ProGAN batch schedule may set them).
        start: The step a resumed run continues after (0 for a fresh run).
        previous_run: The MLflow run that wrote the restored checkpoint, if any.
    """

    def __init__(self, family: GeneratorFamily, settings: Any, cfg: Config, store: SliceStore, positions: np.ndarray,
                 out: Path, run: Runtime) -> None:
        self.started = time.monotonic()
        self.family, self.settings, self.cfg, self.store, self.out, self.run = family, settings, cfg, store, out, run
        self.positions = positions
        self.state_path = out / STATE_NAME
        self.grid_path = out / GRID_NAME
        # Network, EMA copy, optimiser state and the one RNG that drives batches and noise.
        self.model_args = family.model_args(cfg, store.image_size)
        torch.manual_seed(cfg.seed)
        self.network = family.build(self.model_args).to(run.device)
        run.broadcast_module(self.network)
        self.ema = EMA(self.network, settings.ema_decay)
        self.trainer = family.trainer(self.network, self.model_args, cfg, run)
        self.rng = torch.Generator().manual_seed(cfg.seed if run.rank == 0 else batch_seed(cfg.seed, run.rank))
        # A trainer whose batch follows a schedule (ProGAN's per-resolution minibatch) says how
        # many steps the run takes and how big the next batch is; otherwise the section does.
        self.iterations = int(getattr(self.trainer, "planned_iterations", settings.iterations))
        self._scheduled_batch = hasattr(self.trainer, "next_batch_size")
        self.start, self.previous_run, self.run_id = 0, None, ""
        self._window_steps, self._window_images, self._window_start = 0, 0, time.monotonic()

    @property
    def name(self) -> str:
        """The family's name."""
        return self.family.name

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and reports (rank 0)."""
        return self.run.is_main

    @property
    def cadence(self) -> Cadence:
        """Iterations, and the section's log, checkpoint and sample-grid intervals."""
        return Cadence(steps=self.iterations, log_every=self.settings.log_every,
                       checkpoint_every=self.settings.checkpoint_every, validate_every=self.settings.sample_grid_every)

    @property
    def tags(self) -> dict[str, str]:
        """Run tags: the model, and where a resumed run came from."""
        tags = {"synthmri.model": self.name}
        if self.previous_run:
            tags.update({"synthmri.resumed_from_run": self.previous_run, "synthmri.resumed_from_step": str(self.start)})
        return tags

    @property
    def params(self) -> dict[str, Any]:
        """Run params beyond the config: network size and where it trains."""
        return {"model.parameters": sum(p.numel() for p in self.network.parameters()),
                "distributed.world_size": self.run.world_size, "device": self.run.device.type,
                "mixed_precision": self.run.mixed_precision}

    # --- the task the skeleton drives -------------------------------------------------

    def train_step(self, step: int) -> Mapping[str, float]:
        """One global batch drawn from the seeded RNG, one trainer step; refuses non-finite losses."""
        global_batch = int(self.trainer.next_batch_size() if self._scheduled_batch else self.settings.batch_size)
        picks = torch.randint(len(self.positions), (global_batch // self.run.world_size,), generator=self.rng).numpy()
        batch = torch.from_numpy(self.store.read(self.positions[picks]))
        losses = self.trainer.step(batch, self.rng)
        self._window_steps += 1
        self._window_images += global_batch
        for name, value in losses.items():
            if not np.isfinite(value):
                raise FloatingPointError(f"{self.name}: {name} is {value} at iteration {step}; lower the learning rate")
        return losses

    def log_metrics(self, step: int) -> Mapping[str, float]:
        """Throughput since the last log: iterations and thousands of images per second."""
        seconds = max(time.monotonic() - self._window_start, 1e-9)
        throughput = {"iterations_per_second": self._window_steps / seconds,
                      "kimg_per_second": self._window_images / seconds / 1000.0}
        self._window_steps, self._window_images, self._window_start = 0, 0, time.monotonic()
        return throughput

    def validate(self, step: int, reporter: Reporter) -> None:
        """A sample grid from the EMA weights: ``samples.png`` and ``samples/step-NNNNNNN.png``."""
        if not self.is_main:
            return
        # The same noise every time, so grids show the model changing, not the seed.
        images = self.family.sample(self.ema.module, self.model_args, GRID_IMAGES,
                                    torch.Generator().manual_seed(self.cfg.seed), self.family.sampling_options(self.cfg))
        save_grid(images, self.grid_path)
        with tempfile.TemporaryDirectory() as tmp:
            reporter.log_artifact(save_grid(images, Path(tmp) / f"step-{step:07d}.png"), artifact_path="samples")

    def state_dict(self, step: int) -> dict[str, Any] | None:
        """The resumable state (gathers every process's batch RNG: a collective; rank 0 returns it)."""
        rng_states = self.run.gather_objects(self.rng.get_state())
        if not self.is_main:
            return None
        return {
            "model": self.name, "model_args": self.model_args, "state_dict": self.network.state_dict(),
            "ema_state_dict": self.ema.module.state_dict(), "trainer": self.trainer.state_dict(), "step": step,
            "config": to_dict(self.cfg), "image_size": self.store.image_size, "data_hash": self.store.content_hash,
            "rng_state": {"torch": rng_states[0], "ranks": rng_states}, "mlflow_run_id": self.run_id,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> int:
        """Restore a ``checkpoint.pt`` of the same model, network settings and data.

        Raises:
            ConfigError: Another model or other network settings.
            StoreError: Trained on other data.
        """
        path = self.state_path
        if "model" not in state or "model_args" not in state:
            raise ValueError(f"{path}: not a synthmri generator checkpoint (no 'model'/'model_args')")
        if state["model"] != self.name:
            raise ConfigError(f"{path}: a {state['model']!r} checkpoint cannot resume a {self.name!r} run")
        saved_args = state["model_args"]
        changed = sorted(k for k in set(self.model_args) | set(saved_args)
                         if self.model_args.get(k) != saved_args.get(k))
        if changed:
            raise ConfigError(f"{path}: network settings differ from the config in {changed}; "
                              "resume with the original settings or train into a new --out")
        if state["data_hash"] != self.store.content_hash:
            raise StoreError(f"{path}: trained on data {state['data_hash'][:12]}, but --data has "
                             f"{self.store.content_hash[:12]}")
        self.network.load_state_dict(state["state_dict"])
        self.ema.module.load_state_dict(state["ema_state_dict"])
        self.trainer.load_state_dict(state["trainer"])
        ranks = state["rng_state"].get("ranks")
        if ranks is not None and len(ranks) == self.run.world_size:
            self.rng.set_state(ranks[self.run.rank])
        elif self.run.world_size == 1:
            self.rng.set_state(state["rng_state"]["torch"])
        else:
            # Another process count than the run that wrote it: fresh, distinct batch streams.
            self.rng.manual_seed(batch_seed(int(state["step"]), self.run.rank))
            log.warning("%s was written by %s process(es), resuming with %d: batch order reseeded",
                        path, len(ranks) if ranks else 1, self.run.world_size)
        self.previous_run = state.get("mlflow_run_id")
        return int(state["step"])

    def stop_agreed(self, requested: bool) -> bool:
        """Stop when SIGTERM reached any process (a collective: every process votes every step)."""
        return self.run.any(requested)

    # --- the run ----------------------------------------------------------------------

    def fit(self, reporter: Reporter | None = None) -> GeneratorTrainResult:
        """Train to :attr:`iterations`, then write the final grid and ``generator.pt``.

        Args:
            reporter: Where metrics, progress and grids go (rank 0's stage context);
                default :class:`~synthmri.training.NullReporter`.

        Raises:
            TrainingInterrupted: SIGTERM arrived; the state was checkpointed first.
            FloatingPointError: A loss became NaN or infinite.
        """
        reporter = reporter if reporter is not None else NullReporter()
        self.run_id = reporter.run_id or ""
        self.network.train()
        self._window_steps, self._window_images, self._window_start = 0, 0, time.monotonic()
        outcome = train(self, self.cadence, reporter, start=self.start, checkpoint=self.state_path)
        if outcome.stopped:
            raise TrainingInterrupted(self._result(outcome.step, None, outcome.losses))
        generator_path = None
        if self.is_main:
            if not self.grid_path.is_file():
                self.validate(outcome.step, reporter)
            generator_path = self._save_generator(outcome.step)
        result = self._result(outcome.step, generator_path, outcome.losses)
        log.info("%s", result.summary())
        return result

    def _save_generator(self, step: int) -> Path:
        """``generator.pt``: the EMA weights on the CPU and what sampling needs."""
        path = self.out / CHECKPOINT_NAME
        atomic_torch_save(path, {
            "format": GENERATOR_FORMAT, "model": self.name, "model_args": self.model_args,
            "state_dict": {k: v.cpu() for k, v in self.ema.module.state_dict().items()}, "config": to_dict(self.cfg),
            "image_size": self.store.image_size, "data_hash": self.store.content_hash, "step": step,
            "sampling": self.family.sampling_options(self.cfg),
            "sample_batch_size": int(self.cfg.generator.sample_batch_size),
        })
        return path

    def _result(self, step: int, generator: Path | None, losses: Mapping[str, float]) -> GeneratorTrainResult:
        return GeneratorTrainResult(self.name, step, self.iterations, self.state_path, generator, self.run_id,
                                    None, None, dict(losses), time.monotonic() - self.started)


@contextlib.contextmanager
def open_training(data: Path, out: Path, cfg: Config, *, resume: bool = False) -> Iterator[GeneratorTraining]:
    """Set up ``cfg.generator.model``'s training on the non-test slices of the store at `data`.

    Joins the data-parallel process group under ``torchrun`` (``batch_size`` is the global
    batch, split evenly across processes) and runs on the GPU when there is one (bfloat16
    autocast if the family's ``mixed_precision`` is on). Rank 0 removes the previous run's
    final products from `out` (and, unless resuming, its checkpoint).

    Args:
        data: Real slice store.
        out: Output directory (see the module docstring).
        cfg: Resolved config; the family's section sets iterations, batch size, EMA decay
            and logging/checkpoint/sample intervals; ``cfg.seed`` seeds init and batches.
        resume: Continue from ``out/checkpoint.pt`` if it exists (else start at 0).

    Yields:
        The :class:`GeneratorTraining`, built and restored; the process group stays joined
        while the context is open.

    Raises:
        ConfigError: Unknown model, bad settings, or a checkpoint trained with other
            network settings (ConfigError and StoreError are ValueErrors).
        StoreError: No train or val slices, or a checkpoint trained on other data.
    """
    family = get_family(cfg.generator.model)
    settings = family.settings(cfg)
    out = Path(out)
    with runtime(getattr(settings, "mixed_precision", False)) as run:
        if settings.batch_size % run.world_size:
            raise ConfigError(f"generator.{family.name}.batch_size ({settings.batch_size}) must divide evenly "
                              f"across {run.world_size} processes")
        store = SliceStore(Path(data))
        positions = training_positions(store)
        if run.is_main:
            out.mkdir(parents=True, exist_ok=True)
            # Final products of an earlier run must not pass for this run's while it trains or if it fails.
            for name in [CHECKPOINT_NAME, REGISTRATION_NAME, GRID_NAME] + ([] if resume else [STATE_NAME]):
                (out / name).unlink(missing_ok=True)
        training = GeneratorTraining(family, settings, cfg, store, positions, out, run)
        if resume:
            training.start = restore(training, training.state_path)
        yield training


def train_generator(data: Path, out: Path, cfg: Config, *, resume: bool = False,
                    reporter: Reporter | None = None) -> GeneratorTrainResult:
    """Train ``cfg.generator.model`` without a stage around it (no MLflow run, no registry).

    ``synthmri train-generator`` (:func:`synthmri.stages.train_generator.run`) adds tracking
    and registration; see :func:`open_training` for the arguments.

    Raises:
        TrainingInterrupted: SIGTERM arrived; the state was checkpointed first.
    """
    with open_training(data, out, cfg, resume=resume) as training:
        return training.fit(reporter if training.is_main else None)

