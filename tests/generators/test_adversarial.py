"""Shared GAN machinery: growth schedule, augmentation, penalties, lazy Adam, objectives."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from synthmri.config import ConfigError
from synthmri.data.labels import LABEL_VALUES
from synthmri.generators.adversarial import (
    GrowthSchedule,
    Objective,
    augment,
    gradient_penalty,
    r1_penalty,
)
from synthmri.generators.adversarial_trainer import _adam
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
    # Refused when the config loads (its validation) or at the latest when the trainer is built.
    with pytest.raises(ConfigError, match=rf"generator\.stylegan2\.{key}"):
        cfg = load_config(None, {"data.size": 16, "generator.stylegan2.channel_base": 64,
                                 "generator.stylegan2.channel_max": 8, f"generator.stylegan2.{key}": value})
        args = family.model_args(cfg, 16)
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


# --- growth, per-resolution batch and learning rate, Adam reset ---------------------------------


def test_growth_can_start_above_4x4_and_reports_the_tf1_level_of_detail():
    schedule = GrowthSchedule(max_level=3, fade_kimg=2.0, stable_kimg=1.0, start_level=1)  # 8x8 first
    assert schedule.at(0) == (1, 1.0) and schedule.at(999) == (1, 1.0)
    assert schedule.at(1000) == (2, 0.0) and schedule.at(2000) == (2, 0.5) and schedule.at(4000) == (3, 0.0)
    assert schedule.at(10**9) == (3, 1.0) and schedule.full_kimg == pytest.approx(6.0)
    assert schedule.lod(0) == 2.0 and schedule.lod(2000) == pytest.approx(1.5) and schedule.lod(10**9) == 0.0
    assert schedule.next_change(0) == 1000 and schedule.next_change(1000) == 4000
    assert schedule.next_change(4000) is None
    assert GrowthSchedule(max_level=2, fade_kimg=1.0, stable_kimg=1.0, start_level=5).at(0) == (2, 1.0)


class Dummy(nn.Module):
    """A stand-in network for schedule-only checks."""

    z_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


def trainer_for(settings, schedule, objective=None):
    from synthmri.generators.adversarial import AdversarialTrainer
    from synthmri.generators.distributed import Runtime

    return AdversarialTrainer(Dummy(), Dummy(), objective or Objective(loss="wgan-gp"), settings, schedule, Runtime())


def brute_force_iterations(trainer, kimg: float) -> tuple[int, list[int]]:
    images, steps, batches = 0, 0, []
    while images < round(kimg * 1000):
        batch = trainer.batch_at(images)
        batches.append(batch)
        images, steps = images + batch, steps + 1
    return steps, batches


def test_progan_batch_follows_the_resolution_and_sets_the_iterations():
    from synthmri.config import ProGANConfig, load_config

    from . import REPO

    paper = load_config(REPO / "configs" / "paper.yaml")
    table = paper.generator.progan.minibatch_dict
    # The paper's schedule, shortened 100x (same shape): 4x4 at 128 ... 256x256 at 8.
    settings = dataclasses.replace(paper.generator.progan, kimg=120.0, fade_kimg=6.0, stable_kimg=6.0)
    trainer = trainer_for(settings, GrowthSchedule(max_level=6, fade_kimg=6.0, stable_kimg=6.0))
    steps, batches = brute_force_iterations(trainer, settings.kimg)
    assert trainer.planned_iterations == steps
    assert batches[0] == 128 and batches[-1] == 8
    assert sorted(set(batches), reverse=True) == sorted({b for r, b in table.items() if r <= 256}, reverse=True)
    assert [trainer.batch_at(int(kimg * 1000)) for kimg in (0, 6, 17.9, 18, 30, 42, 54, 66, 119)] == \
        [128, 128, 128, 128, 64, 32, 16, 8, 8]
    assert trainer.next_batch_size() == 128
    # Without a table: batch_size throughout, and the section's own iteration count.
    plain = trainer_for(dataclasses.replace(settings, minibatch_dict={}, batch_size=16),
                        GrowthSchedule(max_level=6, fade_kimg=6.0, stable_kimg=6.0))
    assert plain.next_batch_size() == 16 and plain.planned_iterations == -(-120_000 // 16)
    # Edges that do not fall on a batch boundary: every step starts before or after the change.
    odd = trainer_for(ProGANConfig(kimg=1.0, minibatch_dict={4: 7, 8: 5, 16: 3}, batch_size=1),
                      GrowthSchedule(max_level=2, fade_kimg=0.1333, stable_kimg=0.1))
    assert odd.planned_iterations == brute_force_iterations(odd, 1.0)[0]


def tiny_progressive(model: str, size: int = 16, **settings):
    from synthmri.config import load_config
    from synthmri.generators import get_family

    widths = {"channel_base": 64, "channel_max": 8, "z_dim": 8}
    if model == "stylegan1":
        widths.update(w_dim=8, mapping_layers=1)
    section = {f"generator.{model}.{k}": v for k, v in {**widths, **settings}.items()}
    cfg = load_config(None, {"data.size": size, **section})
    family = get_family(model)
    args = family.model_args(cfg, size)
    torch.manual_seed(0)
    network = family.build(args)
    return family.trainer(network, args, cfg)


def test_progan_resets_adam_whenever_new_layers_start_or_finish_fading_in():
    from . import phantom_slices

    trainer = tiny_progressive("progan", minibatch_dict={4: 8, 8: 4, 16: 2}, stable_kimg=0.016, fade_kimg=0.016)
    data = torch.from_numpy(phantom_slices(8, size=16))
    rng = torch.Generator().manual_seed(0)
    g_param, d_param = trainer.generator.dense.weight, trainer.discriminator.out.weight  # used at every level
    seen, counts, keys = [], [], []
    for _ in range(16):
        lod = trainer.schedule.lod(trainer.images_seen)
        keys.append((math.floor(lod), math.ceil(lod)))  # the official test: floor or ceil of lod changed
        seen.append(trainer.next_batch_size())
        trainer.step(data[:seen[-1]], rng)
        counts.append(int(trainer.g_optimizer.state[g_param]["step"]))
        assert int(trainer.d_optimizer.state[d_param]["step"]) == counts[-1]
    assert seen[:2] == [8, 8] and 4 in seen and seen[-1] == 2  # the batch follows the resolution
    changes = [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    assert len(changes) >= 3  # into 8x8's fade-in, its stable phase, 16x16's fade-in...
    for i in range(1, len(counts)):  # Adam's step count restarts at 1 exactly there
        assert counts[i] == (1 if i in changes else counts[i - 1] + 1), (i, keys, counts)
    trainer.reset_optimizers()  # the moments are cleared, not just scaled
    assert len(trainer.g_optimizer.state) == len(trainer.d_optimizer.state) == 0


def test_stylegan1_grows_from_8x8_with_the_official_learning_rate_by_resolution():
    trainer = tiny_progressive("stylegan1", size=256, stable_kimg=1.0, fade_kimg=1.0)
    assert trainer.schedule.at(0) == (1, 1.0)  # lod_initial_resolution = 8
    assert trainer.generator.level == 6
    rates = {}
    for level in range(1, 7):
        trainer.images_seen = int((1.0 + (level - 2) * 2.0 + 0.5) * 1000) if level > 1 else 0  # mid fade-in
        trainer._follow_schedule()
        assert trainer.generator.level == trainer.discriminator.level == level
        rates[4 * 2**level] = (trainer.g_optimizer.param_groups[0]["lr"], trainer.d_optimizer.param_groups[0]["lr"])
    assert rates == {8: (1e-3, 1e-3), 16: (1e-3, 1e-3), 32: (1e-3, 1e-3), 64: (1e-3, 1e-3),
                     128: (1.5e-3, 1.5e-3), 256: (2e-3, 2e-3)}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("batch_gpu", 3, r"generator\.progan\.batch_gpu \(3\) must divide the per-process batch 8"),
    ("batch_gpu", -1, r"generator\.progan\.batch_gpu must be 0"),
    ("minibatch_dict", {6: 4}, r"generator\.progan\.minibatch_dict: keys must be resolutions"),
    ("lr_dict", {8: 0.0}, r"generator\.progan\.lr_dict"),
    ("initial_resolution", 12, r"generator\.progan\.initial_resolution must be a power of two"),
])
def test_bad_batch_and_schedule_settings_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_progressive("progan", **{"minibatch_dict": {4: 16, 8: 8, 16: 8}, key: value})


# --- micro-batches with gradient accumulation --------------------------------------------------


class TinyGenerator(nn.Module):
    """z -> 5 x 8 x 8 images without noise or batch statistics."""

    z_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.LeakyReLU(0.2), nn.Linear(32, 5 * 64))

    def forward(self, z, truncation_psi=1.0, rng=None):
        return torch.tanh(self.net(z)).reshape(-1, 5, 8, 8)


class TinyStyleGenerator(nn.Module):
    """The StyleGAN path (mapping, styles, w_avg) without noise or batch statistics."""

    z_dim = 8

    def __init__(self) -> None:
        super().__init__()
        from synthmri.generators.layers import MappingNetwork

        self.mapping = MappingNetwork(8, 8, num_ws=2, layers=2)
        self.fc = nn.Linear(16, 5 * 64)

    def synthesis(self, ws, rng=None):
        return torch.tanh(self.fc(ws.flatten(1))).reshape(-1, 5, 8, 8)

    def forward(self, z, truncation_psi=1.0, rng=None):
        return self.synthesis(self.mapping(z, truncation_psi), rng)


def accumulation_pair(generator_cls, objective, batch_gpu):
    import copy

    from synthmri.config import StyleGAN2Config
    from synthmri.generators.adversarial import AdversarialTrainer
    from synthmri.generators.distributed import Runtime
    from synthmri.generators.stylegan2 import Discriminator

    torch.manual_seed(0)
    g = generator_cls()
    d = Discriminator(8, 5, channel_base=64, channel_max=8, mbstd_group_size=1)  # no batch coupling
    settings = StyleGAN2Config(batch_size=8, lr=1e-3, discriminator_lr=1e-3)
    whole = AdversarialTrainer(g, d, objective, settings, None, Runtime())
    split = AdversarialTrainer(copy.deepcopy(g), copy.deepcopy(d), objective,
                               dataclasses.replace(settings, batch_gpu=batch_gpu), None, Runtime())
    return whole, split


@pytest.mark.parametrize(("generator_cls", "objective"), [
    (TinyStyleGenerator, Objective(loss="non-saturating", r1_gamma=1.0, r1_interval=2, generator_first=True)),
    (TinyGenerator, Objective(loss="non-saturating", r1_gamma=1.0, r1_interval=1)),
    (TinyGenerator, Objective(loss="wgan-gp", gp_lambda=10.0, drift=1e-3)),
], ids=["lazy-r1", "r1-every-step", "wgan-gp"])
def test_accumulated_micro_batches_equal_one_full_batch_step(generator_cls, objective):
    whole, split = accumulation_pair(generator_cls, objective, batch_gpu=2)
    sizes = []
    split.discriminator.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    batches = torch.randint(0, 256, (3, 8, 5, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    rng_whole, rng_split = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for batch in batches:  # three steps: with r1_interval 2 the Dreg phase runs on steps 0 and 2
        a, b = whole.step(batch, rng_whole), split.step(batch, rng_split)
        assert a.keys() == b.keys()
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-6), name
    assert set(sizes) == {2}  # every discriminator pass saw one micro-batch of 2
    assert torch.equal(rng_whole.get_state(), rng_split.get_state())
    for net_a, net_b in ((whole.generator, split.generator), (whole.discriminator, split.discriminator)):
        for (name, p), q in zip(net_a.named_parameters(), net_b.parameters()):
            assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), name
    if objective.r1_interval > 1:
        assert [phase.name for phase in whole.phases] == ["Gmain", "Dmain", "Dreg"]
        assert "r1_penalty" not in whole.step(batches[0], rng_whole)  # step 3: Dreg rests
        assert "r1_penalty" in whole.step(batches[0], rng_whole)  # step 4: Dreg again


def test_official_phase_order_and_lazy_phases():
    from synthmri.generators.adversarial import phases_of

    assert [p.name for p in phases_of("G", True, 4)] == ["Gmain", "Greg"]
    assert [(p.main, p.reg, p.interval) for p in phases_of("D", True, 16)] == [(True, False, 1), (False, True, 16)]
    assert [p.name for p in phases_of("D", True, 1)] == ["Dboth"]
    assert [p.name for p in phases_of("G", False, 4)] == ["Gmain"]


@pytest.mark.parametrize("model", ["stylegan2", "stylegan1", "progan"])
def test_micro_batched_cpu_smoke_losses_move_the_right_way(model):
    """A few steps in rounds of 4 of 8 on phantom slices: D learns to tell reals from fakes
    first, so its loss falls from the start while the generator's rises."""
    from synthmri.config import load_config
    from synthmri.generators import get_family

    from . import phantom_slices

    section = {"channel_base": 256, "channel_max": 32, "z_dim": 32, "batch_size": 8, "batch_gpu": 4}
    if model != "progan":
        section.update(w_dim=32, mapping_layers=2)
    if model == "stylegan2":
        section.update(r1_interval=4, pl_interval=2)
    else:
        section.update(minibatch_dict={}, initial_resolution=16)
    cfg = load_config(None, {"data.size": 16, **{f"generator.{model}.{k}": v for k, v in section.items()}})
    family = get_family(model)
    args = family.model_args(cfg, 16)
    torch.manual_seed(0)
    trainer = family.trainer(family.build(args), args, cfg)
    data = torch.from_numpy(phantom_slices(64, size=16))
    rng = torch.Generator().manual_seed(0)
    history = []
    for _ in range(20):
        losses = trainer.step(data[torch.randint(64, (8,), generator=rng)], rng)
        assert all(math.isfinite(v) for v in losses.values())
        history.append((losses["loss_d"], losses["loss_g"]))
    first, last = history[0], [sum(v) / 5 for v in zip(*history[-5:])]
    assert last[0] < first[0] and last[1] > first[1], history
    if model != "progan":
        assert last[0] < math.log(4)  # better than chance at telling reals from fakes
