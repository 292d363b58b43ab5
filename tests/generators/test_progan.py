"""The ProGAN family: growth, fade-in, shapes, discriminator gradients, config errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from synthmri.config import ConfigError, ProGANConfig, load_config
from synthmri.generators import progan
from synthmri.generators.layers import channels_at, upsample_to

from . import grow, one_thread

TINY = ProGANConfig(z_dim=32, channel_base=256, channel_max=32)
BATCH = 4


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


def networks(size: int) -> tuple[progan.Generator, progan.Discriminator]:
    torch.manual_seed(0)
    args = progan.model_args_from(TINY, size, 5)
    return progan.build_generator(args), progan.build_discriminator(args)


def latents(seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, TINY.z_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [16, 32])
def test_every_level_speaks_full_size_images(size):
    g, d = networks(size)
    assert g.max_level == d.max_level == size.bit_length() - 3
    assert (g.level, g.alpha) == (g.max_level, 1.0)  # built at full growth
    z = latents()
    for level in range(g.max_level + 1):
        for alpha in (0.5, 1.0):
            grow(level, alpha, g, d)
            images = g(z)
            assert images.shape == (BATCH, 5, size, size) and images.dtype == torch.float32
            assert torch.isfinite(images).all()
            logits = d(images)
            assert logits.shape == (BATCH,) and torch.isfinite(logits).all()


def test_low_levels_are_nearest_upsampled_blocks():
    g, _ = networks(32)
    grow(0, 1.0, g)
    images = g(latents())
    # At 4x4 every 8x8 tile of the 32x32 output is one value.
    assert torch.equal(images, upsample_to(images[:, :, ::8, ::8], 32))
    assert not torch.equal(images[:, :, 0, 0], images[:, :, 0, 8])


@pytest.mark.parametrize("size", [16, 32])
def test_generator_fade_in_is_continuous(size):
    g, _ = networks(size)
    z = latents()
    for level in range(1, g.max_level + 1):
        grow(level - 1, 1.0, g)
        before = g(z)
        grow(level, 0.0, g)
        assert torch.equal(g(z), before)  # alpha 0: exactly the previous level
        grow(level, 1.0, g)
        after = g(z)
        pure = upsample_to(g.to_rgb[level](g.features(z, level)[-1]), size)
        assert torch.equal(after, pure)  # alpha 1: the new level alone
        grow(level, 0.5, g)
        assert torch.allclose(g(z), (before + after) / 2, atol=1e-5)


@pytest.mark.parametrize("size", [16, 32])
def test_discriminator_fade_in_is_continuous(size):
    _, d = networks(size)
    x = torch.randn(BATCH, 5, size, size, generator=torch.Generator().manual_seed(2))
    for level in range(1, d.max_level + 1):
        grow(level - 1, 1.0, d)
        before = d(x)
        grow(level, 0.0, d)
        assert torch.equal(d(x), before)
        grow(level, 1.0, d)
        assert not torch.allclose(d(x), before)


@pytest.mark.parametrize("level", [0, 1, 3])
def test_discriminator_gradient_reaches_the_input(level):
    _, d = networks(32)
    grow(level, 0.5, d)
    x = torch.randn(BATCH, 5, 32, 32, requires_grad=True)
    d(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.from_rgb[level].parameters())


def test_growth_travels_with_the_state_dict():
    g, _ = networks(16)
    grow(1, 0.25, g)
    copy, _ = networks(16)
    copy.load_state_dict(g.state_dict())
    assert (copy.level, copy.alpha) == (1, 0.25)
    z = latents()
    assert torch.equal(copy(z), g(z))


def test_no_truncation():
    g, _ = networks(16)
    with pytest.raises(ValueError, match="truncation"):
        g(latents(), truncation_psi=0.7)


def test_widths_follow_channels_at_and_parameter_count():
    g, d = networks(32)
    widths = [channels_at(r, TINY.channel_base, TINY.channel_max) for r in (4, 8, 16, 32)]
    assert widths == [32, 32, 16, 8]
    assert [m.weight.shape[1] for m in g.to_rgb] == widths
    assert [m.weight.shape[0] for m in d.from_rgb] == widths
    c, z, ch = widths, TINY.z_dim, 5
    g_expected = (z * 16 * c[0] + 16 * c[0]) + (9 * c[0] ** 2 + c[0])
    g_expected += sum(9 * c[i - 1] * c[i] + c[i] + 9 * c[i] ** 2 + c[i] for i in range(1, 4))
    g_expected += sum(w * ch + ch for w in c)
    d_expected = sum(ch * w + w for w in c)
    d_expected += sum(9 * c[i] ** 2 + c[i] + 9 * c[i] * c[i - 1] + c[i - 1] for i in range(1, 4))
    d_expected += 9 * (c[0] + 1) * c[0] + c[0] + 16 * c[0] * c[0] + c[0] + c[0] + 1
    assert sum(p.numel() for p in g.parameters()) == g_expected
    assert sum(p.numel() for p in d.parameters()) == d_expected


def test_model_args_are_architecture_only():
    args = progan.model_args_from(TINY, 32, 5)
    assert args == {"image_size": 32, "channels": 5, "z_dim": 32, "channel_base": 256, "channel_max": 32}


@pytest.mark.parametrize("override, size, message", [
    ({"z_dim": 0}, 32, r"generator\.progan\.z_dim"),
    ({"channel_base": -1}, 32, r"generator\.progan\.channel_base"),
    ({"channel_max": 1.5}, 32, r"generator\.progan\.channel_max"),
    ({}, 24, r"data\.size.*power-of-two"),
    ({}, 4, r"data\.size.*at least 8"),
])
def test_invalid_settings_name_the_key(override, size, message):
    with pytest.raises(ConfigError, match=message):
        # The section's values are checked as the config loads, the image size as the networks are built.
        load_config(None, {f"generator.progan.{key}": value for key, value in override.items()})
        progan.model_args_from(dataclasses.replace(TINY, **override), size, 5)


def test_registry_entry():
    family = progan.FAMILY
    assert (family.name, family.section, family.progressive, family.truncation) == ("progan", "progan", True, False)
    objective = family.objective(TINY)
    assert objective.loss == "wgan-gp" and objective.gp_lambda == TINY.gp_lambda and objective.drift == TINY.drift


def tf1_feature_maps(resolution: int, fmap_base: int = 8192, fmap_max: int = 512) -> int:
    """The official nf(stage) = min(fmap_base / 2**stage, fmap_max), stage = log2(resolution) - 1."""
    stage = resolution.bit_length() - 2
    return min(int(fmap_base / 2.0**stage), fmap_max)


@pytest.mark.parametrize("resolution, maps", [(4, 512), (8, 512), (16, 512), (32, 512), (64, 256), (128, 128),
                                              (256, 64)])
def test_paper_feature_maps_follow_the_tf1_formula_at_every_resolution(resolution, maps):
    from synthmri.config import load_config

    from . import REPO

    section = load_config(REPO / "configs" / "paper.yaml").generator.progan
    assert tf1_feature_maps(resolution) == maps
    assert channels_at(resolution, section.channel_base, section.channel_max) == maps
    with torch.device("meta"):
        args = progan.model_args_from(section, 256, 5)
        g, d = progan.build_generator(args), progan.build_discriminator(args)
    level = resolution.bit_length() - 3
    assert g.to_rgb[level].weight.shape[1] == d.from_rgb[level].weight.shape[0] == maps
    if level == 0:
        assert g.dense.weight.shape[0] == 16 * maps and d.dense.weight.shape[0] == maps
    else:
        assert g.blocks[level - 1].conv1.weight.shape[0] == maps
        assert d.blocks[level - 1].conv0.weight.shape[0] == maps


def test_paper_schedule_is_the_official_one_gpu_preset():
    from synthmri.config import ProGANConfig, load_config

    from . import REPO

    section = load_config(REPO / "configs" / "paper.yaml").generator.progan
    # -preset-v2-1gpu (Table 9: batch 128 - 8, 12000 kimg on one V100).
    assert section.minibatch_dict == {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4}
    assert (section.kimg, section.lr, section.discriminator_lr, section.initial_resolution) == (12000, 1e-3, 1e-3, 4)
    assert section.lr_dict == section.discriminator_lr_dict == {1024: 1.5e-3}  # nothing up to 256x256
    assert (section.fade_kimg, section.stable_kimg, section.ema_decay, section.batch_gpu) == (600, 600, 0.999, 0)
    assert ProGANConfig() == section and section.channel_base == 16384  # the defaults are the paper's
