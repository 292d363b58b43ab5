"""The training skeleton: cadence, resume, SIGTERM for both loops, and the one atomic save."""

from __future__ import annotations

import ast
import os
import signal
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import pytest
import torch
from conftest import one_thread

from synthmri.io import FILE_MODE, atomic_torch_save, atomic_write, atomic_write_text, torch_load
from synthmri.training import (
    EMA,
    Cadence,
    NullReporter,
    TrainingInterrupted,
    TrainingTask,
    ema_decay,
    restore,
    select_device,
    sigterm_flag,
    train,
)


class Recorder(NullReporter):
    """A reporter that keeps what it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict[str, Any]]] = []
        self.progress: list[int] = []
        self.monitor.progress = self.record_progress

    def record_progress(self, done: int, total: int | None = None) -> None:
        self.progress.append(done)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))


class Counter(TrainingTask):
    """A task whose state is the sum of the step numbers it ran; it can SIGTERM itself."""

    def __init__(self, sigterm_at: int | None = None) -> None:
        self.total = torch.zeros(())
        self.steps: list[int] = []
        self.validations: list[int] = []
        self.saves: list[int] = []
        self.sigterm_at = sigterm_at

    def train_step(self, step: int) -> Mapping[str, float]:
        self.steps.append(step)
        self.total += step
        if step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"loss": float(step)}

    def log_metrics(self, step: int) -> Mapping[str, float]:
        return {"lr": 0.1}

    def validate(self, step: int, reporter: Any) -> None:
        self.validations.append(step)

    def progress(self, step: int) -> int:
        return 8 * step

    def state_dict(self, step: int) -> dict[str, Any]:
        self.saves.append(step)
        return {"total": self.total.clone(), "step": step}

    def load_state_dict(self, state: Mapping[str, Any]) -> int:
        self.total = state["total"].clone()
        return int(state["step"])


def test_cadence_fires_at_multiples_and_at_the_last_step(tmp_path):
    task, reporter = Counter(), Recorder()
    cadence = Cadence(steps=10, log_every=3, checkpoint_every=4, validate_every=5, validate_first=True)
    outcome = train(task, cadence, reporter, checkpoint=tmp_path / "state.pt")
    assert outcome.step == 10 and not outcome.stopped
    assert task.steps == list(range(1, 11))
    assert [step for step, _ in reporter.metrics] == [3, 6, 9, 10]
    assert reporter.metrics[0][1] == {"loss": 2.0, "lr": 0.1}  # mean of steps 1-3, then the task's extras
    assert reporter.metrics[-1][1]["loss"] == 10.0 and outcome.losses == {"loss": 10.0}
    assert task.saves == [4, 8, 10] and task.validations == [0, 5, 10]
    assert reporter.progress == [8 * step for step in range(1, 11)]
    assert torch_load(tmp_path / "state.pt")["step"] == 10
    # Zero turns an event off; no checkpoint path, nothing saved.
    quiet = Counter()
    train(quiet, Cadence(steps=3, checkpoint_every=1))
    assert quiet.saves == [] and quiet.validations == []


def test_resume_continues_after_the_saved_step_and_matches_a_straight_run(tmp_path):
    straight = Counter()
    train(straight, Cadence(steps=10, checkpoint_every=4))

    first = Counter()
    train(first, Cadence(steps=6, checkpoint_every=4), checkpoint=tmp_path / "state.pt")
    resumed = Counter()
    start = restore(resumed, tmp_path / "state.pt")
    assert start == 6  # the last step is always saved
    outcome = train(resumed, Cadence(steps=10, checkpoint_every=4, validate_first=True), start=start,
                    checkpoint=tmp_path / "state.pt")
    assert resumed.steps == [7, 8, 9, 10] and outcome.step == 10
    assert resumed.validations == []  # the baseline validation is for fresh runs only
    assert torch.equal(resumed.total, straight.total)
    assert restore(Counter(), tmp_path / "missing.pt") == 0


def test_sigterm_from_a_step_saves_the_state_and_stops(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    task = Counter(sigterm_at=3)
    outcome = train(task, Cadence(steps=10, checkpoint_every=5), checkpoint=tmp_path / "state.pt")
    assert outcome.stopped and outcome.step == 3 and task.steps == [1, 2, 3]
    assert torch_load(tmp_path / "state.pt")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is the caller's again
    # A step that was just checkpointed by the cadence is not saved twice.
    again = Counter(sigterm_at=5)
    train(again, Cadence(steps=10, checkpoint_every=5), checkpoint=tmp_path / "again.pt")
    assert again.saves == [5]


def test_every_process_stops_when_any_saw_sigterm(tmp_path):
    class OtherRankSawIt(Counter):
        def stop_agreed(self, requested: bool) -> bool:
            return self.steps[-1] == 2

    task = OtherRankSawIt()
    outcome = train(task, Cadence(steps=10), checkpoint=tmp_path / "state.pt")
    assert outcome.stopped and outcome.step == 2 and task.saves == [2]


def test_sigterm_flag_is_set_only_inside_the_context():
    with sigterm_flag() as flag:
        assert not flag.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.is_set()


def test_ema_ramps_up_and_averages_parameters():
    assert ema_decay(0.999, 0) == pytest.approx(0.1) and ema_decay(0.9, 10_000) == 0.9
    network = torch.nn.Linear(2, 1)
    ema = EMA(network, 0.5)
    assert not any(p.requires_grad for p in ema.module.parameters())
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        network.weight.add_(1.0)
    ema.update(100)  # decay 0.5: halfway to the new weights
    assert torch.allclose(ema.module.weight, before + 0.5)


def test_device_is_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == torch.device("cpu") == select_device(1)


# --- the one atomic save ----------------------------------------------------------------------


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out" / "state.pt"
    atomic_torch_save(path, {"weights": torch.arange(3)})

    def half_then_fail(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert torch.equal(torch_load(path)["weights"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]
    with pytest.raises(KeyboardInterrupt):  # a SIGINT mid-write too
        atomic_write(tmp_path / "new.txt", lambda handle: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert not list(tmp_path.glob("*new.txt*"))


def test_files_get_the_documented_mode_whatever_the_umask(tmp_path):
    assert FILE_MODE == 0o644
    previous = os.umask(0o077)
    try:
        atomic_torch_save(tmp_path / "checkpoint.pt", {"step": 1})
        atomic_write_text(tmp_path / "report.md", "# report\n")
    finally:
        os.umask(previous)
    for name in ("checkpoint.pt", "report.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == FILE_MODE, name


def test_the_file_and_its_directory_are_fsynced(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def record(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    atomic_write_text(tmp_path / "a.json", "{}\n")
    assert synced == ["file", "dir"]


def test_checkpoint_loads_refuse_foreign_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        torch_load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        torch_load(tmp_path / "absent.pt")


# --- SIGTERM in both loops ---------------------------------------------------------------------


def _sigterm_after(monkeypatch: pytest.MonkeyPatch, task_class: type, at: int) -> None:
    """Make `task_class`'s step number `at` send this process SIGTERM after it ran."""
    original = task_class.train_step

    def step_then_sigterm(self, step):
        losses = original(self, step)
        if step == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return losses

    monkeypatch.setattr(task_class, "train_step", step_then_sigterm)


def test_sigterm_checkpoints_and_stops_the_generator_loop(phantom_store, tmp_path, monkeypatch):
    from generators import tiny_config as tiny_generator_config
    from synthmri.generators.checkpoint import load_checkpoint
    from synthmri.generators.train import GeneratorTraining, train_generator

    _sigterm_after(monkeypatch, GeneratorTraining, 3)
    with one_thread(), pytest.raises(TrainingInterrupted) as interrupted:
        train_generator(phantom_store, tmp_path / "gen", tiny_generator_config())
    result = interrupted.value.result
    assert result.step == 3 and not result.completed and result.generator is None
    assert load_checkpoint(tmp_path / "gen" / "checkpoint.pt")["step"] == 3
    assert not (tmp_path / "gen" / "generator.pt").exists()


def test_sigterm_checkpoints_and_stops_the_segmenter_loop(phantom_store, tiny_config, tmp_path, monkeypatch):
    from synthmri.segmenters.train import SegmenterTraining, train_segmenter

    nnunet = replace(tiny_config.segmenter.nnunet, train_samples=64, val_every_samples=32, batch_size=8)
    cfg = replace(tiny_config, segmenter=replace(tiny_config.segmenter, nnunet=nnunet))
    _sigterm_after(monkeypatch, SegmenterTraining, 2)
    with one_thread(), pytest.raises(TrainingInterrupted) as interrupted:
        train_segmenter("real", phantom_store, [], tmp_path / "seg", cfg)
    result = interrupted.value.result
    assert result.stopped_at == 2 and result.steps == 8 and "stopped by SIGTERM after step 2/8" in result.summary()
    state = torch_load(tmp_path / "seg" / "checkpoint.pt")  # loads without unpickling code
    assert state["step"] == 2 and {"state_dict", "optimizer", "schedule", "sampler", "history"} <= set(state)
    assert [row["step"] for row in state["history"]] == [0]  # the baseline validation ran, no other yet
    assert (tmp_path / "seg" / "model.pt").is_file() and not (tmp_path / "seg" / "completion.json").exists()


def test_libraries_leave_tracking_to_the_stages():
    """The training libraries never open an MLflow run or a monitor, nor reach for the stage layer
    (sampling may still download a registered generator)."""
    root = Path(__file__).resolve().parents[1] / "src" / "synthmri"
    for module in ("training.py", "generators/train.py", "generators/sample.py", "segmenters/train.py",
                   "segmenters/data.py", "segmenters/runs.py"):
        tree = ast.parse((root / module).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert not {name for name in imported if name.startswith(("synthmri.stages", "synthmri.monitoring"))}, module
        assert not used & {"stage_run", "start_run", "StageMonitor"}, module
        if module != "generators/sample.py":
            assert not {name for name in imported if name.startswith(("mlflow", "synthmri.tracking"))}, module
