"""The training loop: loss, outputs, checkpoints, SIGTERM and resume (no registration)."""

from __future__ import annotations

import hashlib
import json
import signal

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from synthmri.config import to_dict
from synthmri.data.store import SliceStore
from synthmri.generators import get_family
from synthmri.generators.checkpoint import load_checkpoint, load_generator
from synthmri.monitoring import StageMonitor
from synthmri.stages.train_generator import run as train_generator
from synthmri.training import TrainingInterrupted

from . import one_thread, private_mlflow, tiny_config

SMOKE = {"generator.ddpm.iterations": 40, "generator.ddpm.log_every": 4,
         "generator.ddpm.checkpoint_every": 20, "generator.ddpm.sample_grid_every": 20}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    with one_thread(), private_mlflow(root):
        yield root


@pytest.fixture(scope="module")
def store(phantom_store):
    return phantom_store


@pytest.fixture(scope="module")
def smoke(workspace, store):
    """40 iterations of the tiny DDPM, not registered."""
    cfg = tiny_config(**SMOKE)
    return cfg, train_generator(store, workspace / "smoke", cfg, register=False)


def test_loss_is_finite_and_decreases(smoke):
    _, result = smoke
    history = sorted(MlflowClient().get_metric_history(result.run_id, "loss"), key=lambda m: m.step)
    values = np.array([m.value for m in history])
    assert [m.step for m in history] == list(range(4, 41, 4))
    assert np.isfinite(values).all()
    # Window means over 8 and 12 iterations: the noise-prediction MSE starts near 1.
    assert values[-3:].mean() < 0.8 * values[:2].mean(), values


def test_training_writes_checkpoint_grid_generator_and_record(smoke, store):
    cfg, result = smoke
    out = result.checkpoint.parent
    assert result.completed and result.step == 40 and result.version is None
    assert {"checkpoint.pt", "generator.pt", "samples.png", "registration.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "registration.json").read_text()) == {
        "name": None, "version": None, "run_id": result.run_id, "model_uri": None,
        "checkpoint_sha256": hashlib.sha256((out / "generator.pt").read_bytes()).hexdigest()}
    assert "40 iterations" in result.summary() and "not registered" in result.summary()
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["synthmri.stage"] == "train-generator" and run.info.run_name == "ddpm-s0"
    assert run.data.tags["synthmri.data.real"] == SliceStore(store).content_hash
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "samples")}
    assert artifacts == {"samples/step-0000020.png", "samples/step-0000040.png"}


def test_checkpoints_round_trip_with_weights_only(smoke):
    cfg, result = smoke
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert {"model", "model_args", "state_dict", "ema_state_dict", "trainer", "step", "config",
            "image_size", "rng_state"} <= set(state)
    assert state["model"] == "ddpm" and state["step"] == 40 and state["config"] == to_dict(cfg)
    network = get_family("ddpm").build(state["model_args"])
    network.load_state_dict(state["state_dict"])
    for name, tensor in network.state_dict().items():
        assert torch.equal(tensor, state["state_dict"][name])
    # generator.pt carries the EMA weights, which differ from the raw ones.
    generator = load_generator(result.generator)
    assert generator.step == 40 and generator.image_size == 32
    ema = state["ema_state_dict"]
    assert all(torch.equal(t, ema[k]) for k, t in generator.network.state_dict().items())
    assert any(not torch.equal(ema[k], state["state_dict"][k]) for k in ema)


def test_sigterm_checkpoints_and_resume_matches_an_uninterrupted_run(workspace, store, monkeypatch):
    cfg = tiny_config()  # 12 iterations, checkpoints every 4
    straight = train_generator(store, workspace / "straight", cfg, register=False)

    progress = StageMonitor.progress

    def progress_then_sigterm(self, done, total=None):
        progress(self, done, total)
        if self.stage == "train-generator" and done == 5:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(StageMonitor, "progress", progress_then_sigterm)
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_generator(store, workspace / "resumed", cfg, register=False)
    monkeypatch.undo()
    stopped = interrupted.value.result
    assert 5 <= stopped.step < 12 and "--resume" in stopped.summary()
    assert load_checkpoint(stopped.checkpoint)["step"] == stopped.step
    assert not (workspace / "resumed" / "generator.pt").exists()
    assert MlflowClient().get_run(stopped.run_id).info.status == "KILLED"

    resumed = train_generator(store, workspace / "resumed", cfg, resume=True, register=False)
    assert resumed.step == 12
    tags = MlflowClient().get_run(resumed.run_id).data.tags
    assert tags["synthmri.resumed_from_step"] == str(stopped.step)
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key


def test_resume_refuses_a_checkpoint_with_other_network_settings(workspace, store):
    cfg = tiny_config(**{"generator.ddpm.channels": [8, 8]})
    with pytest.raises(ValueError, match=r"network settings differ .*channels"):
        train_generator(store, workspace / "smoke", cfg, resume=True, register=False)
