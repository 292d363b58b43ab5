"""Shared GAN machinery: growth schedule, augmentation, penalties, lazy Adam, objectives."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synthmri.config import ConfigError
from synthmri.data.labels import LABEL_VALUES
from synthmri.generators.adversarial import (
    GrowthSchedule,
    Objective,
    _adam,
    augment,
    gradient_penalty,
    r1_penalty,
)
from synthmri.generators.pixels import to_uint8, to_unit_range

from . import phantom_slices


def test_growth_schedule_stabilises_fades_and_stops_at_full_resolution():
    schedule = GrowthSchedule(max_level=3, fade_kimg=2.0, stable_kimg=1.0)
    assert schedule.at(0) == (0, 1.0)
    assert schedule.at(999) == (0, 1.0)
    assert schedule.at(1000) == (1, 0.0)  # level 1 starts fading in
    assert schedule.at(2000) == (1, 0.5)
    assert schedule.at(3000) == (1, 1.0)  # faded in, now stable
    assert schedule.at(3999) == (1, 1.0)
    assert schedule.at(4000) == (2, 0.0)
    level, alpha = schedule.at(8500)
    assert (level, alpha) == (3, pytest.approx(0.75))
    assert schedule.at(10_000) == (3, 1.0) and schedule.at(10**9) == (3, 1.0)
    assert schedule.full_kimg == pytest.approx(9.0)


def test_augmentation_keeps_annotation_labels_and_is_identity_at_p0():
    images = to_unit_range(torch.from_numpy(phantom_slices(16)))
    rng = torch.Generator().manual_seed(0)
    assert augment(images, 0.0, rng) is images
    out = augment(images, 1.0, rng)
    assert out.shape == images.shape
    annotation = to_uint8(out)[:, 4]
    # Only moved, never blended: every annotation pixel is still exactly a label value.
    values = torch.unique(((out[:, 4] + 1.0) * 127.5).round())
    assert set(values.tolist()) <= set(float(v) for v in LABEL_VALUES)
    assert set(annotation.ravel().tolist()) <= set(LABEL_VALUES)
    # Each sample's annotation is a flipped and/or shifted copy of the original: same label counts
    # unless pixels were shifted off the edge (the phantom tumours sit well inside).
    for before, after in zip(images[:, 4], out[:, 4]):
        for value in (51, 102, 204):
            level = value / 127.5 - 1.0
            assert int((after == level).sum()) == int((before == level).sum())
    # Intensity changes reach the image channels, and gradients flow through every move.
    assert not torch.equal(out[:, :4], images[:, :4])
    x = images.clone().requires_grad_(True)
    augment(x, 1.0, torch.Generator().manual_seed(1)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


class Linear(nn.Module):
    """D(x) = <w, x>: grad_x D = w everywhere, an independent check of the penalties."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).flatten(1).sum(1)


def test_r1_and_gradient_penalty_match_the_analytic_gradient():
    torch.manual_seed(0)
    weight = torch.randn(1, 5, 4, 4)
    critic = Linear(weight)
    real = torch.randn(3, 5, 4, 4, requires_grad=True)
    r1 = r1_penalty(critic(real), real)
    assert torch.allclose(r1, weight.square().sum().expand(3), rtol=1e-5)
    gp = gradient_penalty(critic, torch.randn(3, 5, 4, 4), torch.randn(3, 5, 4, 4), torch.Generator().manual_seed(0))
    assert torch.allclose(gp, ((weight.norm() - 1) ** 2).expand(3), rtol=1e-5)
    # Both keep the graph: the penalty trains the critic (d/dw |w|^2 = 2w).
    r1.mean().backward()
    assert torch.allclose(critic.weight.grad, 2 * weight, rtol=1e-5)


def test_lazy_regularisation_adjusts_adam_like_stylegan2():
    params = [nn.Parameter(torch.zeros(1))]
    every_step = _adam(params, lr=0.002, betas=(0.0, 0.99), interval=1).param_groups[0]
    lazy = _adam(params, lr=0.002, betas=(0.0, 0.99), interval=16).param_groups[0]
    assert every_step["lr"] == 0.002 and every_step["betas"] == (0.0, 0.99)
    ratio = 16 / 17
    assert lazy["lr"] == pytest.approx(0.002 * ratio) and lazy["betas"][1] == pytest.approx(0.99 ** ratio)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"loss": "hinge"}, "loss must be one of"),
    ({"loss": "non-saturating", "r1_gamma": -1.0}, "generator.stylegan2.r1_gamma"),
    ({"loss": "non-saturating", "r1_interval": 0}, "generator.stylegan2.r1_interval"),
    ({"loss": "non-saturating", "style_mixing": 1.5}, "generator.stylegan2.style_mixing"),
])
def test_impossible_objectives_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Objective(**kwargs).check("stylegan2")


def test_kimg_sets_the_iterations():
    from synthmri.config import StyleGAN2Config

    assert StyleGAN2Config(kimg=25_000, batch_size=32).iterations == 781_250
    assert StyleGAN2Config(kimg=0.1, batch_size=32).iterations == math.ceil(100 / 32)
    assert StyleGAN2Config(kimg=0.0, batch_size=32).iterations == 1


def test_every_configured_model_is_registered():
    from synthmri.config import GENERATOR_MODELS
    from synthmri.generators import FAMILIES

    # The config (and the CLI's --model choices) and the registry name the same families.
    assert tuple(FAMILIES) == GENERATOR_MODELS
    with pytest.raises(ConfigError, match=r"generator.model must be one of .*stylegan3, got 'stylegan9'"):
        from synthmri.config import load_config

        load_config(None, {"generator.model": "stylegan9"})


@pytest.mark.parametrize(("key", "value"), [("lr", 0.0), ("discriminator_lr", -1.0), ("augment_p", 1.5)])
def test_bad_gan_settings_name_the_key(key, value):
    from synthmri.config import load_config
    from synthmri.generators import get_family

    family = get_family("stylegan2")
    cfg = load_config(None, {"data.size": 16, "generator.stylegan2.channel_base": 64,
                             "generator.stylegan2.channel_max": 8, f"generator.stylegan2.{key}": value})
    args = family.model_args(cfg, 16)
    with pytest.raises(ConfigError, match=rf"generator\.stylegan2\.{key}"):
        family.trainer(family.build(args), args, cfg)


def test_growth_without_phases_starts_at_full_resolution():
    assert GrowthSchedule(max_level=4, fade_kimg=0.0, stable_kimg=0.0).at(0) == (4, 1.0)


@pytest.mark.parametrize(("request_row", "message"), [
    ({"n": 1, "seed": 0, "truncation_psi": 3.0}, r"truncation_psi must be in \[0, 2\], got 3.0"),
    ({"n": 1, "seed": 0, "steps": 0}, r"steps must be positive, got 0"),
    ({"n": 0, "seed": 0}, r"n must be in 1\.\.100000, got 0"),
    ({"seed": 0}, r"lacks column\(s\) \['n'\]"),
])
def test_pyfunc_requests_reject_bad_values_by_name(request_row, message):
    from synthmri.generators.pyfunc import parse_requests

    with pytest.raises(ValueError, match=message):
        parse_requests(request_row)
