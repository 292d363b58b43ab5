"""2D Swin UNETR (MONAI SwinUNETR) and the paper's Swin training recipe (paper, 'Segmentation').

The network: 4 input channels (T1, T1Gd, T2, FLAIR), 4 output classes (background, NCR/NET,
ED, ET). A Swin transformer encoder (2x2 patch embedding, four stages of shifted-window
attention with a 2x2 patch merging after each) feeds a convolutional U-shaped decoder
through skip connections; one full-resolution output, no deep supervision. The recipe:
AdamW with a linear warm-up and linear decay to 0, and Dice (without background) +
cross-entropy.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import SwinUNETR
from torch import nn

from synthmri.config import IMAGE_CHANNELS, SWIN_STAGES, SegmenterConfig, SwinUNETRConfig

IN_CHANNELS = len(IMAGE_CHANNELS)  # t1, t1ce, t2, flair
OUT_CLASSES = 4  # background, NCR/NET (51), ED (102), ET (204)
STAGES = SWIN_STAGES  # SwinUNETR's encoder has exactly four Swin stages (layers1..layers4)
SIDE_MULTIPLE = 32  # patch size 2, then a 2x2 merge after each of the 4 stages: 2 ** 5
MIN_SIDE = 2 * SIDE_MULTIPLE  # the bottleneck (side / 32) is instance-normed: it needs > 1 pixel
NO_DECAY_NAMES = ("relative_position_bias_table",)


class SwinSegmenter(SwinUNETR):
    """MONAI's SwinUNETR with an input-size check that names the offending size.

    A subclass, not a wrapper, so that the state-dict keys are SwinUNETR's own.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` [B, C, H, W] -> logits [B, out_channels, H, W] (train and eval mode alike)."""
        sides = tuple(int(s) for s in x.shape[2:])
        if x.ndim != 4 or any(s % SIDE_MULTIPLE or s < MIN_SIDE for s in sides):
            raise ValueError(f"swin input must be [B, C, H, W] with H and W multiples of {SIDE_MULTIPLE} and at "
                             f"least {MIN_SIDE}, got {'x'.join(map(str, sides))} (shape {list(x.shape)})")
        return super().forward(x)


#: In-domain features (synthmri.segmenters.features): the last conv on the last Swin stage's
#: output (input side / 32, 16 * feature_size channels), where the decoder starts.
FEATURE_LAYER = "encoder10.layer.conv2"

def settings(cfg: SegmenterConfig) -> SwinUNETRConfig:
    """The Swin section of the segmenter config."""
    return cfg.swinunetr


def model_args(cfg: SwinUNETRConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`build_swinunetr` for `cfg`; plain values, saved in checkpoints."""
    return {
        "in_channels": IN_CHANNELS,
        "out_channels": OUT_CLASSES,
        "feature_size": int(cfg.feature_size),
        "depths": [int(d) for d in cfg.depths],
        "num_heads": [int(h) for h in cfg.num_heads],
        "window_size": int(cfg.window_size),
        "drop_path": float(cfg.drop_path),
    }


def build_swinunetr(
    in_channels: int = IN_CHANNELS,
    out_channels: int = OUT_CLASSES,
    feature_size: int = SwinUNETRConfig().feature_size,
    depths: Sequence[int] = SwinUNETRConfig().depths,
    num_heads: Sequence[int] = SwinUNETRConfig().num_heads,
    window_size: int = SwinUNETRConfig().window_size,
    drop_path: float = SwinUNETRConfig().drop_path,
) -> SwinSegmenter:
    """A 2D Swin UNETR.

    Args:
        in_channels: image channels.
        out_channels: classes (logits).
        feature_size: embedding width of the first stage, a multiple of 12; stage ``i`` is
            ``feature_size * 2 ** i`` wide and the bottleneck ``16 * feature_size``.
        depths: Swin blocks in each of the 4 stages.
        num_heads: attention heads in each of the 4 stages; each must divide its stage width.
        window_size: side of the attention windows (clipped by MONAI to small feature maps).
        drop_path: stochastic depth rate, rising linearly to this value over the blocks.

    Returns:
        The network; in train and eval mode it returns logits ``[B, out_channels, H, W]``.
        The input side must be a multiple of 32 (2x2 patches, then 4 halvings) and at least
        64: the convolutional bottleneck runs at side / 32 with instance norm, which needs
        more than one pixel. Other sizes raise a ValueError naming the size.

    Raises:
        ValueError: a setting SwinUNETR cannot build or run; the message names the value.
    """
    if feature_size <= 0 or feature_size % 12:
        raise ValueError(f"swin feature_size must be a positive multiple of 12, got {feature_size}")
    depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
    if len(depths) != STAGES or min(depths) < 1:
        raise ValueError(f"swin depths must name {STAGES} stages of at least 1 block, got {depths}")
    if len(num_heads) != STAGES or min(num_heads) < 1:
        raise ValueError(f"swin num_heads must name {STAGES} stages of at least 1 head, got {num_heads}")
    widths = [feature_size * 2**i for i in range(STAGES)]
    if any(w % h for w, h in zip(widths, num_heads)):
        raise ValueError(f"swin num_heads {num_heads} must divide the stage widths {widths} "
                         f"(feature_size {feature_size})")
    if window_size < 1:
        raise ValueError(f"swin window_size must be at least 1, got {window_size}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"swin drop_path must be in [0, 1), got {drop_path}")
    return SwinSegmenter(
        in_channels=in_channels,
        out_channels=out_channels,
        patch_size=2,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        feature_size=feature_size,
        dropout_path_rate=drop_path,
        spatial_dims=2,
    )


def loss(cfg: SwinUNETRConfig) -> DiceCELoss:
    """Dice + cross-entropy on (logits [B, C, H, W], classes [B, 1, H, W]).

    The soft Dice leaves out the background and is computed over the whole batch (as for
    the U-Net, nnU-Net's batch Dice): most 2D slices hold no tumour label at all, and a
    per-slice Dice of an absent class would only add noise.
    """
    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed and an undecayed AdamW group.

    As in mmsegmentation's Swin configs (decay_mult 0 for norms and the relative position
    bias tables), norm weights, biases (every 1-D parameter) and the relative position bias
    tables are not decayed; the linear and convolution weights are.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_steps(cfg: SwinUNETRConfig, total_steps: int) -> int:
    """The warm-up length: ``cfg.warmup_steps``, or a tenth of a budget it does not fit in.

    A warm-up as long as the whole run would never reach the configured rate, so when
    ``cfg.warmup_steps >= total_steps`` it is clamped to ``total_steps // 10`` (0, i.e. no
    warm-up, for runs of fewer than 10 steps).
    """
    return cfg.warmup_steps if cfg.warmup_steps < total_steps else total_steps // 10


def optimizer(
    model: nn.Module, cfg: SwinUNETRConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a linear warm-up from 0 to ``cfg.lr``, then a linear decay to 0.

    The rate at step ``s`` is ``lr * s / w`` for ``s < w`` (``w`` from :func:`warmup_steps`),
    then ``lr * (total - s) / (total - w)``.

    Args:
        model: the network whose parameters are optimised (groups from :func:`parameter_groups`).
        cfg: lr, weight_decay and warmup_steps.
        total_steps: optimiser steps of the whole budget; the rate reaches 0 at the end.

    Returns:
        The optimiser and a scheduler to step once after every optimiser step.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup = warmup_steps(cfg, total_steps)
    adamw = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return max(0.0, (total_steps - step) / (total_steps - warmup))

    return adamw, torch.optim.lr_scheduler.LambdaLR(adamw, factor)
