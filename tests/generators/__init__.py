"""Generator tests: a tiny DDPM config, structured slices and a private MLflow for the modules."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import one_thread  # noqa: F401  (re-exported for the generator tests)

from synthmri.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
SIZE = 32

#: Smallest DDPM that still has every part (two levels, attention, EMA, DDIM): ~46k parameters.
TINY_DDPM = {
    "data.size": SIZE,
    "data.pad_to": 64,
    "data.shard_size": 4,
    "generator.n_synthetic": 10,
    "generator.sample_batch_size": 4,
    "generator.ddpm.channels": [8, 16],
    "generator.ddpm.attention_levels": [False, True],
    "generator.ddpm.num_res_blocks": 1,
    "generator.ddpm.num_head_channels": 8,
    "generator.ddpm.norm_num_groups": 8,
    "generator.ddpm.timesteps": 50,
    "generator.ddpm.batch_size": 8,
    "generator.ddpm.iterations": 12,
    "generator.ddpm.lr": 2.0e-3,
    "generator.ddpm.ema_decay": 0.9,
    "generator.ddpm.sample_steps": 5,
    "generator.ddpm.checkpoint_every": 4,
    "generator.ddpm.sample_grid_every": 6,
    "generator.ddpm.log_every": 2,
}


def tiny_config(**overrides: object) -> Config:
    """The demo profile with :data:`TINY_DDPM` and `overrides` (dotted keys)."""
    return load_config(REPO / "configs" / "demo.yaml", {**TINY_DDPM, **overrides})


def phantom_slices(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """uint8 [n, 5, size, size]: an ellipse 'brain' with a nested three-label tumour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    out = np.zeros((n, 5, size, size), dtype=np.uint8)
    for i in range(n):
        ry, rx = rng.uniform(0.6, 0.9, size=2)
        brain = (yy / ry) ** 2 + (xx / rx) ** 2 < 1
        cy, cx = rng.uniform(-0.3, 0.3, size=2)
        radius = np.hypot(yy - cy, xx - cx)
        tumour_size = rng.uniform(0.15, 0.3)
        for channel, level in enumerate((120, 90, 160, 140)):
            image = np.where(brain, level + rng.normal(0, 8, size=(size, size)), 0)
            image = np.where(radius < tumour_size, 230 - 20 * channel, image)
            out[i, channel] = np.clip(image, 0, 255).astype(np.uint8)
        seg = np.zeros((size, size), dtype=np.uint8)
        seg[radius < tumour_size * 1.4] = 102
        seg[radius < tumour_size] = 204
        seg[radius < tumour_size * 0.5] = 51
        out[i, 4] = np.where(brain, seg, 0)
    return out


@contextlib.contextmanager
def private_mlflow(root: Path) -> Iterator[str]:
    """A sqlite MLflow store (tracking and registry) under `root` while the context is open.

    Like the ``mlflow_uri`` fixture, but usable from module-scoped fixtures so one store
    (whose creation costs seconds) serves several tests.
    """
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        # Registering calls mlflow.set_registry_uri, which exports MLFLOW_REGISTRY_URI; set it
        # here so the patch removes it again and no later test talks to this store's registry.
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        patch.chdir(root)  # the default artifact root lands in root/mlruns
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def grow(level: int, alpha: float, *networks: object) -> None:
    """Set the growth state of progressive networks (ProGAN, StyleGAN 1)."""
    for network in networks:
        network.set_growth(level, alpha)
