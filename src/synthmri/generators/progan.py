"""Progressive GAN: networks that grow from 4x4 to full resolution with fade-in.

Karras, Aila, Laine and Lehtinen, "Progressive Growing of GANs for Improved Quality,
Stability, and Variation", ICLR 2018. The generator maps a pixel-normalised latent through
a dense 4x4 layer and one block of two 3x3 convolutions per resolution (nearest upsampling
in between), with pixel norm after every convolution; each resolution has a linear 1x1
``toRGB``. The discriminator mirrors it with 1x1 ``fromRGB`` layers and blocks of two 3x3
convolutions plus 2x2 average pooling, ending in minibatch stddev, a 3x3 convolution and
two dense layers. Every layer uses the equalized learning rate and leaky ReLU(0.2).

Growth lives in the :class:`~synthmri.generators.layers.Progressive` buffer. Both networks
speak full-size images at every level, so the training loop never resizes anything. The
loss (WGAN-GP with drift) is the shared adversarial trainer's business, not this module's.
The discriminator here also serves StyleGAN 1 (with ``blur=True``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from synthmri.config import ConfigError
from synthmri.generators.adversarial import AdversarialFamily, Objective
from synthmri.generators.layers import (
    Blur,
    EqualConv2d,
    EqualLinear,
    MinibatchStdDev,
    PixelNorm,
    Progressive,
    channels_at,
    downsample2x,
    upsample2x,
    upsample_to,
)

if TYPE_CHECKING:
    from synthmri.config import ProGANConfig


def resolution_at(level: int) -> int:
    """Side length of growth `level` (0 = 4x4)."""
    return 4 * 2**level


def check_common(section: Any, key: str, image_size: int, channels: int) -> dict[str, Any]:
    """The model args every progressive family shares, checked against the image size.

    The section's values were validated with the config (:mod:`synthmri.config.validate`).

    Args:
        section: a config section with ``z_dim``, ``channel_base`` and ``channel_max``.
        key: the section's dotted name for messages, e.g. ``generator.progan``.
        image_size: side length of the (square) training images.
        channels: image channels.

    Returns:
        ``image_size``, ``channels``, ``z_dim``, ``channel_base`` and ``channel_max``.

    Raises:
        ConfigError: an image size that is not a power of two >= 8, or no channels.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8 \
            or image_size & (image_size - 1):
        raise ConfigError(f"data.size: {key} grows progressively and needs a power-of-two image size "
                          f"of at least 8, got {image_size!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"{key} needs a positive number of image channels, got {channels!r}")
    return {"image_size": image_size, "channels": channels, "z_dim": section.z_dim,
            "channel_base": section.channel_base, "channel_max": section.channel_max}


def model_args_from(section: ProGANConfig, image_size: int, channels: int) -> dict[str, Any]:
    """Everything that rebuilds the ProGAN networks (JSON-able, architecture only).

    Raises:
        ConfigError: (a ValueError) an image size the network cannot grow to.
    """
    return check_common(section, "generator.progan", image_size, channels)


class GeneratorBlock(nn.Module):
    """Two 3x3 convolutions, each followed by leaky ReLU and pixel norm; optional 2x upsampling first."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv0 = EqualConv2d(in_channels, out_channels, 3, activation=True)
        self.conv1 = EqualConv2d(out_channels, out_channels, 3, activation=True)
        self.norm = PixelNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = upsample2x(x)
        x = self.norm(self.conv0(x))
        return self.norm(self.conv1(x))


class Generator(Progressive):
    """ProGAN generator: latent ``[B, z_dim]`` -> images ``[B, channels, S, S]`` (linear output).

    Args:
        image_size: full output side length S (a power of two).
        channels: image channels.
        z_dim: latent width.
        channel_base: feature maps at resolution r are ``channels_at(r, channel_base, channel_max)``.
        channel_max: upper bound on feature maps.
    """

    def __init__(self, image_size: int, channels: int, z_dim: int, channel_base: int, channel_max: int) -> None:
        Progressive.__init__(self, image_size)
        self.z_dim, self.channels = z_dim, channels
        widths = [channels_at(resolution_at(level), channel_base, channel_max) for level in range(self.max_level + 1)]
        self.widths = widths
        self.norm = PixelNorm()
        # The dense layer is the 4x4 block's first "convolution": its output is a 4x4 map.
        self.dense = EqualLinear(z_dim, widths[0] * 16, activation=True)
        self.conv4 = EqualConv2d(widths[0], widths[0], 3, activation=True)
        self.blocks = nn.ModuleList(GeneratorBlock(widths[level - 1], widths[level], upsample=True)
                                    for level in range(1, self.max_level + 1))
        self.to_rgb = nn.ModuleList(EqualConv2d(width, channels, 1) for width in widths)

    def features(self, z: torch.Tensor, level: int) -> list[torch.Tensor]:
        """Feature maps of levels 0..`level` for latents `z` (the last two feed the output)."""
        x = self.dense(self.norm(z)).reshape(z.shape[0], self.widths[0], 4, 4)
        x = self.norm(self.conv4(self.norm(x)))  # pixel norm per 4x4 position, as after any conv
        maps = [x]
        for block in self.blocks[:level]:
            maps.append(block(maps[-1]))
        return maps

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, rng: torch.Generator | None = None) -> torch.Tensor:
        """Images ``[B, channels, S, S]`` at the current growth level, upsampled to full size.

        Args:
            z: latents ``[B, z_dim]``.
            truncation_psi: must be 1.0; ProGAN has no intermediate latent to truncate.
            rng: unused (ProGAN's forward pass draws no noise); accepted for a uniform call.

        Raises:
            ValueError: ``truncation_psi`` other than 1.0.
        """
        if truncation_psi != 1.0:
            raise ValueError(f"ProGAN has no truncation trick; truncation_psi must be 1.0, got {truncation_psi}")
        level, alpha = self.level, self.alpha
        maps = self.features(z, level)
        out = self.to_rgb[level](maps[-1])
        if level > 0 and alpha < 1.0:
            # Fade-in: blend with the previous level's image, which the new level refines.
            previous = upsample2x(self.to_rgb[level - 1](maps[-2]))
            out = torch.lerp(previous, out, alpha)
        return upsample_to(out, self.image_size)


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convolutions with leaky ReLU, then 2x downsampling (average pool, or blur + subsample)."""

    def __init__(self, in_channels: int, out_channels: int, blur: bool = False) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation=True)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activation=True)
        self.blur = Blur() if blur else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(x))
        if self.blur is None:
            return downsample2x(x)
        # Blur.forward pads so that taking every second pixel of its output stays centred.
        return self.blur(x)[:, :, ::2, ::2]


class Discriminator(Progressive):
    """Progressive discriminator: images ``[B, channels, S, S]`` -> logits ``[B]``.

    Shared by ProGAN and StyleGAN 1 (which blurs before each downsampling).

    Args:
        image_size: full input side length S (a power of two).
        channels: image channels.
        channel_base: feature maps at resolution r are ``channels_at(r, channel_base, channel_max)``.
        channel_max: upper bound on feature maps.
        blur: low-pass filter before each downsampling (StyleGAN 1).
        mbstd_group_size: samples per minibatch-stddev group.
    """

    def __init__(self, image_size: int, channels: int, channel_base: int, channel_max: int, blur: bool = False,
                 mbstd_group_size: int = 4) -> None:
        Progressive.__init__(self, image_size)
        self.channels = channels
        widths = [channels_at(resolution_at(level), channel_base, channel_max) for level in range(self.max_level + 1)]
        self.widths = widths
        self.from_rgb = nn.ModuleList(EqualConv2d(channels, width, 1, activation=True) for width in widths)
        # blocks[l - 1] takes level l's resolution down to level l - 1's.
        self.blocks = nn.ModuleList(DiscriminatorBlock(widths[level], widths[level - 1], blur=blur)
                                    for level in range(1, self.max_level + 1))
        self.mbstd = MinibatchStdDev(group_size=mbstd_group_size, num_channels=1)
        self.conv4 = EqualConv2d(widths[0] + 1, widths[0], 3, activation=True)
        self.dense = EqualLinear(widths[0] * 16, widths[0], activation=True)
        self.out = EqualLinear(widths[0], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` for full-size images, average-pooled down to the current level."""
        level, alpha = self.level, self.alpha
        # Repeated 2x pooling, not one big pool: level l then sees bit-for-bit the input of
        # level l - 1 after one more halving, so alpha = 0 reproduces the smaller network.
        for _ in range(self.max_level - level):
            x = downsample2x(x)
        h = self.from_rgb[level](x)
        if level > 0:
            h = self.blocks[level - 1](h)
            if alpha < 1.0:
                previous = self.from_rgb[level - 1](downsample2x(x))
                h = torch.lerp(previous, h, alpha)
        for block in reversed(self.blocks[:max(level - 1, 0)]):
            h = block(h)
        h = self.conv4(self.mbstd(h))
        return self.out(self.dense(h.flatten(1))).squeeze(1)


def build_generator(model_args: dict[str, Any]) -> Generator:
    """The ProGAN generator for :func:`model_args_from`'s output (at full growth)."""
    return Generator(model_args["image_size"], model_args["channels"], model_args["z_dim"],
                     model_args["channel_base"], model_args["channel_max"])


def build_discriminator(model_args: dict[str, Any]) -> Discriminator:
    """The ProGAN discriminator for :func:`model_args_from`'s output (at full growth)."""
    return Discriminator(model_args["image_size"], model_args["channels"],
                         model_args["channel_base"], model_args["channel_max"])

FAMILY = AdversarialFamily(
    name="progan", section="progan", model_args_from=model_args_from,
    build_generator=build_generator, build_discriminator=build_discriminator,
    objective=lambda s: Objective(loss="wgan-gp", gp_lambda=s.gp_lambda, drift=s.drift),
    progressive=True, truncation=False,
)
