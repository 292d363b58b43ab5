"""The StyleGAN 1 family: styles, noise, truncation, growth, fade-in, config errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from synthmri.config import ConfigError, StyleGAN1Config
from synthmri.generators import stylegan1
from synthmri.generators.layers import MappingNetwork, channels_at, upsample_to

from . import grow, one_thread

TINY = StyleGAN1Config(z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
BATCH = 4


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


def networks(size: int) -> tuple[stylegan1.Generator, torch.nn.Module]:
    torch.manual_seed(0)
    args = stylegan1.model_args_from(TINY, size, 5)
    return stylegan1.build_generator(args), stylegan1.build_discriminator(args)


def latents(seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, TINY.z_dim, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noisy(g: stylegan1.Generator) -> stylegan1.Generator:
    """Give every noise input a visible strength (they start at zero)."""
    with torch.no_grad():
        for layer in g.layers:
            layer.noise.strength.fill_(0.5)
    return g


@pytest.mark.parametrize("size", [16, 32])
def test_every_level_speaks_full_size_images(size):
    g, d = networks(size)
    assert g.max_level == d.max_level == size.bit_length() - 3
    assert isinstance(g.mapping, MappingNetwork) and g.mapping.num_ws == 2 * (g.max_level + 1)
    z = latents()
    for level in range(g.max_level + 1):
        for alpha in (0.5, 1.0):
            grow(level, alpha, g, d)
            images = g(z, rng=seeded())
            assert images.shape == (BATCH, 5, size, size) and torch.isfinite(images).all()
            logits = d(images)
            assert logits.shape == (BATCH,) and torch.isfinite(logits).all()
    grow(0, 1.0, g)
    images = g(z, rng=seeded())
    assert torch.equal(images, upsample_to(images[:, :, :: size // 4, :: size // 4], size))


def test_forward_is_synthesis_of_mapping():
    g, _ = networks(16)
    noisy(g)
    z = latents()
    for psi in (1.0, 0.5):
        assert torch.equal(g(z, psi, rng=seeded()), g.synthesis(g.mapping(z, psi), rng=seeded()))
    with pytest.raises(ValueError, match="styles must be"):
        g.synthesis(torch.zeros(BATCH, 3, TINY.w_dim))


def test_noise_follows_the_rng():
    g, _ = networks(16)
    noisy(g)
    z = latents()
    assert torch.equal(g(z, rng=seeded(3)), g(z, rng=seeded(3)))
    assert not torch.allclose(g(z, rng=seeded(3)), g(z, rng=seeded(4)))


def test_zero_truncation_collapses_latents_without_noise():
    g, _ = networks(16)
    g.mapping(torch.randn(64, TINY.z_dim), update_w_avg=True)  # a non-trivial w_avg
    images = g(torch.randn(BATCH, TINY.z_dim), truncation_psi=0.0, rng=seeded())
    assert torch.allclose(images, images[:1].expand_as(images), atol=1e-6)
    varied = g(torch.randn(BATCH, TINY.z_dim), rng=seeded())
    assert not torch.allclose(varied, varied[:1].expand_as(varied), atol=1e-3)


def test_each_level_reads_only_its_own_styles():
    g, _ = networks(32)
    ws = g.mapping(latents())
    other = ws.clone()
    other[:, 2:] = g.mapping(latents(9))[:, 2:]
    grow(0, 1.0, g)  # 4x4 uses styles 0 and 1
    assert torch.equal(g.synthesis(ws, rng=seeded()), g.synthesis(other, rng=seeded()))
    grow(1, 1.0, g)
    assert not torch.allclose(g.synthesis(ws, rng=seeded()), g.synthesis(other, rng=seeded()))


@pytest.mark.parametrize("size", [16, 32])
def test_generator_fade_in_is_continuous(size):
    g, _ = networks(size)
    noisy(g)
    z = latents()
    features: list[torch.Tensor] = []
    for level in range(1, g.max_level + 1):
        grow(level - 1, 1.0, g)
        before = g(z, rng=seeded())
        grow(level, 0.0, g)
        assert torch.equal(g(z, rng=seeded()), before)  # alpha 0: exactly the previous level
        hook = g.layers[2 * level + 1].register_forward_hook(lambda _m, _i, out: features.append(out))
        grow(level, 1.0, g)
        after = g(z, rng=seeded())
        hook.remove()
        assert torch.equal(after, upsample_to(g.to_rgb[level](features[-1]), size))  # the new level alone
        grow(level, 0.5, g)
        assert torch.allclose(g(z, rng=seeded()), (before + after) / 2, atol=1e-5)


def test_discriminator_blurs_fades_and_passes_gradients():
    _, d = networks(32)
    assert all(block.blur is not None for block in d.blocks)
    x = torch.randn(BATCH, 5, 32, 32, generator=seeded(2))
    for level in range(1, d.max_level + 1):
        grow(level - 1, 1.0, d)
        before = d(x)
        grow(level, 0.0, d)
        assert torch.equal(d(x), before)
    grow(2, 0.5, d)
    x.requires_grad_(True)
    d(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_widths_follow_channels_at_and_parameter_count():
    g, _ = networks(32)
    widths = [channels_at(r, TINY.channel_base, TINY.channel_max) for r in (4, 8, 16, 32)]
    assert [m.weight.shape[1] for m in g.to_rgb] == widths
    c, w, z, ch = widths, TINY.w_dim, TINY.z_dim, 5

    def styled(cin: int, cout: int, conv: bool = True) -> int:
        return (9 * cin * cout if conv else 0) + 2 * cout + 2 * (w * cout + cout)

    expected = z * w + w + (TINY.mapping_layers - 1) * (w * w + w) + 16 * c[0]
    expected += styled(c[0], c[0], conv=False) + styled(c[0], c[0])
    expected += sum(styled(c[i - 1], c[i]) + styled(c[i], c[i]) for i in range(1, 4))
    expected += sum(width * ch + ch for width in c)
    assert sum(p.numel() for p in g.parameters()) == expected


def test_model_args_are_architecture_only():
    assert stylegan1.model_args_from(TINY, 32, 5) == {
        "image_size": 32, "channels": 5, "z_dim": 32, "channel_base": 256, "channel_max": 32,
        "w_dim": 32, "mapping_layers": 2, "mapping_lr_mul": 0.01}


@pytest.mark.parametrize("override, size, message", [
    ({"z_dim": 0}, 32, r"generator\.stylegan1\.z_dim"),
    ({"w_dim": -4}, 32, r"generator\.stylegan1\.w_dim"),
    ({"mapping_layers": 0}, 32, r"generator\.stylegan1\.mapping_layers"),
    ({"mapping_lr_mul": 0.0}, 32, r"generator\.stylegan1\.mapping_lr_mul"),
    ({}, 12, r"data\.size.*power-of-two"),
])
def test_invalid_settings_name_the_key(override, size, message):
    with pytest.raises(ConfigError, match=message):
        stylegan1.model_args_from(dataclasses.replace(TINY, **override), size, 5)


def test_registry_entry():
    family = stylegan1.FAMILY
    assert (family.name, family.section, family.progressive, family.truncation) == ("stylegan1", "stylegan1",
                                                                                    True, True)
    objective = family.objective(TINY)
    assert objective.loss == "non-saturating" and objective.r1_gamma == TINY.r1_gamma
    assert objective.r1_interval == 1 and objective.style_mixing == TINY.style_mixing
