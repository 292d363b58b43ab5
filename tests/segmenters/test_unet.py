"""The authors' U-Net (synthmri.segmenters.unet) and its training recipe."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from synthmri.config import SegmenterConfig, UNetConfig
from synthmri.segmenters.unet import (FEATURE_LAYER, IN_CHANNELS, OUT_CLASSES, ConvBlock, build_unet,
                                      deep_supervision_weights, loss, minimal_input_size, model_args,
                                      optimizer, settings)


@pytest.fixture(scope="module")
def paper_unet() -> nn.Module:
    """The paper's U-Net: depth 6, 64 filters doubling to 2048, 4 channels in, 4 classes."""
    torch.manual_seed(0)
    return build_unet(in_channels=4, out_channels=4, depth=6, base_filters=64)


def test_paper_unet_has_the_authors_parameter_count(paper_unet):
    # Instantiating the authors' UNet(in_channels=4, n_classes=4) (depth 6, wf 6) gives this figure.
    assert sum(p.numel() for p in paper_unet.parameters()) == 116_014_272
    widths = [m.out_channels for m in paper_unet.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert max(widths) == 2048 and widths[0] == 64


def test_paper_unet_maps_a_256_slice_to_256_logits(paper_unet):
    torch.set_num_threads(1)
    paper_unet.eval()
    # The network pads 256 to 636 internally (the authors' input size for a 256 output).
    assert paper_unet.pad(torch.zeros(1, 4, 256, 256)).shape == (1, 4, 636, 636)
    with torch.no_grad():
        assert paper_unet(torch.randn(1, 4, 256, 256)).shape == (1, OUT_CLASSES, 256, 256)


def test_minimal_input_size_matches_the_authors_formula():
    # Their get_minimal_input_size: depth 5 -> 188 + 16 * ceil((out - 4) / 16), depth 6 -> 380 + 32 * ceil(...).
    assert minimal_input_size(256, 6) == 636
    assert minimal_input_size(240, 6) == 380 + 32 * 8
    assert minimal_input_size(256, 5) == 188 + 16 * 16
    assert minimal_input_size(4, 6) == 380 and minimal_input_size(1, 6) == 380  # the smallest valid input


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (33, 29)])
def test_small_unet_shapes_in_train_and_eval_mode(size):
    model = build_unet(depth=3, base_filters=4)
    x = torch.randn(2, IN_CHANNELS, *size)
    model.train()
    assert model(x).shape == (2, 3 - 1, OUT_CLASSES, *size)  # one output per decoder level
    model.eval()
    with torch.no_grad():
        full = model(x)
    assert full.shape == (2, OUT_CLASSES, *size)
    model.train()
    with torch.no_grad():  # eval mode returns the stack's full-resolution output
        torch.testing.assert_close(model(x)[:, 0], full)


def test_padding_takes_each_channels_minimum_and_centres_the_slice():
    model = build_unet(depth=3, base_filters=4)
    x = torch.rand(1, IN_CHANNELS, 32, 32) + torch.arange(IN_CHANNELS).view(1, -1, 1, 1)
    padded = model.pad(x)
    side = minimal_input_size(32, 3)
    top = (side - 32) // 2
    assert padded.shape == (1, IN_CHANNELS, side, side)
    torch.testing.assert_close(padded[..., top:top + 32, top:top + 32], x)
    torch.testing.assert_close(padded[..., 0, 0], x.amin(dim=(-2, -1)))


def test_every_conv_is_valid_and_followed_by_leaky_relu_then_affine_instance_norm():
    model = build_unet(depth=4, base_filters=4, negative_slope=0.01)
    blocks = [m for m in model.modules() if isinstance(m, ConvBlock)]
    assert len(blocks) == 2 * 4 - 1  # encoder, bottleneck, decoder
    for block in blocks:
        layers = list(block.children())
        assert [type(m) for m in layers] == [nn.Conv2d, nn.LeakyReLU, nn.InstanceNorm2d] * 2
        for conv, act, norm in (layers[:3], layers[3:]):
            assert conv.kernel_size == (3, 3) and conv.padding == (0, 0) and conv.bias is not None
            assert act.negative_slope == 0.01
            assert norm.affine and norm.num_features == conv.out_channels
    # Up: bilinear x2 then a 1x1 convolution with bias; heads: bias-free 1x1 convolutions.
    for up in model.up:
        assert up.upsample.mode == "bilinear" and up.upsample.scale_factor == 2
        assert up.reduce.kernel_size == (1, 1) and up.reduce.bias is not None
    assert all(h.kernel_size == (1, 1) and h.bias is None for h in model.heads)


def test_deep_supervision_weights_are_the_authors():
    # lightning_module.py, SegmentationModule.__init__: [1 / 2**i for i in range(depth - 1)], the last
    # set to 0.0, then divided by their sum.
    assert deep_supervision_weights(6) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    assert deep_supervision_weights(3) == pytest.approx([1.0, 0.0])
    assert deep_supervision_weights(2) == [1.0]  # a single output cannot be weighted 0


def test_loss_weights_the_levels_and_skips_the_zero_weighted_one():
    fn = loss(UNetConfig(depth=4))
    target = torch.randint(0, OUT_CLASSES, (2, 1, 16, 16))
    stack = torch.randn(2, 3, OUT_CLASSES, 16, 16, requires_grad=True)
    value = fn(stack, target)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert stack.grad[:, :2].abs().sum() > 0 and stack.grad[:, 2].abs().sum() == 0
    # Level by level: the weighted sum of Dice + CE on each output.
    parts = [fn(stack[:, i].detach(), target) for i in range(3)]
    expected = sum(w * p for w, p in zip(deep_supervision_weights(4), parts))
    torch.testing.assert_close(value.detach(), expected)
    perfect = torch.nn.functional.one_hot(target[:, 0], OUT_CLASSES).permute(0, 3, 1, 2).float() * 20
    assert fn(perfect, target) < fn(torch.randn(2, OUT_CLASSES, 16, 16), target)
    with pytest.raises(ValueError, match="expected 3 deep-supervision outputs, got 2"):
        fn(stack[:, :2], target)


def test_settings_model_args_and_feature_layer():
    section = UNetConfig(depth=3, base_filters=4)
    assert settings(SegmenterConfig(unet=section)) is section
    args = model_args(section)
    assert json.loads(json.dumps(args)) == args
    model = build_unet(**args).eval()
    layer = model.get_submodule(FEATURE_LAYER)
    assert isinstance(layer, nn.LeakyReLU) and layer is model.bottleneck.act2
    seen = []
    layer.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.randn(1, IN_CHANNELS, 32, 32))
    assert seen[0][1] == 4 * 2 ** (3 - 1)  # the bottleneck's width


def test_optimizer_is_the_authors_nesterov_sgd_with_poly_decay():
    section = UNetConfig()
    model = build_unet(depth=2, base_filters=2)
    sgd, schedule = optimizer(model, section, total_steps=4)
    group = sgd.param_groups[0]
    assert isinstance(sgd, torch.optim.SGD) and group["nesterov"]
    assert (group["momentum"], group["weight_decay"], group["lr"]) == (0.99, 3e-5, section.lr)
    sgd.step()
    schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(section.lr * 0.75**0.9)


def test_training_smoke_lowers_the_loss():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    section = dataclasses.replace(UNetConfig(), depth=3, base_filters=8)
    model = build_unet(**model_args(section)).train()
    fn = loss(section)
    sgd, schedule = optimizer(model, section, total_steps=30)
    # A bright square on noise, labelled 1: learnable from the intensities alone.
    images = torch.randn(4, IN_CHANNELS, 32, 32) * 0.3
    target = torch.zeros(4, 1, 32, 32, dtype=torch.int64)
    for i, (r, c) in enumerate([(4, 6), (12, 14), (18, 3), (9, 20)]):
        images[i, :, r:r + 10, c:c + 10] += 2.0
        target[i, :, r:r + 10, c:c + 10] = 1
    losses = []
    for _ in range(30):
        value = fn(model(images), target)
        sgd.zero_grad()
        value.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        sgd.step()
        schedule.step()
        losses.append(value.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_impossible_settings_and_sizes_raise_naming_the_value():
    with pytest.raises(ValueError, match="depth must be at least 2, got 1"):
        build_unet(depth=1)
    with pytest.raises(ValueError, match="base_filters must be at least 1, got 0"):
        build_unet(base_filters=0)
    with pytest.raises(ValueError, match="side must be at least 1 pixel, got 0"):
        minimal_input_size(0, 6)
    model = build_unet(depth=3, base_filters=4)
    with pytest.raises(ValueError, match="at least 1 pixel, got 0"):
        model(torch.randn(1, IN_CHANNELS, 0, 32))
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\], got \[1, 3, 32, 32\]"):
        model(torch.randn(1, 3, 32, 32))
