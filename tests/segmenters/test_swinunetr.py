"""The 2D Swin UNETR and its training recipe (AdamW, warm-up, linear decay, Dice + CE)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from synthmri.config import SwinUNETRConfig
from synthmri.segmenters.swinunetr import (
    IN_CHANNELS,
    OUT_CLASSES,
    build_swinunetr,
    loss,
    model_args,
    optimizer,
    parameter_groups,
    settings,
)

SMALL = {"feature_size": 12, "depths": [1, 1, 1, 1], "window_size": 4, "drop_path": 0.0}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_swinunetr(**SMALL)


def test_swin_shapes_in_train_and_eval_mode(tiny_config):
    section = settings(tiny_config.segmenter)
    assert section is tiny_config.segmenter.swinunetr
    args = model_args(section)
    # Plain JSON values (lists, not tuples): they go into checkpoints and come back intact.
    assert json.loads(json.dumps(args)) == args and isinstance(args["depths"], list)
    model = build_swinunetr(**json.loads(json.dumps(args)))
    # The tiny slices (32 px) are too small for Swin UNETR: the bottleneck would be 1x1.
    assert tiny_config.data.size == 32
    for size in (64, 96):
        x = torch.randn(2, IN_CHANNELS, size, size)
        model.train()
        assert model(x).shape == (2, OUT_CLASSES, size, size)  # no deep-supervision stack
        model.eval()
        with torch.no_grad():
            assert model(x).shape == (2, OUT_CLASSES, size, size)
    # The first layer (the 2x2 patch embedding) reads the 4 MR contrasts.
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first is model.swinViT.patch_embed.proj
    assert first.in_channels == IN_CHANNELS and first.out_channels == section.feature_size
    assert first.kernel_size == first.stride == (2, 2)
    assert model.encoder1.layer.conv1.conv.in_channels == IN_CHANNELS
    assert model.out.conv.conv.out_channels == OUT_CLASSES


def test_parameter_count_grows_with_feature_size():
    small, wide = build_swinunetr(**SMALL), build_swinunetr(**{**SMALL, "feature_size": 24})
    assert 3 * n_params(small) < n_params(wide) < 5 * n_params(small)  # widths double: ~4x the weights
    # State-dict keys are SwinUNETR's own.
    assert any(k.startswith("swinViT.layers4.0.blocks.0.attn") for k in small.state_dict())


def test_swin_rejects_impossible_settings_naming_the_value(small_model):
    with pytest.raises(ValueError, match="multiple of 12, got 18"):
        build_swinunetr(**{**SMALL, "feature_size": 18})
    with pytest.raises(ValueError, match=r"depths must name 4 stages.*got \[1, 1, 1\]"):
        build_swinunetr(**{**SMALL, "depths": [1, 1, 1], "num_heads": [3, 6, 12]})
    with pytest.raises(ValueError, match=r"num_heads must name 4 stages.*got \[3, 6, 12\]"):
        build_swinunetr(**{**SMALL, "num_heads": [3, 6, 12]})
    with pytest.raises(ValueError, match=r"num_heads \[5, 6, 12, 24\] must divide the stage widths \[12, 24, 48, 96\]"):
        build_swinunetr(**{**SMALL, "num_heads": [5, 6, 12, 24]})
    with pytest.raises(ValueError, match="window_size must be at least 1, got 0"):
        build_swinunetr(**{**SMALL, "window_size": 0})
    with pytest.raises(ValueError, match="drop_path must be in"):
        build_swinunetr(**{**SMALL, "drop_path": 1.5})
    with pytest.raises(ValueError, match="multiples of 32 and at least 64, got 48x48"):
        small_model(torch.randn(1, IN_CHANNELS, 48, 48))
    with pytest.raises(ValueError, match="got 32x32"):
        small_model(torch.randn(1, IN_CHANNELS, 32, 32))
    with pytest.raises(ValueError, match="got 64x80"):
        small_model(torch.randn(1, IN_CHANNELS, 64, 80))


def test_loss_has_gradients_and_prefers_a_perfect_prediction():
    torch.manual_seed(0)
    fn = loss(SwinUNETRConfig())
    target = torch.randint(0, OUT_CLASSES, (2, 1, 16, 16))
    logits = torch.randn(2, OUT_CLASSES, 16, 16, requires_grad=True)
    value = fn(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0
    perfect = F.one_hot(target[:, 0], OUT_CLASSES).permute(0, 3, 1, 2).float() * 20
    assert fn(perfect, target) < fn(torch.randn(2, OUT_CLASSES, 16, 16), target)


def test_loss_is_cross_entropy_plus_batch_dice_of_the_tumour_classes():
    """Matches a reference written out by hand: background left out of the Dice, batch Dice."""
    torch.manual_seed(0)
    target = torch.zeros(3, 1, 16, 16, dtype=torch.int64)
    target[0, 0, 2:8, 2:8] = 1
    target[1, 0, 4:12, 4:12] = 2
    target[1, 0, 6:9, 6:9] = 3  # the third slice is all background
    logits = torch.randn(3, OUT_CLASSES, 16, 16)
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target[:, 0], OUT_CLASSES).permute(0, 3, 1, 2).float()

    def dice_loss(channels: slice) -> torch.Tensor:
        p, y = probs[:, channels], onehot[:, channels]
        inter, sums = (p * y).sum(dim=(0, 2, 3)), (p + y).sum(dim=(0, 2, 3))  # over the batch
        return (1 - (2 * inter + 1e-5) / (sums + 1e-5)).mean()

    ce = F.cross_entropy(logits, target[:, 0])
    value = loss(SwinUNETRConfig())(logits, target)
    assert value.item() == pytest.approx((ce + dice_loss(slice(1, None))).item(), rel=1e-5)
    # Not the Dice with background.
    assert value.item() != pytest.approx((ce + dice_loss(slice(None))).item(), rel=1e-3)
    with_background = DiceCELoss(include_background=True, to_onehot_y=True, softmax=True, batch=True)
    assert with_background(logits, target).item() == pytest.approx((ce + dice_loss(slice(None))).item(), rel=1e-5)


def rates(optimiser, schedule, steps: int) -> list[float]:
    """The learning rate used by each of `steps` optimiser steps, then the one after the last."""
    out = []
    for _ in range(steps):
        out.append(schedule.get_last_lr()[0])
        optimiser.step()
        schedule.step()
    return out + [schedule.get_last_lr()[0]]


def test_optimizer_is_adamw_with_linear_warmup_and_linear_decay(small_model):
    section = dataclasses.replace(SwinUNETRConfig(), lr=1e-3, weight_decay=0.05, warmup_steps=4)
    optimiser, schedule = optimizer(small_model, section, total_steps=20)
    assert isinstance(optimiser, torch.optim.AdamW)
    lrs = rates(optimiser, schedule, 20)
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(section.lr / 2)  # warm-up from 0
    assert lrs[4] == pytest.approx(section.lr)  # the configured rate at the end of warm-up
    assert lrs[12] == pytest.approx(section.lr / 2)  # halfway through the 16 decay steps
    assert lrs[19] == pytest.approx(section.lr / 16) and lrs[20] == 0.0
    assert max(lrs) == pytest.approx(section.lr)


def test_optimizer_clamps_a_warmup_longer_than_the_run(small_model):
    section = dataclasses.replace(SwinUNETRConfig(), lr=1e-3, warmup_steps=1500)
    lrs = rates(*optimizer(small_model, section, total_steps=30), 30)
    assert lrs[0] == 0.0 and lrs[3] == pytest.approx(section.lr)  # a tenth of the run
    assert lrs[30] == 0.0
    lrs = rates(*optimizer(small_model, section, total_steps=4), 4)
    assert lrs == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0])  # under 10 steps: no warm-up
    with pytest.raises(ValueError, match="total_steps must be positive, got 0"):
        optimizer(small_model, section, total_steps=0)


def test_weight_decay_spares_norms_biases_and_position_bias_tables(small_model):
    section = dataclasses.replace(SwinUNETRConfig(), weight_decay=0.05)
    optimiser, _ = optimizer(small_model, section, total_steps=10)
    decay, no_decay = optimiser.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert parameter_groups(small_model, 0.05)[0]["weight_decay"] == 0.05
    ids = {"decay": {id(p) for p in decay["params"]}, "none": {id(p) for p in no_decay["params"]}}
    names = dict(small_model.named_parameters())
    assert not ids["decay"] & ids["none"] and len(ids["decay"]) + len(ids["none"]) == len(names)
    tables = [n for n in names if n.endswith("relative_position_bias_table")]
    norms = [n for n, m in small_model.named_modules() if isinstance(m, torch.nn.LayerNorm) and m.weight is not None]
    assert len(tables) == 4 and norms
    for name, param in names.items():
        spared = name in tables or name.endswith(".bias") or any(name.startswith(n + ".") for n in norms)
        assert (id(param) in ids["none"]) == spared, name
        if not spared:
            assert param.ndim >= 2, name  # linear and convolution weights
    assert id(names["swinViT.patch_embed.proj.weight"]) in ids["decay"]


def test_a_few_adamw_steps_reduce_the_loss():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        target = torch.zeros(2, 1, 64, 64, dtype=torch.int64)
        target[:, :, 8:40, 8:40] = 2  # oedema with a necrotic core and an enhancing rim
        target[:, :, 16:32, 16:32] = 3
        target[:, :, 20:28, 20:28] = 1
        target[1] = target[1].flip(-1)
        images = torch.randn(2, IN_CHANNELS, 64, 64) * 0.5
        images[:, 1:] += F.one_hot(target[:, 0], OUT_CLASSES).permute(0, 3, 1, 2)[:, 1:].float()
        model = build_swinunetr(**SMALL).train()
        fn = loss(SwinUNETRConfig())
        optimiser = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-3)
        values = []
        for _ in range(30):
            optimiser.zero_grad()
            value = fn(model(images), target)
            value.backward()
            optimiser.step()
            values.append(value.item())
        assert values[-1] < 0.7 * values[0], values
    finally:
        torch.set_num_threads(threads)
