"""The U-Net, its training recipe and the architecture registry."""

from __future__ import annotations

import pytest
import torch

from synthmri.config import ConfigError
from synthmri.segmenters import ARCHITECTURES, get_architecture
from synthmri.segmenters.nnunet import IN_CHANNELS, OUT_CLASSES, deep_supervision_weights


def test_registry_names_every_architecture_and_rejects_unknown_names():
    from synthmri.config import SEGMENTER_ARCHS

    assert tuple(ARCHITECTURES) == SEGMENTER_ARCHS  # the config validates against the same list
    assert get_architecture("nnunet") is ARCHITECTURES["nnunet"]
    with pytest.raises(ConfigError, match="vnet.*known: nnunet, swin, swinunetr, unet"):
        get_architecture("vnet")


def test_unet_shapes_in_train_and_eval_mode(tiny_config):
    arch = get_architecture("nnunet")
    section = arch.settings(tiny_config.segmenter)
    args = arch.model_args(section)
    model = arch.build(**args)
    size = tiny_config.data.size
    x = torch.randn(3, IN_CHANNELS, size, size)
    heads = section.deep_supervision_heads
    assert heads >= 1
    model.train()
    out = model(x)
    assert out.shape == (3, 1 + heads, OUT_CLASSES, size, size)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (3, OUT_CLASSES, size, size)
    # The first convolution reads the 4 MR contrasts; one level per configured filter count.
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == IN_CHANNELS and first.out_channels == section.filters[0]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    acts = [m for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert norms and acts and all(a.negative_slope == section.negative_slope for a in acts)


def test_unet_rejects_impossible_settings():
    build = get_architecture("nnunet").build
    with pytest.raises(ValueError, match="at least 3 levels"):
        build(filters=[8, 16])
    with pytest.raises(ValueError, match="deep_supervision_heads must be in 0..2"):
        build(filters=[8, 16, 32, 64], deep_supervision_heads=3)
    model = build(filters=[8, 16, 32], deep_supervision_heads=0).train()
    assert model(torch.randn(1, 4, 16, 16)).shape == (1, 4, 16, 16)


def test_deep_supervision_weights_halve_and_sum_to_one():
    weights = deep_supervision_weights(3)
    assert weights == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_loss_takes_the_deep_supervision_stack_and_plain_logits(tiny_config):
    arch = get_architecture("nnunet")
    section = arch.settings(tiny_config.segmenter)
    loss = arch.loss(section)
    target = torch.randint(0, 4, (2, 1, 16, 16))
    stack = torch.randn(2, 1 + section.deep_supervision_heads, 4, 16, 16, requires_grad=True)
    value = loss(stack, target)
    value.backward()
    assert torch.isfinite(value) and stack.grad.abs().sum() > 0
    # A perfect prediction scores lower than a random one.
    perfect = torch.nn.functional.one_hot(target[:, 0], 4).permute(0, 3, 1, 2).float() * 20
    assert loss(perfect, target) < loss(torch.randn(2, 4, 16, 16), target)


def test_optimizer_is_nesterov_sgd_with_poly_decay(tiny_config):
    arch = get_architecture("nnunet")
    section = arch.settings(tiny_config.segmenter)
    model = arch.build(**arch.model_args(section))
    optimiser, schedule = arch.optimizer(model, section, total_steps=10)
    group = optimiser.param_groups[0]
    assert isinstance(optimiser, torch.optim.SGD) and group["nesterov"]
    assert group["momentum"] == section.momentum and group["weight_decay"] == section.weight_decay
    rates = []
    for _ in range(10):
        rates.append(schedule.get_last_lr()[0])
        optimiser.step()
        schedule.step()
    assert rates[0] == pytest.approx(section.lr)
    assert rates[5] == pytest.approx(section.lr * 0.5**section.poly_power)
    assert schedule.get_last_lr()[0] == 0.0
