"""The authors' 2D U-Net and its training recipe (paper, 'U-Net'; their ``Segmentation/learning``).

The network (their ``models.py``, after Ronneberger et al.): ``depth`` resolution levels,
``base_filters`` doubling per level (64 to 2048 at depth 6), two *valid* 3x3 convolutions
per level, each followed by leaky ReLU and then an affine instance norm, 2x2 max-pooling
down, bilinear upsampling plus a 1x1 convolution up, the encoder map centre-cropped to the
upsampled one and concatenated after it. A bias-free 1x1 head on every decoder level; the
lower heads' logits are upsampled bilinearly to full resolution (deep supervision).

Valid convolutions shrink the map, so the network zero-pads its input symmetrically to the
smallest size that yields at least the slice size (636 for 256 at depth 6; their
``get_minimal_input_size``) and centre-crops every output back to the slice. The recipe
(their ``lightning_module.py``): soft Dice (background included, over the whole batch) plus
cross-entropy, on every decoder output with weights 0.5^d, the lowest one weighted 0; SGD
with Nesterov momentum and polynomial learning-rate decay.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from synthmri.config import IMAGE_CHANNELS, SegmenterConfig, UNetConfig
from synthmri.segmenters import nnunet

IN_CHANNELS = len(IMAGE_CHANNELS)  # t1, t1ce, t2, flair
OUT_CLASSES = 4  # background, NCR/NET (51), ED (102), ET (204)
#: The bottleneck's last activation: its second convolution after the leaky ReLU, before the
#: instance norm (after it every channel has the same spatial mean in every image).
FEATURE_LAYER = "bottleneck.act2"


def settings(cfg: SegmenterConfig) -> UNetConfig:
    """The U-Net section of the segmenter config."""
    return cfg.unet


def model_args(cfg: UNetConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`build_unet` for `cfg`; plain values, saved in checkpoints."""
    return {
        "in_channels": IN_CHANNELS,
        "out_channels": OUT_CLASSES,
        "depth": int(cfg.depth),
        "base_filters": int(cfg.base_filters),
        "negative_slope": float(cfg.negative_slope),
    }


def minimal_input_size(size: int, depth: int) -> int:
    """The smallest valid-convolution input side whose output side is at least `size`.

    With ``p = 2 ** (depth - 1)`` the valid inputs are ``p * (12 + k) - 4`` and give outputs
    ``4 + p * k`` (k >= 0); the authors' ``get_minimal_input_size`` has this for depths 5
    and 6 (``188 + 16 k`` and ``380 + 32 k``): 636 for 256 at depth 6.

    Raises:
        ValueError: `size` below 1 or `depth` below 2.
    """
    if depth < 2:
        raise ValueError(f"unet depth must be at least 2, got {depth}")
    if size < 1:
        raise ValueError(f"unet input side must be at least 1 pixel, got {size}")
    p = 2 ** (depth - 1)
    k = max(0, -(-(size - 4) // p))  # ceil((size - 4) / p), never negative
    return p * (12 + k) - 4


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The central `size` window of `x` [..., H, W], offsets rounded down (their ``tensor_center_crop``)."""
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


class ConvBlock(nn.Sequential):
    """Two valid 3x3 convolutions (with bias), each followed by leaky ReLU then affine instance norm."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, cin in ((1, in_channels), (2, out_channels)):
            layers[f"conv{i}"] = nn.Conv2d(cin, out_channels, kernel_size=3, padding=0)
            # In place as the authors', except at slope <= 0, where autograd cannot invert it.
            layers[f"act{i}"] = nn.LeakyReLU(negative_slope=negative_slope, inplace=negative_slope > 0)
            layers[f"norm{i}"] = nn.InstanceNorm2d(out_channels, affine=True)
        super().__init__(layers)


class UpBlock(nn.Module):
    """Bilinear x2 upsampling, a 1x1 convolution (with bias) halving the channels, the cropped
    encoder map concatenated after it, then a :class:`ConvBlock`."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.reduce = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.block = ConvBlock(2 * out_channels, out_channels, negative_slope)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """`x` from the level below, `skip` the (larger) encoder map of this level."""
        up = self.reduce(self.upsample(x))
        return self.block(torch.cat([up, center_crop(skip, tuple(up.shape[-2:]))], dim=1))


class UNet(nn.Module):
    """The authors' valid-convolution U-Net with a deep-supervision head per decoder level.

    Submodules: ``down[l]`` the encoder block of level l (0 = full resolution) for
    l < depth - 1, ``bottleneck`` the lowest level's block, ``up[l]`` the decoder block
    producing level l and ``heads[l]`` its bias-free 1x1 classifier.

    Args:
        in_channels: image channels.
        out_channels: classes (logits).
        depth: resolution levels (depth - 1 poolings), at least 2.
        base_filters: filters of level 0; level l has ``base_filters * 2 ** l``.
        negative_slope: leaky ReLU slope.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, base_filters: int,
                 negative_slope: float) -> None:
        super().__init__()
        minimal_input_size(1, depth)  # validates depth
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("base_filters", base_filters)):
            if value < 1:
                raise ValueError(f"unet {name} must be at least 1, got {value}")
        self.in_channels, self.depth = in_channels, depth
        widths = [base_filters * 2**level for level in range(depth)]
        self.down = nn.ModuleList(
            ConvBlock(cin, cout, negative_slope) for cin, cout in zip([in_channels] + widths[:-2], widths[:-1]))
        self.bottleneck = ConvBlock(widths[-2], widths[-1], negative_slope)
        self.up = nn.ModuleList(UpBlock(widths[level + 1], widths[level], negative_slope)
                                for level in range(depth - 1))
        self.heads = nn.ModuleList(nn.Conv2d(widths[level], out_channels, kernel_size=1, bias=False)
                                   for level in range(depth - 1))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """`x` [B, C, H, W] padded symmetrically (extra pixel after) to the minimal valid input.

        The authors pad the raw slice with 0 (``symmetric_pad_to_shape`` in training,
        torchvision's ``CenterCrop`` in validation) before z-scoring, so the border holds the
        background's normalised value; here the input is already normalised and the border
        takes each image's and channel's minimum, the z-scored background of a
        skull-stripped slice.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"unet input must be [B, {self.in_channels}, H, W], got {list(x.shape)}")
        h, w = (int(s) for s in x.shape[-2:])
        th, tw = minimal_input_size(h, self.depth), minimal_input_size(w, self.depth)
        top, left = (th - h) // 2, (tw - w) // 2
        floor = x.amin(dim=(-2, -1), keepdim=True)
        return F.pad(x - floor, (left, tw - w - left, top, th - h - top)) + floor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` [B, C, H, W] -> logits [B, classes, H, W] in eval mode; in train mode the stack
        [B, depth - 1, classes, H, W] of every decoder level's logits, upsampled and cropped
        to H x W, full resolution first."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        y = self.pad(x)
        skips = []
        for block in self.down:
            y = block(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.bottleneck(y)
        decoded: dict[int, torch.Tensor] = {}  # decoder level -> its feature map
        for level in reversed(range(self.depth - 1)):
            y = decoded[level] = self.up[level](y, skips[level])
        if not self.training:
            return center_crop(self.heads[0](y), size)
        outputs = []
        for level, head in enumerate(self.heads):
            logits = head(decoded[level])
            if level:
                logits = F.interpolate(logits, scale_factor=2**level, mode="bilinear", align_corners=False)
            outputs.append(center_crop(logits, size))
        return torch.stack(outputs, dim=1)


def build_unet(in_channels: int = IN_CHANNELS, out_channels: int = OUT_CLASSES, depth: int = 6,
               base_filters: int = 64, negative_slope: float = 0.01) -> UNet:
    """The authors' U-Net (116,014,272 parameters at the defaults).

    Args:
        in_channels: image channels.
        out_channels: classes (logits).
        depth: resolution levels, at least 2.
        base_filters: filters of the first level, doubled at every level below.
        negative_slope: leaky ReLU slope.

    Returns:
        The network. Any input [B, in_channels, H, W] with H, W >= 1 is padded internally;
        eval mode returns [B, out_channels, H, W] logits, train mode the deep-supervision
        stack [B, depth - 1, out_channels, H, W] (see :func:`deep_supervision_weights`).

    Raises:
        ValueError: depth below 2 or a channel/filter count below 1 (at build time); an input
            that is not [B, in_channels, H, W] with H, W >= 1 (at call time).
    """
    return UNet(in_channels, out_channels, depth, base_filters, negative_slope)


def deep_supervision_weights(depth: int) -> list[float]:
    """Loss weights of the ``depth - 1`` train-mode outputs, full resolution first.

    As the authors' ``SegmentationModule``: 0.5^d for output d, the lowest output's weight
    set to 0, then normalised to sum to 1 (depth 6: [8, 4, 2, 1, 0] / 15). At depth 2 the
    single output keeps weight 1.
    """
    raw = [0.5**d for d in range(depth - 1)]
    if len(raw) > 1:
        raw[-1] = 0.0
    return [w / sum(raw) for w in raw]


class DeepSupervisionDiceCE(nn.Module):
    """Soft Dice + cross-entropy, weighted equally, summed over the outputs with `weights`.

    The Dice includes the background and pools the whole batch (their ``SoftDiceLoss(batch_dice=True,
    smooth=1e-5)``; MONAI's ``1 - dice`` differs from their ``-dice`` by a constant). Outputs
    of weight 0 are skipped, as their ``DeepLoss`` does, so their heads get no gradient.

    Args:
        weights: one per train-mode output, full resolution first.
    """

    def __init__(self, weights: list[float]) -> None:
        super().__init__()
        self.weights = list(weights)
        self.dice_ce = DiceCELoss(include_background=True, to_onehot_y=True, softmax=True, batch=True,
                                  smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`logits` [B, S, C, H, W] (train-mode stack) or [B, C, H, W]; `target` [B, 1, H, W] classes."""
        if logits.ndim == target.ndim:
            return self.dice_ce(logits, target)
        if logits.shape[1] != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} deep-supervision outputs, got {logits.shape[1]}")
        terms = [w * self.dice_ce(logits[:, i], target) for i, w in enumerate(self.weights) if w]
        return torch.stack(terms).sum()


def loss(cfg: UNetConfig) -> DeepSupervisionDiceCE:
    """The training loss for a U-Net built from `cfg`."""
    return DeepSupervisionDiceCE(deep_supervision_weights(cfg.depth))


def optimizer(model: nn.Module, cfg: UNetConfig, total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with Nesterov momentum and per-step polynomial decay, as :func:`nnunet.optimizer`.

    The authors' ``configure_optimizers`` (momentum 0.99, weight decay 3e-5, Nesterov) with
    their ``poly_lr`` (power 0.9), which they apply per epoch; here per optimiser step.
    """
    return nnunet.optimizer(model, cfg, total_steps)
