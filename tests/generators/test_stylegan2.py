"""The StyleGAN2 networks: shapes, demodulation, double backward, seeded noise, truncation, config errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from synthmri.config import ConfigError, StyleGAN2Config, load_config
from synthmri.generators.stylegan2 import (
    ModulatedConv2d,
    build_discriminator,
    build_generator,
    model_args_from,
)

from . import one_thread

#: Tiny widths: every part of the networks, a few thousand parameters per resolution.
TINY = StyleGAN2Config(z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


def networks(size: int, seed: int = 0):
    torch.manual_seed(seed)
    args = model_args_from(TINY, size, 5)
    return build_generator(args), build_discriminator(args)


@pytest.fixture(scope="module")
def pair16():
    return networks(16)


def set_noise_strength(generator: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for name, p in generator.named_parameters():
            if name.endswith("noise.strength"):
                p.fill_(value)


def test_model_args_are_the_architecture_only():
    args = model_args_from(TINY, 32, 5)
    assert args == {"image_size": 32, "channels": 5, "z_dim": 32, "w_dim": 32, "mapping_layers": 2,
                    "mapping_lr_mul": 0.01, "channel_base": 256, "channel_max": 32}


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("batch", [1, 3])
def test_generator_and_discriminator_shapes(size, batch):
    g, d = networks(size)
    assert g.mapping.num_ws == g.synthesis.num_ws == 2 * (size.bit_length() - 1) - 2  # 14 at 256^2
    z = torch.randn(batch, g.z_dim)
    with torch.no_grad():
        images = g(z, rng=torch.Generator().manual_seed(0))
        logits = d(images)
    assert images.shape == (batch, 5, size, size) and torch.isfinite(images).all()
    assert logits.shape == (batch,) and torch.isfinite(logits).all()


def test_demodulation_normalises_whatever_the_style_scale():
    torch.manual_seed(0)
    conv = ModulatedConv2d(64, 16, 3, w_dim=32, demodulate=True)
    x, w = torch.randn(2, 64, 32, 32), torch.randn(2, 32)
    with torch.no_grad():
        out = conv(x, w)
        std = out.std(dim=(2, 3))
        assert std.shape == (2, 16) and torch.allclose(std, torch.ones_like(std), atol=0.15)
        conv.affine.weight.mul_(10.0)  # styles x10
        conv.affine.bias.mul_(10.0)
        assert torch.allclose(conv(x, w), out, atol=1e-4)
        # Without demodulation the same scaling scales the output: the check above is not vacuous.
        plain = ModulatedConv2d(64, 16, 3, w_dim=32, demodulate=False)
        before = plain(x, w)
        plain.affine.weight.mul_(10.0)
        plain.affine.bias.mul_(10.0)
        assert torch.allclose(plain(x, w), 10 * before, rtol=1e-4, atol=1e-4)


def test_grouped_modulation_matches_a_per_sample_convolution():
    torch.manual_seed(1)
    conv = ModulatedConv2d(8, 4, 3, w_dim=32, up=True)
    x, w = torch.randn(3, 8, 5, 5), torch.randn(3, 32)
    with torch.no_grad():
        batched = conv(x, w)
        single = torch.cat([conv(x[i:i + 1], w[i:i + 1]) for i in range(3)])
    assert batched.shape == (3, 4, 10, 10) and torch.allclose(batched, single, atol=1e-5)


def test_r1_double_backward_through_the_discriminator(pair16):
    _, d = pair16
    real = torch.rand(3, 5, 16, 16).mul(2).sub(1).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
    penalty = grad.square().sum(dim=(1, 2, 3)).mean()
    d.zero_grad()
    penalty.backward()
    grads = [p.grad for p in d.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_path_length_gradient_wrt_styles(pair16):
    g, _ = pair16
    ws = g.mapping(torch.randn(2, g.z_dim)).detach().requires_grad_(True)
    images = g.synthesis(ws, rng=torch.Generator().manual_seed(0))
    noise = torch.randn_like(images) / 16
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    assert grad.shape == ws.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
    g.zero_grad()
    lengths.mean().backward()  # the penalty's own backward (double backward through G)
    assert all(torch.isfinite(p.grad).all() for p in g.parameters() if p.grad is not None)


def test_noise_comes_from_the_rng():
    g, _ = networks(16, seed=2)
    set_noise_strength(g, 0.5)
    z = torch.randn(2, g.z_dim)
    with torch.no_grad():
        a = g(z, rng=torch.Generator().manual_seed(7))
        b = g(z, rng=torch.Generator().manual_seed(7))
        c = g(z, rng=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_zero_truncation_collapses_latents_without_noise():
    g, _ = networks(16, seed=3)
    assert all(p.abs().sum() == 0 for n, p in g.named_parameters() if n.endswith("noise.strength"))
    z = torch.randn(4, g.z_dim)
    with torch.no_grad():
        free = g(z, truncation_psi=1.0, rng=torch.Generator().manual_seed(0))
        images = g(z, truncation_psi=0.0, rng=torch.Generator().manual_seed(0))
    assert not torch.allclose(free[0], free[1])
    assert torch.allclose(images, images[:1].expand_as(images), atol=1e-6)


@pytest.mark.parametrize("field, value", [
    ("w_dim", 0), ("z_dim", -1), ("mapping_layers", 0), ("channel_base", 0), ("channel_max", 2.5),
    ("mapping_lr_mul", 0.0),
])
def test_invalid_settings_name_the_key(field, value):
    with pytest.raises(ConfigError, match=rf"generator\.stylegan2\.{field}"):
        load_config(None, {f"generator.stylegan2.{field}": value})  # the config checks the section as it loads


@pytest.mark.parametrize("size", [4, 48, 100])
def test_image_size_must_be_a_power_of_two_of_at_least_8(size):
    with pytest.raises(ConfigError, match=rf"data\.size.*got {size}"):
        model_args_from(TINY, size, 5)


def paper_section():
    from synthmri.config import load_config

    from . import REPO

    return load_config(REPO / "configs" / "paper.yaml").generator.stylegan2


def test_config_f_has_the_official_parameter_counts():
    """--cfg=stylegan2 at 256x256 with 5 channels, counted by instantiating the official
    networks_stylegan2.py: G 30,040,240 (mapping 2,101,248), D 28,864,385."""
    section = paper_section()
    assert (section.channel_base, section.channel_max, section.mapping_layers, section.w_dim) == (32768, 512, 8, 512)
    assert (section.lr, section.discriminator_lr, section.batch_size, section.r1_gamma) == (2e-3, 2e-3, 32, 8.2)
    assert (section.style_mixing, section.pl_weight, section.pl_interval, section.r1_interval) == (0.9, 2.0, 4, 16)
    assert StyleGAN2Config() == section  # the defaults are the paper's
    with torch.device("meta"):  # shapes only: no 60M random numbers
        g = build_generator(model_args_from(section, 256, 5))
        d = build_discriminator(model_args_from(section, 256, 5))
    assert sum(p.numel() for p in g.mapping.parameters()) == 2_101_248
    assert sum(p.numel() for p in g.parameters()) == 30_040_240
    assert sum(p.numel() for p in d.parameters()) == 28_864_385
    widths = [block.torgb.conv.weight.shape[1] for block in g.synthesis.blocks]
    assert widths == [512, 512, 512, 512, 512, 256, 128]  # min(32768 // r, 512), r = 4..256
    # One scalar noise strength per synthesis layer, as the official noise_strength.
    strengths = [p for name, p in g.named_parameters() if name.endswith("noise.strength")]
    assert len(strengths) == 13 and all(p.shape == () for p in strengths)


def test_activations_are_clamped_under_mixed_precision_like_the_official_conv_clamp():
    g, d = networks(16, seed=4)
    z = torch.randn(2, g.z_dim)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("torgb.bias"):
                p.fill_(1e4)  # an output far outside [-256, 256]
        d.fromrgb.bias.fill_(1e4)
        # Full precision: no clamp (the official --fp32 turns conv_clamp off).
        assert g(z, rng=torch.Generator().manual_seed(0)).abs().max() > 1e4
        assert torch.all(d.fromrgb(torch.zeros(1, 5, 16, 16)) > 1e4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images = g(z, rng=torch.Generator().manual_seed(0))
            h = d.fromrgb(torch.zeros(1, 5, 16, 16))
        assert images.abs().max() <= 256 * 3  # each toRGB clamped; 3 resolutions added up
        assert torch.all(h == 256)
