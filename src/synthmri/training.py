"""One training skeleton for every network synthmri trains: the generators and the segmenters.

:func:`train` is the whole loop, read top to bottom::

    install a SIGTERM flag
    validate once before training        (cadence.validate_first)
    for step in start + 1 .. cadence.steps:
        losses = task.train_step(step)   # one optimisation step
        task.ema.update(step)            # where the task keeps an EMA of its weights
        progress to the monitor
        every log_every steps:           window means of the losses + task.log_metrics(step)
        every checkpoint_every steps:    task.state_dict(step), saved atomically
        every validate_every steps:      task.validate(step, reporter)
        SIGTERM seen (by any process):   save the state, stop

"Every N steps" means at multiples of N and at the last step; N = 0 means never (a task
with ``checkpoint_every = 0`` still saves its state when SIGTERM stops it).

What differs between the loops lives in a :class:`TrainingTask`: the step, the validation,
the state to save and restore. Where results go is a :class:`Reporter` (a stage's
:class:`~synthmri.stages.context.StageContext`, or :class:`NullReporter`): this module and
the libraries that use it never talk to MLflow themselves.

Resuming is :func:`restore` before :func:`train`: it loads the task's state and returns the
step to continue after. Checkpoints are written with :func:`synthmri.io.atomic_torch_save`
(fsync of file and directory, :data:`synthmri.io.FILE_MODE`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Iterator, Mapping, Protocol

import numpy as np
import torch
from torch import nn

from synthmri.io import atomic_torch_save, torch_load

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- where results go


class Monitor(Protocol):
    """Live progress and losses (a :class:`~synthmri.monitoring.StageMonitor`)."""

    def progress(self, done: int, total: int | None = None) -> None:
        """`done` items are finished."""

    def loss(self, name: str, value: float) -> None:
        """The latest value of a named loss."""


class Reporter(Protocol):
    """Where a training run reports: the shape of a stage's ``StageContext``.

    Attributes:
        run_id: The tracking run's id, or None when nothing is tracked.
        monitor: Live progress and losses.
    """

    run_id: str | None
    monitor: Monitor

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record metrics (non-finite values are dropped)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record run parameters."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tag the run."""

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Keep a copy of a file with the run."""


class NullMonitor:
    """A :class:`Monitor` that ignores everything."""

    def progress(self, done: int, total: int | None = None) -> None:
        """Ignored."""

    def loss(self, name: str, value: float) -> None:
        """Ignored."""


class NullReporter:
    """A :class:`Reporter` that records nothing: library use without a stage, and the
    data-parallel processes other than rank 0."""

    run_id: str | None = None

    def __init__(self) -> None:
        self.monitor = NullMonitor()

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Ignored."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Ignored."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Ignored."""

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Ignored."""


# --------------------------------------------------------------------------- what is trained


@dataclass(frozen=True)
class Cadence:
    """How long to train and how often to log, checkpoint and validate.

    Each ``*_every`` fires at its multiples and at the last step; 0 turns it off.

    Attributes:
        steps: The step the run ends at (a resumed run continues to it).
        log_every: Steps between metric logs (window means of the losses).
        checkpoint_every: Steps between saved training states.
        validate_every: Steps between validations (a segmenter's Dice, a generator's grid).
        validate_first: Also validate before the first step of a fresh run (a baseline).
    """

    steps: int
    log_every: int = 0
    checkpoint_every: int = 0
    validate_every: int = 0
    validate_first: bool = False

    def due(self, every: int, step: int) -> bool:
        """Whether an event firing every `every` steps fires at `step`."""
        return every > 0 and (step % every == 0 or step == self.steps)


class EMA:
    """An exponential moving average of a network's weights (what a generator samples with).

    Args:
        network: The network being trained.
        decay: The decay at the end of the ramp (see :func:`ema_decay`).

    Attributes:
        module: The averaged copy (no gradients).
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.network, self.decay = network, decay
        self.module = copy.deepcopy(network).requires_grad_(False)

    def update(self, step: int) -> None:
        """Average the network's weights after step `step` into :attr:`module`."""
        update_ema(self.module, self.network, ema_decay(self.decay, step))


def ema_decay(decay: float, step: int) -> float:
    """EMA decay at `step`: ramps up from ~0.1 so early averages are not dominated by the init."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, network: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * network`` for parameters; buffers are copied."""
    for averaged, current in zip(ema.parameters(), network.parameters()):
        averaged.lerp_(current, 1.0 - decay)
    for averaged, current in zip(ema.buffers(), network.buffers()):
        averaged.copy_(current)


class TrainingTask:
    """What :func:`train` trains: subclass it and override :meth:`train_step` and :meth:`state_dict`.

    Attributes:
        ema: The task's weight average, updated after every step; None: no EMA.
    """

    ema: EMA | None = None

    def train_step(self, step: int) -> Mapping[str, float]:
        """Run optimisation step number `step` (1-based); return its named scalar losses.

        Raises:
            Whatever the task raises for a diverged step (a non-finite loss).
        """
        raise NotImplementedError

    def log_metrics(self, step: int) -> Mapping[str, float]:
        """More metrics logged with the window's mean losses at `step` (a learning rate, a throughput)."""
        return {}

    def validate(self, step: int, reporter: Reporter) -> None:
        """Validate after `step` (0: before training) and report the result."""

    def progress(self, step: int) -> int:
        """What the monitor counts after `step` steps (steps, unless the task counts samples)."""
        return step

    def state_dict(self, step: int) -> Mapping[str, Any] | None:
        """The state after `step`, to save; None: this process saves nothing (a data-parallel
        process other than rank 0; it is still called on every process)."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Any]) -> int:
        """Restore a saved state; return the step it was saved after."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume")

    def stop_agreed(self, requested: bool) -> bool:
        """Whether to stop, given this process's SIGTERM flag (data-parallel runs agree across
        processes, so all stop at the same step)."""
        return requested


@dataclass(frozen=True)
class TrainingOutcome:
    """Where :func:`train` left off.

    Attributes:
        step: The last step completed.
        stopped: SIGTERM stopped training (its state was saved).
        losses: The mean of each loss over the last logged window (empty before the first log).
    """

    step: int
    stopped: bool
    losses: dict[str, float] = field(default_factory=dict)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM stopped training after its state was saved; ``result`` says where.

    A KeyboardInterrupt so the CLI exits 130 ("interrupted") without a traceback.
    """

    def __init__(self, result: Any) -> None:
        super().__init__(result.summary())
        self.result = result


# --------------------------------------------------------------------------- the loop


def train(task: TrainingTask, cadence: Cadence, reporter: Reporter | None = None, *, start: int = 0,
          checkpoint: Path | None = None) -> TrainingOutcome:
    """Train `task` from step `start` to ``cadence.steps``: see the module docstring.

    Args:
        task: What to train.
        cadence: How long, and how often to log, checkpoint and validate.
        reporter: Where metrics, progress and artifacts go; default :class:`NullReporter`.
        start: The step to continue after (from :func:`restore`); 0 for a fresh run.
        checkpoint: Where the state is saved (cadence and SIGTERM); None: never saved.

    Returns:
        The last step completed, whether SIGTERM stopped training, the last logged losses.
    """
    reporter = reporter if reporter is not None else NullReporter()
    window: dict[str, list[float]] = {}
    logged: dict[str, float] = {}
    saved = start
    step = start
    with sigterm_flag() as sigterm:
        if cadence.validate_first and start == 0:
            task.validate(0, reporter)
        while step < cadence.steps:
            step += 1
            losses = task.train_step(step)
            if task.ema is not None:
                task.ema.update(step)
            for name, value in losses.items():
                window.setdefault(name, []).append(float(value))
            reporter.monitor.progress(task.progress(step))
            if cadence.due(cadence.log_every, step):
                means = {name: float(np.mean(values)) for name, values in window.items()}
                reporter.log_metrics({**means, **task.log_metrics(step)}, step=step)
                for name, value in means.items():
                    reporter.monitor.loss(name, value)
                window, logged = {}, means
            if checkpoint is not None and cadence.due(cadence.checkpoint_every, step):
                save(task, checkpoint, step)
                saved = step
            if cadence.due(cadence.validate_every, step):
                task.validate(step, reporter)
            if task.stop_agreed(sigterm.is_set()):
                if checkpoint is not None and saved != step:
                    save(task, checkpoint, step)
                log.warning("SIGTERM: stopped after step %d of %d; state saved to %s", step, cadence.steps, checkpoint)
                return TrainingOutcome(step, True, logged)
    return TrainingOutcome(step, False, logged)


def save(task: TrainingTask, path: Path, step: int) -> None:
    """Save `task`'s state after `step` to `path`, atomically (on the processes that save)."""
    state = task.state_dict(step)
    if state is not None:
        atomic_torch_save(path, state)


def restore(task: TrainingTask, path: Path) -> int:
    """Restore `task` from the state saved at `path`; the step to continue after (0 without one).

    Raises:
        ValueError: `path` is not a loadable checkpoint, or the task refuses it.
    """
    path = Path(path)
    if not path.is_file():
        log.warning("--resume: no checkpoint at %s, starting from step 0", path)
        return 0
    step = task.load_state_dict(torch_load(path))
    log.info("resuming %s from step %d", path, step)
    return step


class _SetOnSignal:
    """A signal handler that sets an event (a handler may only record: the loop acts on it)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()


@contextlib.contextmanager
def sigterm_flag() -> Iterator[threading.Event]:
    """An event set by SIGTERM (a pod being evicted) while the context is open.

    Outside the main thread, where Python cannot install handlers, the event is never set.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, _SetOnSignal(stop))
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def select_device(local_rank: int | None = None) -> torch.device:
    """Where to train: the GPU when there is one, else the CPU.

    Args:
        local_rank: Which GPU (``torchrun``'s ``LOCAL_RANK``); None: the current one.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)
