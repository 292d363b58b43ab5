"""Swin-Base + UPerNet + FCN auxiliary head and the authors' training recipe."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from monai.losses import DiceCELoss

from synthmri.config import SegmenterConfig, SwinConfig
from synthmri.segmenters.swin import (
    FEATURE_LAYER,
    IN_CHANNELS,
    OUT_CLASSES,
    build_swin,
    loss,
    lr_factor,
    model_args,
    optimizer,
    parameter_groups,
    settings,
)

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = {"embed_dim": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 3, 6], "window_size": 4, "drop_path": 0.0,
         "decode_channels": 16, "aux_channels": 8}
PAPER_PARAMETERS = 121_000_000  # the Swin paper's "UperNet Swin-B"


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def paper_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_swin(**model_args(SwinConfig()))


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_swin(**SMALL)


def test_paper_settings_give_swin_base_upernet_of_121m_parameters(paper_model):
    count = n_params(paper_model)
    print(f"Swin-B UPerNet, 4 in / 4 classes: {count:,} parameters")
    assert abs(count - PAPER_PARAMETERS) < 0.03 * PAPER_PARAMETERS
    backbone = paper_model.backbone.swin
    assert backbone.patch_embed.proj.in_channels == IN_CHANNELS
    assert backbone.patch_embed.proj.kernel_size == backbone.patch_embed.proj.stride == (4, 4)
    stages = (backbone.layers1, backbone.layers2, backbone.layers3, backbone.layers4)
    assert [len(stage[0].blocks) for stage in stages] == [2, 2, 18, 2]
    assert backbone.layers4[0].downsample is None  # no merging after the last stage, as in MMSegmentation
    # Stochastic depth rises linearly to 0.3 on the last block.
    assert backbone.layers4[0].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    head = paper_model.decode_head
    assert [m[0].output_size for m in head.psp_modules] == [1, 2, 3, 6]
    assert head.conv_seg.in_channels == 512 and head.conv_seg.out_channels == OUT_CLASSES
    assert head.bottleneck.conv.in_channels == 1024 + 4 * 512 and head.fpn_bottleneck.conv.in_channels == 4 * 512
    assert paper_model.auxiliary_head.convs[0].conv.in_channels == 512
    assert paper_model.auxiliary_head.conv_seg.in_channels == 256


def test_paper_model_maps_a_256_slice_to_full_size_logits(paper_model):
    paper_model.eval()
    with torch.no_grad():
        out = paper_model(torch.rand(1, IN_CHANNELS, 256, 256) * 255)
    assert out.shape == (1, OUT_CLASSES, 256, 256) and torch.isfinite(out).all()


def test_shapes_in_train_and_eval_mode_and_json_args():
    segmenter = SegmenterConfig()
    section = settings(segmenter)
    assert section is segmenter.swin
    args = model_args(dataclasses.replace(section, **SMALL))
    assert json.loads(json.dumps(args)) == args and isinstance(args["depths"], list)
    model = build_swin(**json.loads(json.dumps(args)))
    for size in ((64, 64), (32, 96)):
        x = torch.randn(2, IN_CHANNELS, *size)
        model.train()
        main, aux = model(x)
        assert main.shape == aux.shape == (2, OUT_CLASSES, *size)
        model.eval()
        with torch.no_grad():
            assert model(x).shape == (2, OUT_CLASSES, *size)


def test_stage_features_have_mmsegmentation_strides_and_widths(small_model):
    small_model.eval()
    with torch.no_grad():
        features = small_model.backbone(torch.randn(1, IN_CHANNELS, 64, 64))
    assert [tuple(f.shape[1:]) for f in features] == [(12, 16, 16), (24, 8, 8), (48, 4, 4), (96, 2, 2)]
    # Each stage output goes through its own LayerNorm over the channels.
    assert torch.allclose(features[3].mean(dim=1), torch.zeros(1, 2, 2), atol=1e-5)


def test_feature_layer_is_the_normed_last_stage(small_model):
    layer = small_model.get_submodule(FEATURE_LAYER)
    captured = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
    small_model.eval()
    with torch.no_grad():
        small_model(torch.randn(2, IN_CHANNELS, 64, 64))
    handle.remove()
    assert captured[0].shape == (2, 8 * SMALL["embed_dim"], 2, 2)  # channels first, side / 32


def test_rejects_impossible_settings_and_sizes_naming_the_value(small_model):
    with pytest.raises(ValueError, match=r"depths must name 4 stages.*got \[1, 1, 1\]"):
        build_swin(**{**SMALL, "depths": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"num_heads \[5, 2, 3, 6\] must divide the stage widths \[12, 24, 48, 96\]"):
        build_swin(**{**SMALL, "num_heads": [5, 2, 3, 6]})
    with pytest.raises(ValueError, match="drop_path must be in"):
        build_swin(**{**SMALL, "drop_path": 1.0})
    with pytest.raises(ValueError, match="pool_scales"):
        build_swin(**{**SMALL, "pool_scales": []})
    for shape, size in (((1, 4, 48, 48), "48x48"), ((1, 4, 64, 80), "64x80"), ((1, 4, 16, 16), "16x16")):
        with pytest.raises(ValueError, match=f"multiples of 32, got {size}"):
            small_model(torch.randn(*shape))


def test_loss_is_dice_ce_of_both_heads_with_aux_weight():
    torch.manual_seed(0)
    target = torch.zeros(3, 1, 16, 16, dtype=torch.int64)
    target[0, 0, 2:8, 2:8] = 1
    target[1, 0, 4:12, 4:12] = 2
    target[1, 0, 6:9, 6:9] = 3  # the third slice is all background
    main, aux = torch.randn(3, OUT_CLASSES, 16, 16), torch.randn(3, OUT_CLASSES, 16, 16)
    reference = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, squared_pred=True, batch=False)
    expected = reference(main, target) + 0.4 * reference(aux, target)
    fn = loss(SwinConfig())
    assert fn((main, aux), target) == pytest.approx(expected.item(), rel=1e-6)
    assert fn(main, target) == pytest.approx(reference(main, target).item(), rel=1e-6)  # eval output
    # The squared-prediction Dice per sample and class, written out by hand.
    probs = main.softmax(dim=1)
    onehot = torch.nn.functional.one_hot(target[:, 0], OUT_CLASSES).permute(0, 3, 1, 2).float()
    inter = (probs * onehot)[:, 1:].sum(dim=(2, 3))
    denominator = (probs**2 + onehot**2)[:, 1:].sum(dim=(2, 3))
    dice = (1 - (2 * inter + 1e-5) / (denominator + 1e-5)).mean()
    ce = torch.nn.functional.cross_entropy(main, target[:, 0])
    assert fn(main, target) == pytest.approx((dice + ce).item(), rel=1e-5)


def test_lr_warms_up_from_zero_then_decays_linearly_to_zero(small_model):
    cfg = dataclasses.replace(SwinConfig(), lr=1e-3, warmup_steps=10)
    opt, scheduler = optimizer(small_model, cfg, total_steps=100)
    assert opt.defaults["betas"] == (0.9, 0.999)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    rates.append(opt.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(1e-3 * 1e-6)  # MMCV's warmup_ratio
    # Step 5: poly (1 - 5/100) times the warm-up 1 - (1 - 5/10) * (1 - 1e-6).
    assert rates[5] == pytest.approx(1e-3 * 0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert rates[10] == pytest.approx(1e-3 * 0.9) and rates[55] == pytest.approx(1e-3 * 0.45)
    assert rates[99] == pytest.approx(1e-5) and rates[100] == 0.0
    assert all(b > a for a, b in zip(rates[:10], rates[1:11]))
    assert lr_factor(50, 100, 1500) == pytest.approx(0.5 * (1 - (1 - 50 / 1500) * (1 - 1e-6)))
    # A warm-up longer than the run is clamped to a tenth of it.
    _, short = optimizer(small_model, dataclasses.replace(cfg, warmup_steps=1500), total_steps=100)
    assert short.lr_lambdas[0](10) == pytest.approx(0.9)


def test_no_weight_decay_on_norms_and_position_tables_only(small_model):
    decay, no_decay = parameter_groups(small_model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in small_model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert len(exempt) + len(decayed) == len(names)
    assert "backbone.swin.layers1.0.blocks.0.attn.relative_position_bias_table" in exempt
    assert {"backbone.norm3.weight", "backbone.swin.patch_embed.norm.bias",
            "backbone.swin.layers1.0.blocks.0.norm1.weight", "backbone.swin.layers1.0.downsample.norm.weight"} <= exempt
    # As MMCV's custom_keys: biases and the heads' BatchNorms ("bn") are decayed.
    assert {"backbone.swin.layers1.0.blocks.0.attn.qkv.bias", "decode_head.bottleneck.bn.weight",
            "decode_head.conv_seg.bias", "auxiliary_head.convs.0.conv.weight"} <= decayed


def test_training_smoke_loss_falls():
    torch.manual_seed(0)
    model = build_swin(**SMALL)
    images = torch.rand(4, IN_CHANNELS, 32, 32)
    target = torch.zeros(4, 1, 32, 32, dtype=torch.int64)
    target[:, :, 8:24, 8:24] = 1
    target[:, :, 12:20, 12:20] = 2
    target[:, :, 14:18, 14:18] = 3
    images[:, 0] += target[:, 0].float()  # a learnable signal
    cfg = dataclasses.replace(SwinConfig(), lr=1e-2, warmup_steps=3)
    opt, scheduler = optimizer(model, cfg, total_steps=60)
    fn = loss(cfg)
    model.train()
    losses = []
    for _ in range(30):
        value = fn(model(images), target)
        opt.zero_grad()
        value.backward()
        opt.step()
        scheduler.step()
        losses.append(value.item())
    assert all(map(lambda v: v == v, losses))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
