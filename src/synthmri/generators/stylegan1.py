"""StyleGAN (1): a style-based generator grown progressively, after ProGAN.

Karras, Laine and Aila, "A Style-Based Generator Architecture for Generative Adversarial
Networks", CVPR 2019. A mapping network turns z into an intermediate latent w, broadcast to
one style input per synthesis layer. Synthesis starts from a learned constant 4x4 tensor;
every layer is a 3x3 convolution (nearest upsampling and a blur at the start of each
resolution), per-pixel noise with a learned strength, leaky ReLU and AdaIN: instance
normalisation followed by a per-channel scale and bias computed from w. Each resolution has
a linear 1x1 ``toRGB`` and new resolutions fade in as in ProGAN.

The discriminator is ProGAN's (:class:`synthmri.generators.progan.Discriminator`) with a
blur before each downsampling, as in the paper. Noise maps come from an explicit
``torch.Generator`` so a seeded sample is reproducible. The loss (non-saturating with R1
and style mixing) is the shared adversarial trainer's business, not this module's.

Truncation follows the official ``G_style``: psi pulls only the first
:data:`TRUNCATION_CUTOFF` style inputs (4x4 to 32x32) toward the average w. The authors
sampled with psi 0.7 (``generator.stylegan1.truncation_psi``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from synthmri.generators.adversarial import AdversarialFamily, Objective
from synthmri.generators.layers import (
    Blur,
    EqualConv2d,
    EqualLinear,
    MappingNetwork,
    NoiseInjection,
    Progressive,
    channels_at,
    lrelu,
    upsample2x,
    upsample_to,
)
from synthmri.generators.progan import Discriminator, check_common, resolution_at

if TYPE_CHECKING:
    from synthmri.config import StyleGAN1Config

KEY = "generator.stylegan1"
TRUNCATION_CUTOFF = 8  # the official G_style's truncation_cutoff: styles of 4x4..32x32


def model_args_from(section: StyleGAN1Config, image_size: int, channels: int) -> dict[str, Any]:
    """Everything that rebuilds the StyleGAN 1 networks (JSON-able, architecture only).

    Raises:
        ConfigError: (a ValueError) an image size the network cannot grow to.
    """
    args = check_common(section, KEY, image_size, channels)
    return {**args, "w_dim": section.w_dim, "mapping_layers": section.mapping_layers,
            "mapping_lr_mul": float(section.mapping_lr_mul)}


class AdaIN(nn.Module):
    """Instance normalisation, then a per-channel scale and bias computed from the style w.

    The scale's bias starts at 1, so a fresh layer passes normalised features through.
    """

    def __init__(self, channels: int, w_dim: int) -> None:
        super().__init__()
        self.scale = EqualLinear(w_dim, channels, bias_init=1.0)
        self.bias = EqualLinear(w_dim, channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=(2, 3), keepdim=True)
        x = x * torch.rsqrt(x.square().mean(dim=(2, 3), keepdim=True) + 1e-8)
        return x * self.scale(w)[:, :, None, None] + self.bias(w)[:, :, None, None]


class StyledLayer(nn.Module):
    """[upsample] -> [3x3 conv] -> [blur] -> noise -> bias -> leaky ReLU -> AdaIN.

    Args:
        in_channels: input feature maps.
        out_channels: output feature maps.
        w_dim: style width.
        conv: convolve (False for the layer on the constant input).
        upsample: nearest 2x upsampling before, and a blur after, the convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv: bool = True,
                 upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        # The bias is added after the blur: a zero-padded blur would fade it at the borders.
        self.conv = EqualConv2d(in_channels, out_channels, 3, bias=False) if conv else None
        self.blur = Blur() if upsample else None
        self.noise = NoiseInjection(out_channels)
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.adain = AdaIN(out_channels, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        if self.upsample:
            x = upsample2x(x)
        if self.conv is not None:
            x = self.conv(x)
        if self.blur is not None:
            x = self.blur(x)
        x = lrelu(self.noise(x, rng) + self.bias.to(x.dtype))
        return self.adain(x, w)


class Generator(Progressive):
    """StyleGAN 1 generator: latent ``[B, z_dim]`` -> images ``[B, channels, S, S]`` (linear output).

    Two styled layers per resolution, so ``mapping.num_ws = 2 * (max_level + 1)``; at growth
    level l only the first ``2 * (l + 1)`` style inputs are used.

    Args:
        image_size: full output side length S (a power of two).
        channels: image channels.
        z_dim: latent width.
        w_dim: style width.
        channel_base: feature maps at resolution r are ``channels_at(r, channel_base, channel_max)``.
        channel_max: upper bound on feature maps.
        mapping_layers: depth of the mapping MLP.
        mapping_lr_mul: learning-rate multiplier of the mapping MLP.
    """

    def __init__(self, image_size: int, channels: int, z_dim: int, w_dim: int, channel_base: int,
                 channel_max: int, mapping_layers: int = 8, mapping_lr_mul: float = 0.01) -> None:
        Progressive.__init__(self, image_size)
        self.z_dim, self.w_dim, self.channels = z_dim, w_dim, channels
        widths = [channels_at(resolution_at(level), channel_base, channel_max) for level in range(self.max_level + 1)]
        self.widths = widths
        self.mapping = MappingNetwork(z_dim, w_dim, num_ws=2 * len(widths), layers=mapping_layers,
                                      lr_mul=mapping_lr_mul)
        self.const = nn.Parameter(torch.ones(1, widths[0], 4, 4))
        layers: list[StyledLayer] = []
        for level, width in enumerate(widths):
            if level == 0:
                layers.append(StyledLayer(width, width, w_dim, conv=False))
            else:
                layers.append(StyledLayer(widths[level - 1], width, w_dim, upsample=True))
            layers.append(StyledLayer(width, width, w_dim))
        self.layers = nn.ModuleList(layers)  # layers[i] consumes style input i
        self.to_rgb = nn.ModuleList(EqualConv2d(width, channels, 1) for width in widths)

    def synthesis(self, ws: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """Images ``[B, channels, S, S]`` from styles ``[B, num_ws, w_dim]`` at the current level.

        Args:
            ws: one style per layer (differing styles give style mixing).
            rng: source of the noise maps; the global RNG when None.
        """
        if ws.ndim != 3 or ws.shape[1:] != (self.mapping.num_ws, self.w_dim):
            raise ValueError(f"styles must be [B, {self.mapping.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        level, alpha = self.level, self.alpha
        x = self.const.to(ws.dtype).expand(ws.shape[0], -1, -1, -1)
        previous = x
        for i in range(level + 1):
            previous = x  # ends as level - 1's features, the fade-in's other input
            x = self.layers[2 * i](x, ws[:, 2 * i], rng)
            x = self.layers[2 * i + 1](x, ws[:, 2 * i + 1], rng)
        out = self.to_rgb[level](x)
        if level > 0 and alpha < 1.0:
            # Fade-in: blend with the previous level's image, which the new level refines.
            out = torch.lerp(upsample2x(self.to_rgb[level - 1](previous)), out, alpha)
        return upsample_to(out, self.image_size)

    @property
    def active_ws(self) -> int:
        """Style inputs the current growth level reads (style mixing cuts among these)."""
        return 2 * (self.level + 1)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, rng: torch.Generator | None = None) -> torch.Tensor:
        """Images for latents ``[B, z_dim]``: ``synthesis(mapping(z, truncation_psi), rng)``, the
        truncation limited to the first :data:`TRUNCATION_CUTOFF` style inputs."""
        return self.synthesis(self.mapping(z, truncation_psi, truncation_cutoff=TRUNCATION_CUTOFF), rng)


def build_generator(model_args: dict[str, Any]) -> Generator:
    """The StyleGAN 1 generator for :func:`model_args_from`'s output (at full growth)."""
    return Generator(model_args["image_size"], model_args["channels"], model_args["z_dim"], model_args["w_dim"],
                     model_args["channel_base"], model_args["channel_max"], model_args["mapping_layers"],
                     model_args["mapping_lr_mul"])


def build_discriminator(model_args: dict[str, Any]) -> Discriminator:
    """ProGAN's discriminator with a blur before each downsampling (at full growth)."""
    return Discriminator(model_args["image_size"], model_args["channels"], model_args["channel_base"],
                         model_args["channel_max"], blur=True)


FAMILY = AdversarialFamily(
    name="stylegan1", section="stylegan1", model_args_from=model_args_from,
    build_generator=build_generator, build_discriminator=build_discriminator,
    objective=lambda s: Objective(loss="non-saturating", r1_gamma=s.r1_gamma, r1_interval=s.r1_interval,
                                  style_mixing=s.style_mixing),
    progressive=True, truncation=True,
)
