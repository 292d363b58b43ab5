"""The StyleGAN2 family: networks of Karras et al. 2020, "Analyzing and Improving the Image
Quality of StyleGAN" (config F shape: skip generator, residual discriminator).

Generator: a mapping MLP turns z into w, broadcast to ``num_ws`` style inputs. The synthesis
network starts from a learned 4x4 constant; every 3x3 convolution is weight-modulated by an
affine of its w and demodulated, then gets per-pixel noise, a bias and a leaky ReLU. Each
resolution has a toRGB (modulated 1x1, no demodulation) whose output is added to the
upsampled, blurred image of the resolution below (the skip architecture). Each synthesis
layer has one scalar noise strength, as in the official ``networks_stylegan2.py``.

Discriminator: fromRGB at full resolution, residual blocks (two convolutions, the second
downsampling, plus a downsampling 1x1 skip; the sum scaled by 1/sqrt(2)), and a 4x4 epilogue
with minibatch standard deviation, a convolution and two dense layers to one logit.

Feature maps at resolution r are ``min(channel_base // r, channel_max)``; config F
(``--cfg=stylegan2``: channel_base 32768, channel_max 512, 8 mapping layers, w_dim 512) at
256x256 with 5 channels gives the official code's parameter counts, generator 30,040,240 and
discriminator 28,864,385. Under mixed precision the activations of every convolution and
toRGB are clamped to +-256 (the official ``conv_clamp``, off with the official ``--fp32``).

Only networks live here; the non-saturating loss, lazy R1, path-length regularisation and
style mixing are in :mod:`synthmri.generators.adversarial`. Images are ``[B, channels, S, S]``
in [-1, 1]; the generator's output is linear (unclamped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from synthmri.config import ConfigError
from synthmri.generators.adversarial import AdversarialFamily, Objective
from synthmri.generators.layers import (
    Blur,
    EqualConv2d,
    EqualLinear,
    MappingNetwork,
    MinibatchStdDev,
    NoiseInjection,
    channels_at,
    clamp_mixed,
    lrelu,
    upsample2x,
)

if TYPE_CHECKING:
    from synthmri.config import StyleGAN2Config

RESIDUAL_GAIN = math.sqrt(0.5)  # keeps the variance of skip + residual equal to each branch's
CONV_CLAMP = 256.0  # the official conv_clamp: activations clamped to [-256, 256] in reduced precision
_INT_KEYS = ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max")
_D_KEYS = ("image_size", "channels", "channel_base", "channel_max")


def model_args_from(section: StyleGAN2Config, image_size: int, channels: int) -> dict[str, Any]:
    """The JSON-able architecture of a StyleGAN2 pair.

    The section's values were validated with the config (:mod:`synthmri.config.validate`).

    Args:
        section: the ``generator.stylegan2`` config section.
        image_size: side S of the square images (a power of two, at least 8).
        channels: image channels (5: four MR sequences and the annotation).

    Returns:
        ``image_size``, ``channels``, ``z_dim``, ``w_dim``, ``mapping_layers``,
        ``mapping_lr_mul``, ``channel_base`` and ``channel_max``.

    Raises:
        ConfigError: (a ValueError) an image size or channel count the network cannot take.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8 \
            or image_size & (image_size - 1):
        raise ConfigError(f"data.size: StyleGAN2 needs a power-of-two image size of at least 8, "
                          f"got {image_size!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"StyleGAN2 needs a positive number of image channels, got {channels!r}")
    return {"image_size": image_size, "channels": channels, "z_dim": section.z_dim, "w_dim": section.w_dim,
            "mapping_layers": section.mapping_layers, "mapping_lr_mul": float(section.mapping_lr_mul),
            "channel_base": section.channel_base, "channel_max": section.channel_max}


class ModulatedConv2d(nn.Module):
    """Same-padded convolution whose weights are scaled per sample by a style (StyleGAN2 Fig. 2).

    The style ``s = A(w)`` (an equalized affine, bias 1 so it starts as the identity) scales
    the input channels of the weight; demodulation then rescales each output channel's weight
    to unit L2 norm, so unit-variance input gives unit-variance output whatever the style's
    magnitude. The per-sample weights run as one grouped convolution (batch folded into groups).

    Args:
        in_channels: input feature maps.
        out_channels: output feature maps.
        kernel_size: odd kernel size.
        w_dim: style width.
        demodulate: normalise the modulated weights (False for toRGB).
        up: 2x nearest upsampling and a [1, 3, 3, 1] blur before the convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True, up: bool = False) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.blur = Blur() if up else None

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``[B, out_channels, H', W']`` for features ``[B, in_channels, H, W]`` and w ``[B, w_dim]``."""
        batch = x.shape[0]
        styles = self.affine(w)  # [B, in]
        weight = self.weight[None] * (self.weight_gain * styles[:, None, :, None, None])  # [B, out, in, k, k]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        if self.blur is not None:
            x = self.blur(upsample2x(x))
        out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), weight.reshape(-1, *weight.shape[2:]).to(x.dtype),
                       padding=self.padding, groups=batch)
        return out.reshape(batch, -1, *out.shape[2:])


class StyledConv(nn.Module):
    """Modulated 3x3 convolution, noise with learned strength, bias, leaky ReLU.

    Args:
        in_channels: input feature maps.
        out_channels: output feature maps.
        w_dim: style width.
        up: double the resolution first.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=up)
        self.noise = NoiseInjection(out_channels, per_channel=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        x = self.noise(self.conv(x, w), rng)
        return clamp_mixed(lrelu(x + self.bias.to(x.dtype)[None, :, None, None]), CONV_CLAMP)


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to image channels (no demodulation, linear), plus the skip.

    Args:
        in_channels: feature maps.
        channels: image channels.
        w_dim: style width.
    """

    def __init__(self, in_channels: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.blur = Blur()

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """This resolution's image: toRGB(x) + blur(upsample(skip)) (``skip`` None at 4x4)."""
        image = self.conv(x, w)
        image = clamp_mixed(image + self.bias.to(image.dtype)[None, :, None, None], CONV_CLAMP)
        if skip is not None:
            image = image + self.blur(upsample2x(skip)).to(image.dtype)
        return image


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (upsampling) convolutions and a toRGB.

    The 4x4 block has one convolution (its input is the learned constant); later blocks two,
    the first upsampling. The block consumes ``num_conv + 1`` styles; its toRGB shares its
    style with the next block's first convolution, as in the paper's code (14 ws at 256^2).

    Args:
        in_channels: feature maps coming in (ignored at 4x4).
        out_channels: feature maps at this resolution.
        channels: image channels.
        w_dim: style width.
        first: the 4x4 block.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int, w_dim: int, first: bool) -> None:
        super().__init__()
        convs = [StyledConv(out_channels, out_channels, w_dim)]
        if not first:
            convs.insert(0, StyledConv(in_channels, out_channels, w_dim, up=True))
        self.convs = nn.ModuleList(convs)
        self.num_conv = len(convs)
        self.torgb = ToRGB(out_channels, channels, w_dim)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None, ws: torch.Tensor,
                rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, image) at this resolution; ``ws`` is ``[B, num_conv + 1, w_dim]``."""
        for i, conv in enumerate(self.convs):
            x = conv(x, ws[:, i], rng)
        return x, self.torgb(x, ws[:, self.num_conv], image)


class SynthesisNetwork(nn.Module):
    """Styles ``[B, num_ws, w_dim]`` -> images ``[B, channels, S, S]`` (skip architecture).

    Args:
        image_size: output side S (a power of two, at least 8).
        channels: image channels.
        w_dim: style width.
        channel_base: feature maps at resolution r are ``min(channel_base // r, channel_max)``.
        channel_max: the most feature maps at any resolution.
    """

    def __init__(self, image_size: int, channels: int, w_dim: int, channel_base: int, channel_max: int) -> None:
        super().__init__()
        self.image_size, self.channels, self.w_dim = image_size, channels, w_dim
        resolutions = [2 ** k for k in range(2, int(math.log2(image_size)) + 1)]
        width = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.const = nn.Parameter(torch.randn(width[0], 4, 4))
        self.blocks = nn.ModuleList(SynthesisBlock(width[max(i - 1, 0)], width[i], channels, w_dim, first=i == 0)
                                    for i in range(len(resolutions)))
        self.num_ws = sum(block.num_conv for block in self.blocks) + 1

    def forward(self, ws: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """Images for styles `ws`; every noise map is drawn from `rng` (the global RNG when None)."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"expected ws of shape [B, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        image, start = None, 0
        for block in self.blocks:
            x, image = block(x, image, ws[:, start:start + block.num_conv + 1], rng)
            start += block.num_conv
        return image


class Generator(nn.Module):
    """StyleGAN2 generator: :class:`MappingNetwork` then :class:`SynthesisNetwork`.

    Args:
        image_size: output side S.
        channels: image channels.
        z_dim: latent width.
        w_dim: style width.
        mapping_layers: depth of the mapping MLP.
        mapping_lr_mul: learning-rate multiplier of the mapping MLP.
        channel_base: see :class:`SynthesisNetwork`.
        channel_max: see :class:`SynthesisNetwork`.
    """

    def __init__(self, image_size: int, channels: int, z_dim: int, w_dim: int, mapping_layers: int,
                 mapping_lr_mul: float, channel_base: int, channel_max: int) -> None:
        super().__init__()
        self.image_size, self.channels, self.z_dim, self.w_dim = image_size, channels, z_dim, w_dim
        self.synthesis = SynthesisNetwork(image_size, channels, w_dim, channel_base, channel_max)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, layers=mapping_layers, lr_mul=mapping_lr_mul)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0,
                rng: torch.Generator | None = None) -> torch.Tensor:
        """Images ``[B, channels, S, S]`` for latents ``z`` ``[B, z_dim]``."""
        return self.synthesis(self.mapping(z, truncation_psi), rng)


class _DownConv(EqualConv2d):
    """:class:`EqualConv2d` that blurs, then convolves with stride 2 (2x downsampling).

    Striding computes only the kept pixels (a quarter of a full convolution); the blur's
    (1, 2) padding centres each output on its 2x2 input block.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = False, clamp: float | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, activation=activation, clamp=clamp)
        self.blur = Blur()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(F.conv2d(self.blur(x), self.weight * self.weight_gain, self.bias, stride=2,
                                    padding=self.padding))


class DiscriminatorBlock(nn.Module):
    """Residual block: (3x3 conv, downsampling 3x3 conv) + downsampling 1x1 skip, times 1/sqrt(2).

    Args:
        in_channels: feature maps at this resolution.
        out_channels: feature maps at half the resolution.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation=True, clamp=CONV_CLAMP)
        self.conv1 = _DownConv(in_channels, out_channels, 3, activation=True, clamp=CONV_CLAMP)
        self.skip = _DownConv(in_channels, out_channels, 1, bias=False)  # unclamped, as in the official code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * RESIDUAL_GAIN


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: images ``[B, channels, S, S]`` -> logits ``[B]``.

    Args:
        image_size: input side S (a power of two, at least 8).
        channels: image channels.
        channel_base: feature maps at resolution r are ``min(channel_base // r, channel_max)``.
        channel_max: the most feature maps at any resolution.
        mbstd_group_size: samples per minibatch-stddev group (the official 4; a smaller
            micro-batch forms groups of its own size, as ``min(4, batch)`` in the official code).
    """

    def __init__(self, image_size: int, channels: int, channel_base: int, channel_max: int,
                 mbstd_group_size: int = 4) -> None:
        super().__init__()
        self.image_size, self.channels = image_size, channels
        resolutions = [2 ** k for k in range(int(math.log2(image_size)), 2, -1)]  # S, ..., 8

        def width(r: int) -> int:
            return channels_at(r, channel_base, channel_max)

        self.fromrgb = EqualConv2d(channels, width(image_size), 1, activation=True, clamp=CONV_CLAMP)
        self.blocks = nn.Sequential(*(DiscriminatorBlock(width(r), width(r // 2)) for r in resolutions))
        c4 = width(4)
        self.mbstd = MinibatchStdDev(group_size=mbstd_group_size, num_channels=1)
        self.conv = EqualConv2d(c4 + 1, c4, 3, activation=True, clamp=CONV_CLAMP)
        self.fc = EqualLinear(c4 * 4 * 4, c4, activation=True)
        self.out = EqualLinear(c4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Realness logits ``[B]``."""
        if x.ndim != 4 or x.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(f"expected images [B, {self.channels}, {self.image_size}, {self.image_size}], "
                             f"got {list(x.shape)}")
        x = self.blocks(self.fromrgb(x))
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


def build_generator(model_args: Mapping[str, Any]) -> Generator:
    """The :class:`Generator` described by :func:`model_args_from` output."""
    return Generator(**{key: model_args[key] for key in ("image_size", "channels", *_INT_KEYS, "mapping_lr_mul")})


def build_discriminator(model_args: Mapping[str, Any]) -> Discriminator:
    """The :class:`Discriminator` described by :func:`model_args_from` output."""
    return Discriminator(**{key: model_args[key] for key in _D_KEYS})


FAMILY = AdversarialFamily(
    name="stylegan2", section="stylegan2", model_args_from=model_args_from,
    build_generator=build_generator, build_discriminator=build_discriminator,
    objective=lambda s: Objective(loss="non-saturating", r1_gamma=s.r1_gamma, r1_interval=s.r1_interval,
                                  pl_weight=s.pl_weight, pl_interval=s.pl_interval, style_mixing=s.style_mixing,
                                  generator_first=True),
    progressive=False, truncation=True,
)
