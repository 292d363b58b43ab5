"""The StyleGAN 1 family: styles, noise, truncation, growth, fade-in, config errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from synthmri.config import ConfigError, StyleGAN1Config, load_config
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
        # The section's values are checked as the config loads, the image size as the networks are built.
        load_config(None, {f"generator.stylegan1.{key}": value for key, value in override.items()})
        stylegan1.model_args_from(dataclasses.replace(TINY, **override), size, 5)


def test_registry_entry():
    family = stylegan1.FAMILY
    assert (family.name, family.section, family.progressive, family.truncation) == ("stylegan1", "stylegan1",
                                                                                    True, True)
    objective = family.objective(TINY)
    assert objective.loss == "non-saturating" and objective.r1_gamma == TINY.r1_gamma
    assert objective.r1_interval == 1 and objective.style_mixing == TINY.style_mixing


@pytest.mark.parametrize("resolution, maps", [(4, 512), (8, 512), (16, 512), (32, 512), (64, 256), (128, 128),
                                              (256, 64)])
def test_paper_feature_maps_follow_the_tf1_formula_at_every_resolution(resolution, maps):
    from synthmri.config import load_config

    from . import REPO
    from .test_progan import tf1_feature_maps

    section = load_config(REPO / "configs" / "paper.yaml").generator.stylegan1
    assert tf1_feature_maps(resolution) == maps == channels_at(resolution, section.channel_base, section.channel_max)
    with torch.device("meta"):
        args = stylegan1.model_args_from(section, 256, 5)
        g, d = stylegan1.build_generator(args), stylegan1.build_discriminator(args)
    level = resolution.bit_length() - 3
    assert g.to_rgb[level].weight.shape[1] == d.from_rgb[level].weight.shape[0] == maps
    assert g.layers[2 * level + 1].adain.scale.weight.shape[0] == maps


def test_paper_settings_are_the_official_defaults_at_table_9s_batch():
    from synthmri.config import load_config
    from synthmri.generators import get_family

    from . import REPO

    paper = load_config(REPO / "configs" / "paper.yaml")
    section = paper.generator.stylegan1
    assert (section.batch_size, section.kimg, section.r1_gamma, section.initial_resolution) == (16, 25000, 10.0, 8)
    assert (section.lr, section.discriminator_lr) == (1e-3, 1e-3)
    assert section.lr_dict == section.discriminator_lr_dict == {128: 1.5e-3, 256: 2e-3, 512: 3e-3, 1024: 3e-3}
    assert StyleGAN1Config() == section and section.batch_gpu == 8  # the defaults are the paper's
    assert section.truncation_psi == StyleGAN1Config().truncation_psi == 0.7
    # The generator.pt (and so the pyfunc) records psi 0.7 as the default sampling option.
    assert get_family("stylegan1").sampling_options(paper) == {"truncation_psi": 0.7}


def test_truncation_reaches_only_the_first_eight_styles():
    torch.manual_seed(0)
    args = stylegan1.model_args_from(TINY, 64, 5)  # 5 levels: 10 style inputs
    g = stylegan1.build_generator(args)
    assert g.mapping.num_ws == 10 and stylegan1.TRUNCATION_CUTOFF == 8
    g.mapping(torch.randn(64, TINY.z_dim), update_w_avg=True)
    z = latents()
    free = g.mapping(z)
    cut = g.mapping(z, 0.0, truncation_cutoff=stylegan1.TRUNCATION_CUTOFF)
    assert torch.allclose(cut[:, :8], g.mapping.w_avg.expand(BATCH, 8, -1))
    assert torch.equal(cut[:, 8:], free[:, 8:])
    noisy(g)
    assert torch.equal(g(z, 0.5, rng=seeded()),
                       g.synthesis(g.mapping(z, 0.5, truncation_cutoff=8), rng=seeded()))
    assert not torch.equal(g(z, 0.5, rng=seeded()), g.synthesis(g.mapping(z, 0.5), rng=seeded()))


def test_pyfunc_samples_stylegan1_at_psi_0_7_by_default(tmp_path):
    import types

    from synthmri.config import load_config
    from synthmri.generators.checkpoint import GENERATOR_FORMAT, save_checkpoint
    from synthmri.generators.pyfunc import ARTIFACT_KEY, GeneratorModel

    cfg = load_config(None)  # the defaults: the paper's psi 0.7
    family = stylegan1.FAMILY
    torch.manual_seed(0)
    args = stylegan1.model_args_from(TINY, 16, 5)
    g = noisy(stylegan1.build_generator(args))
    with torch.no_grad():
        g.mapping.w_avg.normal_()  # far from the styles, so psi shows
    path = tmp_path / "generator.pt"
    save_checkpoint(path, {"format": GENERATOR_FORMAT, "model": "stylegan1", "model_args": args,
                           "state_dict": g.state_dict(), "image_size": 16, "data_hash": "0" * 64,
                           "sampling": family.sampling_options(cfg), "sample_batch_size": 4})
    model = GeneratorModel()
    model.load_context(types.SimpleNamespace(artifacts={ARTIFACT_KEY: str(path)}))
    default = model.predict(None, {"n": 3, "seed": 1})
    assert default.shape == (3, 5, 16, 16)
    assert np.array_equal(default, model.predict(None, {"n": 3, "seed": 1}))  # seeded: same bytes
    assert np.array_equal(default, model.predict(None, {"n": 3, "seed": 1, "truncation_psi": 0.7}))
    assert not np.array_equal(default, model.predict(None, {"n": 3, "seed": 1, "truncation_psi": 1.0}))
