"""Swin-Base + UPerNet + FCN auxiliary head: the authors' Swin transformer (paper, 'Swin transformer').

The authors trained MMSegmentation's ``upernet_swin`` (their ``Segmentation-transformer/
swin_base_brats2021.py``) with 4 input channels (T1, T1Gd, T2, FLAIR) and 4 classes
(background, NCR/NET, ED, ET). MMSegmentation is not a dependency here, so the network is
rebuilt from MONAI's Swin blocks and two hand-written heads with MMSegmentation's structure:

* backbone: MONAI's 2D ``SwinTransformer`` (4x4 patch embedding with LayerNorm, four stages of
  shifted-window attention, a 2x2 patch merging between stages), read as MMSegmentation's Swin
  reads it: each stage's output *before* its patch merging, through a LayerNorm of its own
  (``norm0``..``norm3``), at strides 4, 8, 16, 32. MONAI's merging after the last stage
  (absent from MMSegmentation's Swin) is removed.
* decode head (MMSegmentation's ``UPerHead``): pyramid pooling on the last stage, 1x1 lateral
  convs, a top-down path, 3x3 FPN convs, a 3x3 fusion over the concatenated levels, dropout
  0.1 and a 1x1 classifier. Every conv is MMCV's ``ConvModule`` (conv without bias, BN, ReLU).
* auxiliary head (``FCNHead``, train mode only): one 3x3 ConvModule on the third stage,
  dropout 0.1 and a 1x1 classifier.

Logits of both heads are resized bilinearly (``align_corners=False``) to the input size.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets.swin_unetr import SwinTransformer, compute_mask, get_window_size
from torch import nn

from synthmri.config import IMAGE_CHANNELS, SWIN_STAGES, SegmenterConfig, SwinConfig

IN_CHANNELS = len(IMAGE_CHANNELS)  # t1, t1ce, t2, flair
OUT_CLASSES = 4  # background, NCR/NET (51), ED (102), ET (204)
STAGES = SWIN_STAGES  # MONAI's SwinTransformer has exactly four stages (layers1..layers4)
AUX_STAGE = 2  # the FCN auxiliary head reads the third stage (MMSegmentation's in_index=2)
DROPOUT = 0.1  # MMSegmentation's dropout_ratio before both classifiers
WARMUP_RATIO = 1e-6  # MMCV's linear warm-up starts at lr * warmup_ratio
#: MMCV ``paramwise_cfg.custom_keys`` with ``decay_mult=0`` in the authors' config: a
#: parameter whose name contains one of these is not decayed (backbone LayerNorms and the
#: stage norms match "norm"; the heads' BatchNorms are named "bn" and are decayed, as in MMCV).
NO_DECAY_KEYS = ("absolute_pos_embed", "relative_position_bias_table", "norm")
#: Bottleneck features for synthmri.segmenters.features: the normed last Swin stage, [B, 8 * embed_dim, H/32, W/32].
FEATURE_LAYER = "backbone.norm3"


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Sequential):
    """MMCV's ConvModule with BN: conv (no bias, 'same' padding), BatchNorm, ReLU; MMCV's init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            activate=nn.ReLU(inplace=True),
        ))
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first map [B, C, H, W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SwinBackbone(nn.Module):
    """MONAI's 2D Swin transformer returning MMSegmentation's four normed stage outputs."""

    def __init__(self, in_channels: int, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                 window_size: int, patch_size: int, drop_path: float) -> None:
        super().__init__()
        self.swin = SwinTransformer(
            in_chans=in_channels, embed_dim=embed_dim, window_size=(window_size,) * 2,
            patch_size=(patch_size,) * 2, depths=depths, num_heads=num_heads, drop_path_rate=drop_path,
            qkv_bias=True, patch_norm=True, spatial_dims=2,
        )
        self.swin.layers4[0].downsample = None  # MMSegmentation's last stage has no patch merging
        for i in range(STAGES):
            self.add_module(f"norm{i}", ChannelLayerNorm(embed_dim * 2**i))
        for module in self.modules():  # MMSegmentation's Swin init (trunc normal linears, unit LayerNorms)
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _stage(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """MONAI's ``BasicLayer.forward`` (2D), returning its blocks' output and the merged map apart."""
        b, _, h, w = x.shape
        window, shift = get_window_size((h, w), layer.window_size, layer.shift_size)
        padded = [math.ceil(h / window[0]) * window[0], math.ceil(w / window[1]) * window[1]]
        mask = compute_mask(padded, window, shift, x.device)
        x = x.permute(0, 2, 3, 1).contiguous()
        for block in layer.blocks:
            x = block(x, mask)
        x = x.view(b, h, w, -1)
        merged = layer.downsample(x).permute(0, 3, 1, 2).contiguous() if layer.downsample is not None else None
        return x.permute(0, 3, 1, 2).contiguous(), merged

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """`x` [B, C, H, W] -> 4 maps at strides 4, 8, 16, 32 with embed_dim * (1, 2, 4, 8) channels."""
        x = self.swin.pos_drop(self.swin.patch_embed(x))
        outs = []
        for i, layers in enumerate((self.swin.layers1, self.swin.layers2, self.swin.layers3, self.swin.layers4)):
            features, x = self._stage(layers[0], x)
            outs.append(getattr(self, f"norm{i}")(features))
        return outs


class DecodeHead(nn.Module):
    """MMSegmentation's BaseDecodeHead classifier: Dropout2d then a 1x1 conv (init normal, sd 0.01)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(DROPOUT)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(DecodeHead):
    """MMSegmentation's UPerHead: pyramid pooling on the last level, FPN over all, fused."""

    def __init__(self, in_channels: Sequence[int], channels: int, pool_scales: Sequence[int], num_classes: int) -> None:
        super().__init__(channels, num_classes)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1)) for s in pool_scales)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stage maps (finest first) -> logits at the finest level's resolution."""
        top = inputs[-1]
        pooled = [_resize(ppm(top), top.shape[2:]) for ppm in self.psp_modules]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        laterals.append(self.bottleneck(torch.cat([top, *pooled], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        outs = [outs[0]] + [_resize(x, outs[0].shape[2:]) for x in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(DecodeHead):
    """MMSegmentation's FCNHead with num_convs=1, kernel 3, concat_input=False."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__(channels, num_classes)
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))


class SwinUPerNet(nn.Module):
    """Swin backbone, UPerNet decode head and FCN auxiliary head (MMSegmentation's EncoderDecoder).

    Eval mode returns the decode head's logits [B, classes, H, W]; train mode returns the
    tuple (decode logits, auxiliary logits), both [B, classes, H, W].
    """

    def __init__(self, backbone: SwinBackbone, decode_head: UPerHead, auxiliary_head: FCNHead,
                 side_multiple: int) -> None:
        super().__init__()
        self.backbone, self.decode_head, self.auxiliary_head = backbone, decode_head, auxiliary_head
        self.side_multiple = side_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        sides = tuple(int(s) for s in x.shape[2:])
        if x.ndim != 4 or any(s % self.side_multiple or s < self.side_multiple for s in sides):
            raise ValueError(f"swin input must be [B, C, H, W] with H and W positive multiples of "
                             f"{self.side_multiple}, got {'x'.join(map(str, sides))} (shape {list(x.shape)})")
        features = self.backbone(x)
        logits = _resize(self.decode_head(features), sides)
        if not self.training:
            return logits
        return logits, _resize(self.auxiliary_head(features[AUX_STAGE]), sides)


def settings(cfg: SegmenterConfig) -> SwinConfig:
    """The Swin section of the segmenter config."""
    return cfg.swin


def model_args(cfg: SwinConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`build_swin` for `cfg`; plain JSON values, saved in checkpoints."""
    return {
        "in_channels": IN_CHANNELS,
        "out_channels": OUT_CLASSES,
        "patch_size": int(cfg.patch_size),
        "window_size": int(cfg.window_size),
        "embed_dim": int(cfg.embed_dim),
        "depths": [int(d) for d in cfg.depths],
        "num_heads": [int(h) for h in cfg.num_heads],
        "drop_path": float(cfg.drop_path),
        "decode_channels": int(cfg.decode_channels),
        "pool_scales": [int(s) for s in cfg.pool_scales],
        "aux_channels": int(cfg.aux_channels),
    }


_DEFAULT = SwinConfig()


def build_swin(
    in_channels: int = IN_CHANNELS,
    out_channels: int = OUT_CLASSES,
    patch_size: int = _DEFAULT.patch_size,
    window_size: int = _DEFAULT.window_size,
    embed_dim: int = _DEFAULT.embed_dim,
    depths: Sequence[int] = _DEFAULT.depths,
    num_heads: Sequence[int] = _DEFAULT.num_heads,
    drop_path: float = _DEFAULT.drop_path,
    decode_channels: int = _DEFAULT.decode_channels,
    pool_scales: Sequence[int] = _DEFAULT.pool_scales,
    aux_channels: int = _DEFAULT.aux_channels,
) -> SwinUPerNet:
    """Swin + UPerNet + FCN auxiliary head (Swin-Base at the defaults: 4 in, 4 classes).

    Args:
        in_channels: image channels.
        out_channels: classes (logits).
        patch_size: side of the patch embedding (stride of the first stage).
        window_size: side of the attention windows (MONAI clips it to smaller feature maps).
        embed_dim: width of the first stage; stage ``i`` is ``embed_dim * 2 ** i`` wide.
        depths: Swin blocks in each of the 4 stages.
        num_heads: attention heads in each of the 4 stages; each must divide its stage width.
        drop_path: stochastic depth rate, rising linearly from 0 to this value over the blocks.
        decode_channels: UPerNet's channels.
        pool_scales: UPerNet's pyramid pooling output sizes.
        aux_channels: the FCN auxiliary head's channels.

    Returns:
        The network. The input side must be a positive multiple of ``patch_size * 8`` (32 at
        the defaults); other sizes raise a ValueError naming the size. Train mode needs a
        batch of at least 2 (BatchNorm after the 1x1 pyramid pooling).

    Raises:
        ValueError: a setting that cannot be built; the message names the value.
    """
    depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
    pool_scales = [int(s) for s in pool_scales]
    if len(depths) != STAGES or min(depths) < 1:
        raise ValueError(f"swin depths must name {STAGES} stages of at least 1 block, got {depths}")
    if len(num_heads) != STAGES or min(num_heads) < 1:
        raise ValueError(f"swin num_heads must name {STAGES} stages of at least 1 head, got {num_heads}")
    if embed_dim < 1 or patch_size < 1 or window_size < 1:
        raise ValueError(f"swin embed_dim, patch_size and window_size must be positive, got "
                         f"{embed_dim}, {patch_size} and {window_size}")
    widths = [embed_dim * 2**i for i in range(STAGES)]
    if any(w % h for w, h in zip(widths, num_heads)):
        raise ValueError(f"swin num_heads {num_heads} must divide the stage widths {widths} (embed_dim {embed_dim})")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"swin drop_path must be in [0, 1), got {drop_path}")
    if decode_channels < 1 or aux_channels < 1 or not pool_scales or min(pool_scales) < 1:
        raise ValueError(f"swin decode_channels and aux_channels must be positive and pool_scales positive sizes, "
                         f"got {decode_channels}, {aux_channels} and {pool_scales}")
    backbone = SwinBackbone(in_channels, embed_dim, depths, num_heads, window_size, patch_size, drop_path)
    return SwinUPerNet(
        backbone,
        UPerHead(widths, decode_channels, pool_scales, out_channels),
        FCNHead(widths[AUX_STAGE], aux_channels, out_channels),
        side_multiple=patch_size * 2 ** (STAGES - 1),
    )


class SwinLoss(nn.Module):
    """The authors' DiceCE on the decode head plus `aux_weight` times DiceCE on the auxiliary head.

    Their config sets MONAI's DiceCELoss arguments for both heads: softmax, no background in
    the Dice, squared predictions in the denominator, a Dice per sample and class
    (``batch=False``), smoothing 1e-5, Dice and CE weighted 1. Their ``to_onehot_y=False``
    goes with one-hot targets made by their MMSegmentation wrapper (MONAI's Dice rejects a
    class map of another shape); from class maps, ``to_onehot_y=True`` computes the same.
    """

    def __init__(self, aux_weight: float) -> None:
        super().__init__()
        self.aux_weight = float(aux_weight)
        self.dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, squared_pred=True,
                                  batch=False, smooth_nr=1e-5, smooth_dr=1e-5, lambda_dice=1.0, lambda_ce=1.0)

    def forward(self, output: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """`output`: train mode's (decode, auxiliary) logits, or eval mode's decode logits alone
        (scored without the auxiliary term); `target`: classes int64 [B, 1, H, W]."""
        if isinstance(output, torch.Tensor):
            return self.dice_ce(output, target)
        main, aux = output
        return self.dice_ce(main, target) + self.aux_weight * self.dice_ce(aux, target)


def loss(cfg: SwinConfig) -> SwinLoss:
    """The loss of both heads, the auxiliary one weighted ``cfg.aux_weight`` (0.4)."""
    return SwinLoss(cfg.aux_weight)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split as the authors' ``paramwise_cfg``: names containing one of
    :data:`NO_DECAY_KEYS` get no weight decay, all others (biases and BatchNorms included) do."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(key in name for key in NO_DECAY_KEYS) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_length(cfg: SwinConfig, total_steps: int) -> int:
    """``cfg.warmup_steps``, or a tenth of a budget it does not fit in (0 below 10 steps)."""
    return cfg.warmup_steps if cfg.warmup_steps < total_steps else total_steps // 10


def lr_factor(step: int, total_steps: int, warmup: int) -> float:
    """MMCV's poly schedule (power 1, min_lr 0, by iteration) under its linear warm-up (ratio 1e-6).

    ``(1 - s / T) * (1 - (1 - s / w) * (1 - 1e-6))`` for ``s < w``, ``1 - s / T`` after: the
    rate rises from ~0 to nearly ``lr`` over the warm-up and falls linearly to 0 at ``T``.
    """
    poly = max(0.0, 1.0 - step / total_steps)
    if step < warmup:
        return poly * (1.0 - (1.0 - step / warmup) * (1.0 - WARMUP_RATIO))
    return poly


def optimizer(
    model: nn.Module, cfg: SwinConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (betas 0.9, 0.999) with the authors' warm-up and linear decay (:func:`lr_factor`).

    Args:
        model: the network (groups from :func:`parameter_groups`).
        cfg: lr, weight_decay and warmup_steps (clamped by :func:`warmup_length`).
        total_steps: optimiser steps of the whole budget; the rate reaches 0 at the end.

    Returns:
        The optimiser and a scheduler to step once after every optimiser step.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup = warmup_length(cfg, total_steps)
    adamw = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999),
                              weight_decay=cfg.weight_decay)
    return adamw, torch.optim.lr_scheduler.LambdaLR(adamw, lambda step: lr_factor(step, total_steps, warmup))
