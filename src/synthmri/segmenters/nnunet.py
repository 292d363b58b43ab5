"""nnU-Net-like 2D U-Net (MONAI DynUNet) and its training recipe (paper, 'Segmentation').

The network: 4 input channels (T1, T1Gd, T2, FLAIR), 4 output classes (background, NCR/NET,
ED, ET), one resolution level per entry of ``NNUNetConfig.filters`` (two 3x3 convolutions,
instance norm, leaky ReLU each), stride-2 downsampling between levels and deep supervision
heads on the upper decoder levels. The recipe: SGD with Nesterov momentum and polynomial
learning-rate decay, and Dice + cross-entropy on every deep-supervision output.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import DynUNet
from torch import nn

from synthmri.config import IMAGE_CHANNELS, NNUNetConfig, SegmenterConfig

IN_CHANNELS = len(IMAGE_CHANNELS)  # t1, t1ce, t2, flair
OUT_CLASSES = 4  # background, NCR/NET (51), ED (102), ET (204)
#: In-domain features (synthmri.segmenters.features): the bottom level's last conv, filters[-1] channels.
FEATURE_LAYER = "bottleneck.conv2"


def settings(cfg: SegmenterConfig) -> NNUNetConfig:
    """The U-Net section of the segmenter config."""
    return cfg.nnunet


def model_args(cfg: NNUNetConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`build_nnunet` for `cfg`; plain values, saved in checkpoints."""
    return {
        "in_channels": IN_CHANNELS,
        "out_channels": OUT_CLASSES,
        "filters": [int(f) for f in cfg.filters],
        "deep_supervision_heads": int(cfg.deep_supervision_heads),
        "negative_slope": float(cfg.negative_slope),
    }


def build_nnunet(
    in_channels: int = IN_CHANNELS,
    out_channels: int = OUT_CLASSES,
    filters: Sequence[int] = NNUNetConfig().filters,
    deep_supervision_heads: int = NNUNetConfig().deep_supervision_heads,
    negative_slope: float = NNUNetConfig().negative_slope,
) -> DynUNet:
    """A 2D DynUNet with one level per filter count.

    Args:
        in_channels: image channels.
        out_channels: classes (logits).
        filters: feature maps per level, from full resolution down to the bottleneck;
            ``len(filters) - 1`` stride-2 downsamplings, so the input side must be
            divisible by ``2 ** (len(filters) - 1)``.
        deep_supervision_heads: extra outputs from the decoder levels below full resolution
            (0 turns deep supervision off).
        negative_slope: leaky ReLU slope.

    Returns:
        The network. In train mode with deep supervision it returns
        ``[B, 1 + heads, out_channels, H, W]`` (heads upsampled to full size, the
        full-resolution output first); in eval mode ``[B, out_channels, H, W]``.

    Raises:
        ValueError: fewer than 3 levels, or more heads than decoder levels below the top.
    """
    depth = len(filters)
    if depth < 3:  # DynUNet's minimum: an input level, one inner level and a bottleneck
        raise ValueError(f"unet filters must name at least 3 levels, got {list(filters)}")
    # DynUNet can only attach heads to decoder levels strictly between the top and the
    # bottleneck: depth - 2 of them.
    if not 0 <= deep_supervision_heads <= depth - 2:
        raise ValueError(
            f"deep_supervision_heads must be in 0..{depth - 2} for {depth} levels (filters {list(filters)}), "
            f"got {deep_supervision_heads}")
    strides = [1] + [2] * (depth - 1)
    return DynUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[3] * depth,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(filters),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": negative_slope}),
        deep_supervision=deep_supervision_heads > 0,
        deep_supr_num=max(deep_supervision_heads, 1),
    )


def deep_supervision_weights(outputs: int) -> list[float]:
    """Loss weights 0.5^d of output d (0 = full resolution), normalised to sum to 1."""
    raw = [0.5**d for d in range(outputs)]
    return [w / sum(raw) for w in raw]


class SegmentationLoss(nn.Module):
    """Dice + cross-entropy on the full-resolution output and every deep-supervision head.

    The soft Dice leaves out the background and is computed over the whole batch (as
    nnU-Net's batch Dice): most 2D slices hold no tumour label at all, and a per-slice Dice
    of an absent class would only add noise.

    Args:
        outputs: how many outputs the network returns in train mode (1 + heads).
    """

    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.outputs = outputs
        dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
        self.loss = DeepSupervisionLoss(dice_ce, weights=deep_supervision_weights(outputs))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`logits` [B, S, C, H, W] (train-mode stack) or [B, C, H, W]; `target` [B, 1, H, W] classes."""
        if logits.ndim == target.ndim + 1:
            return self.loss(list(torch.unbind(logits, dim=1)), target)
        return self.loss(logits, target)


def loss(cfg: NNUNetConfig) -> SegmentationLoss:
    """The training loss for a U-Net built from `cfg`."""
    return SegmentationLoss(outputs=1 + cfg.deep_supervision_heads)


def optimizer(model: nn.Module, cfg: NNUNetConfig, total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with Nesterov momentum and polynomial decay ``lr * (1 - step / total) ** power``.

    Args:
        model: the network whose parameters are optimised.
        cfg: lr, momentum, weight_decay and poly_power.
        total_steps: optimiser steps of the whole budget; the rate reaches 0 at the end.

    Returns:
        The optimiser and a scheduler to step once after every optimiser step.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    sgd = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    power = cfg.poly_power
    schedule = torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: max(0.0, 1.0 - step / total_steps) ** power)
    return sgd, schedule
