"""Every GAN family through the common loop: a short CPU run, a valid store, an exact resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from synthmri.data.labels import LABEL_VALUES
from synthmri.data.store import SliceStore
from synthmri.generators import FAMILIES
from synthmri.generators.checkpoint import load_checkpoint, load_generator
from synthmri.generators.sample import generate
from synthmri.stages.train_generator import run as train_generator

from . import SIZE, one_thread, private_mlflow, tiny_config

GANS = ("progan", "stylegan1", "stylegan2", "stylegan3")
BATCH = 8

#: Tiny networks of each family; the progressive ones grow 4x4 -> 32x32 within the run.
TINY_GAN = {
    "progan": {"channel_base": 256, "channel_max": 32, "z_dim": 32,
               "stable_kimg": 0.016, "fade_kimg": 0.016, "lr": 2e-3, "discriminator_lr": 2e-3},
    "stylegan1": {"channel_base": 256, "channel_max": 32, "z_dim": 32, "w_dim": 32, "mapping_layers": 2,
                  "stable_kimg": 0.016, "fade_kimg": 0.016},
    "stylegan2": {"channel_base": 256, "channel_max": 32, "z_dim": 32, "w_dim": 32, "mapping_layers": 2,
                  "pl_interval": 2, "r1_interval": 4, "augment_p": 0.5, "batch_gpu": 2},  # rounds of 2
    "stylegan3": {"channel_base": 512, "channel_max": 32, "z_dim": 32, "w_dim": 32, "mapping_layers": 2,
                  "num_layers": 4, "r1_interval": 4},
}


def gan_config(model: str, iterations: int, **extra: object):
    """The tiny test config training `model` for `iterations` steps of batch 8."""
    section = {**TINY_GAN[model], "batch_size": BATCH, "kimg": iterations * BATCH / 1000, "ema_decay": 0.9,
               "log_every": 2, "checkpoint_every": 4, "sample_grid_every": 100}
    overrides = {f"generator.{model}.{key}": value for key, value in section.items()}
    return tiny_config(**{"generator.model": model, **overrides, **extra})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("gans")
    with one_thread(), private_mlflow(root):
        yield root


@pytest.mark.parametrize("model", GANS)
def test_short_cpu_run_has_finite_losses_and_samples_a_valid_store(model, workspace, phantom_store):
    assert model in FAMILIES
    iterations = 16
    cfg = gan_config(model, iterations)
    result = train_generator(phantom_store, workspace / model, cfg, register=False)
    assert result.completed and result.step == iterations == cfg.generator.__getattribute__(model).iterations

    client = MlflowClient()
    for name in ("loss_g", "loss_d", "kimg_per_second"):
        history = client.get_metric_history(result.run_id, name)
        assert len(history) == iterations // 2, name
        assert all(np.isfinite(m.value) for m in history), name
    regularisers = {"progan": "gradient_penalty", "stylegan1": "r1_penalty",
                    "stylegan2": "path_length_penalty", "stylegan3": "r1_penalty"}
    assert client.get_metric_history(result.run_id, regularisers[model])
    if model in ("progan", "stylegan1"):
        # Growth reached the full 32x32 (level 3) by the end of the run.
        levels = [m.value for m in sorted(client.get_metric_history(result.run_id, "growth_level"), key=lambda m: m.step)]
        assert levels[0] < levels[-1] == 3

    generator = load_generator(result.generator)
    assert generator.name == model and generator.image_size == SIZE
    manifest = generate(str(result.generator), workspace / f"{model}-synthetic", cfg)
    store = SliceStore(workspace / f"{model}-synthetic", verify=True)
    images = store.read(np.arange(len(store)))
    assert manifest["counts"]["slices"] == len(store) == cfg.generator.n_synthetic
    assert images.shape == (cfg.generator.n_synthetic, 5, SIZE, SIZE) and images.dtype == np.uint8
    assert set(np.unique(images[:, 4])) <= set(LABEL_VALUES)
    assert store.manifest["generator"]["name"] == model
    # Different latents give different images: the generator is not a constant.
    assert len({images[i, :4].tobytes() for i in range(len(images))}) == len(images)
    # Seeded: the same seed and count give the same bytes (noise inputs included), another seed does not.
    again = generate(str(result.generator), workspace / f"{model}-again", cfg)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]
    other = generate(str(result.generator), workspace / f"{model}-other", dataclasses.replace(cfg, seed=1))
    assert [s["sha256"] for s in other["shards"]] != [s["sha256"] for s in manifest["shards"]]


@pytest.mark.parametrize("model", ("stylegan2", "progan"))
def test_resumed_gan_matches_an_uninterrupted_run(model, workspace, phantom_store):
    straight = train_generator(phantom_store, workspace / f"{model}-straight", gan_config(model, 8), register=False)
    first = train_generator(phantom_store, workspace / f"{model}-resumed", gan_config(model, 4), register=False)
    assert first.step == 4
    resumed = train_generator(phantom_store, workspace / f"{model}-resumed", gan_config(model, 8), resume=True,
                              register=False)
    assert resumed.step == 8
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key
    # The discriminator and its optimiser resumed too.
    assert all(torch.equal(a["trainer"]["discriminator"][name], b["trainer"]["discriminator"][name])
               for name in a["trainer"]["discriminator"])


def test_truncation_is_a_stylegan_option_only(workspace):
    from synthmri.config import ConfigError
    from synthmri.generators import get_family

    assert get_family("stylegan2").sampling_options(gan_config("stylegan2", 1)) == {"truncation_psi": 1.0}
    cfg = gan_config("stylegan2", 1, **{"generator.stylegan2.truncation_psi": 0.7})
    assert get_family("stylegan2").sampling_options(cfg) == {"truncation_psi": 0.7}
    with pytest.raises(ConfigError, match=r"generator.progan.truncation_psi"):
        get_family("progan").sampling_options(gan_config("progan", 1, **{"generator.progan.truncation_psi": 0.7}))


def test_registered_gan_samples_through_the_pyfunc_with_truncation(workspace, phantom_store):
    import mlflow

    cfg = gan_config("stylegan2", 2)
    result = train_generator(phantom_store, workspace / "registered", cfg)
    assert result.registered_name == "synthmri-stylegan2"
    model = mlflow.pyfunc.load_model("models:/synthmri-stylegan2@candidate")
    images = model.predict({"n": 3, "seed": 5, "truncation_psi": 0.5})
    assert images.shape == (3, 5, SIZE, SIZE) and images.dtype == np.uint8
    assert set(np.unique(images[:, 4])) <= set(LABEL_VALUES)
    # Same request, same bytes; psi = 0 collapses every latent onto the average style, so
    # the images differ only through the noise inputs: far less than at psi = 1.
    assert np.array_equal(images, model.predict({"n": 3, "seed": 5, "truncation_psi": 0.5}))
    spread = {psi: model.predict({"n": 4, "seed": 1, "truncation_psi": psi}).astype(np.float32)[:, :4].std(axis=0).mean()
              for psi in (0.0, 1.0)}
    assert spread[0.0] < spread[1.0]
    with pytest.raises(ValueError, match=r"\['steps'\] do not apply to a stylegan2 model"):
        model.predict({"n": 1, "seed": 0, "steps": 10})


def test_progan_batch_follows_the_resolution_through_the_loop(workspace, phantom_store):
    from synthmri.generators.adversarial import GrowthSchedule

    table = {4: 16, 8: 16, 16: 8, 32: 4}
    cfg = gan_config("progan", 1, **{"generator.progan.minibatch_dict": table, "generator.progan.kimg": 0.2,
                                     "generator.progan.checkpoint_every": 1000})
    result = train_generator(phantom_store, workspace / "progan-schedule", cfg, register=False)
    # The official loop's count: one step per batch, each batch the resolution's, until 200 images.
    schedule, images, steps = GrowthSchedule(3, 0.016, 0.016), 0, 0
    while images < 200:
        images += table[4 * 2 ** schedule.at(images)[0]]
        steps += 1
    assert result.completed and result.step == result.iterations == steps != cfg.generator.progan.iterations
    state = load_checkpoint(result.checkpoint)
    assert state["step"] == steps and state["trainer"]["images_seen"] == images
    history = MlflowClient().get_metric_history(result.run_id, "growth_level")
    assert max(m.value for m in history) == 3
