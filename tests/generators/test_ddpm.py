"""The DDPM family: network shape, data scaling, sampler contract, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmri.data.labels import LABEL_VALUES
from synthmri.generators import FAMILIES, get_family
from synthmri.generators.ddpm import ddim_scheduler, noise_scheduler, to_uint8, to_unit_range

from . import SIZE, one_thread, phantom_slices, tiny_config


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def ddpm():
    """(family, model_args, network) of the tiny DDPM, seeded."""
    family = get_family("ddpm")
    args = family.model_args(tiny_config(), SIZE)
    torch.manual_seed(0)
    return family, args, family.build(args)


def test_registry_is_explicit_and_rejects_unknown_names():
    assert "ddpm" in FAMILIES and get_family("ddpm").name == "ddpm"
    with pytest.raises(ValueError, match=r"unknown generator model 'stylegan9'.*known: ddpm"):
        get_family("stylegan9")


def test_network_predicts_noise_of_the_input_shape(ddpm):
    family, args, network = ddpm
    assert args["in_channels"] == args["out_channels"] == 5
    x = torch.randn(3, 5, SIZE, SIZE)
    out = network(x, torch.tensor([0, 10, 49]))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("override, message", [
    ({"generator.ddpm.num_head_channels": 6}, "num_head_channels"),
    ({"data.size": 31}, "not divisible by 2"),
])
def test_inconsistent_settings_name_the_key(override, message):
    cfg = tiny_config(**override)
    with pytest.raises(ValueError, match=message):
        get_family("ddpm").model_args(cfg, cfg.data.size)


def test_scaling_round_trips_uint8_and_snaps_the_annotation():
    images = phantom_slices(4)
    x = to_unit_range(torch.from_numpy(images))
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), images)
    noisy = to_uint8(x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    assert set(np.unique(noisy[:, 4]).tolist()) <= set(LABEL_VALUES)


@pytest.mark.parametrize("total, steps", [(1000, 25), (1000, 15), (50, 7), (50, 50)])
def test_ddim_timesteps_are_strided_and_end_on_the_clean_image(total, steps):
    timesteps = ddim_scheduler({"timesteps": total, "beta_start": 1e-4, "beta_end": 0.02}, steps).timesteps
    stride = total // steps
    assert len(timesteps) == steps and timesteps[0] > total - 1 - stride and timesteps[-1] < stride
    assert set(torch.diff(timesteps).tolist()) <= {-stride}  # MONAI's step() assumes this stride
    with pytest.raises(ValueError, match="DDIM steps must be in 1..50"):
        ddim_scheduler({"timesteps": 50, "beta_start": 1e-4, "beta_end": 0.02}, 51)


class _Oracle(torch.nn.Module):
    """The exact noise predictor for a data set of one image: eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)."""

    def __init__(self, target: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.target, self.alphas_cumprod = target, alphas_cumprod

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.target) / (1 - a).sqrt()


@pytest.mark.parametrize("options", [{"sampler": "ddim", "steps": 7}, {"sampler": "ddim", "steps": 1}, {"sampler": "ddpm"}])
def test_sampler_recovers_the_image_an_exact_denoiser_knows(ddpm, options):
    """With a perfect noise predictor both samplers must land exactly on the data: this pins the
    schedule, the timestep alignment and the final step, independent of any training."""
    family, args, _ = ddpm
    target = phantom_slices(1)
    oracle = _Oracle(to_unit_range(torch.from_numpy(target)), noise_scheduler(args).alphas_cumprod)
    images = family.sample(oracle, args, 2, torch.Generator().manual_seed(0), options)
    assert np.array_equal(images, np.repeat(target, 2, axis=0))


@pytest.mark.parametrize("options", [{"sampler": "ddim", "steps": 4}, {"sampler": "ddpm"}])
def test_sampler_is_uint8_labelled_and_seeded(ddpm, options):
    family, args, network = ddpm

    def draw(seed: int) -> np.ndarray:
        return family.sample(network, args, 3, torch.Generator().manual_seed(seed), options)

    first, again, other = draw(7), draw(7), draw(8)
    assert first.dtype == np.uint8 and first.shape == (3, 5, SIZE, SIZE)
    assert set(np.unique(first[:, 4]).tolist()) <= set(LABEL_VALUES)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_sampler_rejects_unknown_options(ddpm):
    family, args, network = ddpm
    with pytest.raises(ValueError, match="unknown DDPM sampling option"):
        family.sample(network, args, 1, torch.Generator(), {"truncation": 0.7})
    with pytest.raises(ValueError, match="sampler must be one of"):
        family.sample(network, args, 1, torch.Generator(), {"sampler": "euler"})


def test_train_step_gives_a_finite_loss_and_moves_weights(ddpm):
    family, args, _ = ddpm
    torch.manual_seed(0)
    network = family.build(args)
    before = [p.detach().clone() for p in network.parameters()]
    trainer = family.trainer(network, args, tiny_config())
    losses = trainer.step(torch.from_numpy(phantom_slices(4)), torch.Generator().manual_seed(0))
    assert np.isfinite(losses["loss"]) and losses["loss"] > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, network.parameters()))
    assert "optimizer" in trainer.state_dict()
