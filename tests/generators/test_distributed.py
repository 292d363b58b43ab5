"""Data-parallel training on the CPU: gloo all-reduce, and `train-generator` under torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp
from mlflow import MlflowClient
from torch import nn

from synthmri.generators.checkpoint import load_checkpoint, load_generator
from synthmri.generators.distributed import runtime

from . import REPO, TINY_DDPM, private_mlflow
from .test_gan_training import TINY_GAN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _average_on_rank(rank: int, port: int, results) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    with runtime(mixed_precision=True) as run:
        layer = nn.Linear(3, 2)
        run.broadcast_module(layer)  # rank 1's random init is replaced by rank 0's
        layer.weight.grad = torch.full_like(layer.weight, float(rank + 1))  # 1 and 2: mean 1.5
        layer.bias.grad = torch.arange(2, dtype=torch.float32) * (rank + 1)
        run.average_gradients(layer)
        results[rank] = {"weight": layer.weight.detach().clone(), "weight_grad": layer.weight.grad.clone(),
                         "bias_grad": layer.bias.grad.clone(), "any": run.any(rank == 1),
                         "none": run.any(False), "main": run.is_main, "amp": run.mixed_precision}


def test_gradients_are_averaged_and_flags_shared_across_two_gloo_processes():
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(_average_on_rank, args=(_free_port(), results), nprocs=2, join=True, start_method="spawn")
    assert torch.equal(results[0]["weight"], results[1]["weight"])
    for rank in (0, 1):
        assert torch.allclose(results[rank]["weight_grad"], torch.full((2, 3), 1.5))
        assert torch.allclose(results[rank]["bias_grad"], torch.tensor([0.0, 1.5]))
        assert results[rank]["any"] is True and results[rank]["none"] is False
        assert results[rank]["amp"] is False  # bfloat16 autocast is for CUDA only
    assert results[0]["main"] and not results[1]["main"]


def test_train_generator_relaunches_under_torchrun_with_two_cpu_processes(tmp_path, phantom_store):
    # StyleGAN2: the hardest case for data parallelism (R1 and path length take gradients of
    # gradients); the DDPM shares the loop and the gradient averaging.
    model = "stylegan2"
    settings = {**{f"generator.{model}.{k}": v for k, v in TINY_GAN[model].items()},
                "generator.stylegan2.batch_size": 8, "generator.stylegan2.kimg": 0.048,
                "generator.stylegan2.log_every": 2, "generator.stylegan2.checkpoint_every": 4}
    settings.update({k: v for k, v in TINY_DDPM.items() if k.startswith("data.")})
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    out = tmp_path / "model"
    with private_mlflow(tmp_path) as uri:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        # What the pipeline's GPU component runs: the verb relaunches itself under torchrun.
        command = [sys.executable, "-m", "synthmri", "train-generator", "--nproc-per-node", "2", "--profile",
                   str(REPO / "configs" / "demo.yaml"), "--model", model, "--data", str(phantom_store),
                   "--out", str(out), "--no-register", *sets]
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        state = load_checkpoint(out / "checkpoint.pt")
        assert state["step"] == 6 and len(state["rng_state"]["ranks"]) == 2
        # Each process drew its own batches.
        assert not torch.equal(state["rng_state"]["ranks"][0], state["rng_state"]["ranks"][1])
        generator = load_generator(out / "generator.pt")
        assert generator.name == model
        runs = MlflowClient().search_runs(MlflowClient().get_experiment_by_name("synthmri-generators").experiment_id)
    assert len(runs) == 1  # rank 0 alone tracks
    assert runs[0].data.params["distributed.world_size"] == "2"
    assert runs[0].info.status == "FINISHED"
