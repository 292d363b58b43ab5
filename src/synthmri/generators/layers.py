"""Network pieces the GAN families share (ProGAN, StyleGAN 1/2/3).

Only layers live here; losses, regularisers and the training step are in
:mod:`synthmri.generators.adversarial`. Conventions:

* Equalized learning rate (Karras et al. 2018): weights are stored N(0, 1) / ``lr_mul`` and
  scaled by He's constant at run time, so Adam sees every layer at the same scale.
* Leaky ReLU(0.2) is followed by a gain of sqrt(2) (:func:`lrelu`) so activations keep
  unit variance.
* Progressive networks (ProGAN, StyleGAN 1) keep their growth state in a buffer
  (:class:`Progressive`): it is saved with the weights and copied into the EMA generator.
* Random inputs of a forward pass (noise maps) come from an explicit ``torch.Generator``
  through :func:`gaussian`, so a seeded sample is the same on every run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU(0.2) times sqrt(2)."""
    return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN


def clamp_mixed(x: torch.Tensor, limit: float | None) -> torch.Tensor:
    """``x`` clamped to [-limit, limit] under autocast (mixed precision), else unchanged.

    StyleGAN2/3's ``conv_clamp`` guards reduced-precision activations against overflow; the
    official ``train.py`` turns it off with ``--fp32``, and so does full precision here.
    """
    if limit is None or not torch.is_autocast_enabled(x.device.type):
        return x
    return x.clamp(-limit, limit)


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at `resolution`: ``min(channel_base // resolution, channel_max)``, at least 1.

    This is StyleGAN2-ADA's rule. The TF1 codes (ProGAN, StyleGAN 1, StyleGAN2-TF) write it
    per stage, ``nf(stage) = min(fmap_base / 2**stage, fmap_max)`` with ``stage = log2(r) - 1``,
    i.e. ``2 * fmap_base / r``: their ``fmap_base`` is half of ``channel_base`` (ProGAN's and
    StyleGAN 1's 8192 is a ``channel_base`` of 16384).
    """
    return max(1, min(channel_base // resolution, channel_max))


def gaussian(shape: tuple[int, ...], rng: torch.Generator | None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, 1) noise of `shape` on `device`, drawn from `rng` (the global RNG when None).

    With a CPU `rng` and a CUDA `device`, a CUDA generator is seeded from `rng`, so the
    noise is reproducible per device without drawing it on the CPU.
    """
    device = torch.device(device)
    if rng is None or rng.device.type == device.type:
        return torch.randn(shape, generator=rng, device=device, dtype=dtype)
    seed = int(torch.randint(0, 2**62, (1,), generator=rng))
    local = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=local, device=device, dtype=dtype)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate.

    Args:
        in_features: input width.
        out_features: output width.
        bias_init: initial bias.
        lr_mul: learning-rate multiplier (0.01 in StyleGAN's mapping network).
        activation: apply :func:`lrelu` after the affine map.
    """

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Same-padded convolution with equalized learning rate.

    Args:
        in_channels: input feature maps.
        out_channels: output feature maps.
        kernel_size: odd kernel size (padding keeps the spatial size).
        bias: learn a bias.
        activation: apply :func:`lrelu` after the convolution.
        clamp: clamp the output to [-clamp, clamp] under mixed precision (StyleGAN2's
            ``conv_clamp``, see :func:`clamp_mixed`); None: never.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = False, clamp: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.activation = activation
        self.clamp = clamp

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The activation, then the optional clamp (StyleGAN2's ``conv_clamp``)."""
        return clamp_mixed(lrelu(x) if self.activation else x, self.clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding))


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit mean square (ProGAN; StyleGAN's z)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class MappingNetwork(nn.Module):
    """z -> w through an MLP, broadcast to ``num_ws`` style inputs, with truncation.

    ``w_avg`` tracks the mean w during training (when called with ``update_w_avg=True``);
    truncation pulls w toward it: ``w_avg + psi * (w - w_avg)``.

    Args:
        z_dim: latent width.
        w_dim: style width.
        num_ws: style inputs the synthesis network consumes.
        layers: MLP depth.
        lr_mul: learning-rate multiplier of the MLP.
        w_avg_beta: decay of the running mean of w.
    """

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, layers: int = 8, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        self.norm = PixelNorm()
        widths = [z_dim] + [w_dim] * layers
        self.net = nn.Sequential(*(EqualLinear(a, b, lr_mul=lr_mul, activation=True)
                                   for a, b in zip(widths[:-1], widths[1:])))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        """Styles ``[B, num_ws, w_dim]`` for latents ``[B, z_dim]``.

        Args:
            z: latents.
            truncation_psi: pull w toward ``w_avg`` (1 = no truncation).
            update_w_avg: move the running mean of w toward this batch's mean (training).
            truncation_cutoff: truncate only the first this many style inputs (StyleGAN 1's
                ``truncation_cutoff``); None truncates all.
        """
        w = self.net(self.norm(z))
        if update_w_avg:
            self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi == 1.0:
            return w.unsqueeze(1).repeat(1, self.num_ws, 1)
        truncated = self.w_avg.to(w.dtype).lerp(w, truncation_psi)
        if truncation_cutoff is None or truncation_cutoff >= self.num_ws:
            return truncated.unsqueeze(1).repeat(1, self.num_ws, 1)
        cut = max(0, truncation_cutoff)
        return torch.cat([truncated.unsqueeze(1).repeat(1, cut, 1),
                          w.unsqueeze(1).repeat(1, self.num_ws - cut, 1)], dim=1)


class MinibatchStdDev(nn.Module):
    """Append the feature-averaged standard deviation over groups of the batch (ProGAN).

    Lets the discriminator see the variety of a batch, which discourages mode collapse.

    Args:
        group_size: samples per group (the batch is split into groups of at most this many).
        num_channels: feature maps appended.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        group = min(self.group_size, n)
        if n % group:
            group = math.gcd(n, group)
        f = self.num_channels
        y = x.reshape(group, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # [n / group, f]
        y = y.reshape(-1, f, 1, 1).repeat(group, 1, h, w)
        return torch.cat([x, y], dim=1)


class NoiseInjection(nn.Module):
    """Add per-pixel Gaussian noise with a learned strength (StyleGAN 1/2).

    Args:
        channels: feature maps.
        per_channel: one strength per feature map (StyleGAN 1); False: one scalar strength
            per layer (StyleGAN2's ``noise_strength``).
    """

    def __init__(self, channels: int, per_channel: bool = True) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1) if per_channel else torch.zeros(()))

    def forward(self, x: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        return x + self.strength.to(x.dtype) * gaussian((n, 1, h, w), rng, x.device, x.dtype)


class Blur(nn.Module):
    """Depthwise [1, 3, 3, 1] binomial low-pass filter (StyleGAN 1/2), same spatial size.

    The even kernel is padded one pixel on the leading side and two on the trailing side,
    so a blur after nearest upsampling (or before 2x downsampling) stays centred.
    """

    def __init__(self) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        kernel = torch.outer(taps, taps)
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (1, 2, 1, 2), mode="constant")
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, 4, 4), groups=c)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling."""
    return F.avg_pool2d(x, 2)


def upsample_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour upsampling to ``size`` x ``size`` (identity when already there)."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="nearest")


class Progressive(nn.Module):
    """Growth state of a progressively grown network: a level and a fade-in weight.

    Level 0 is 4x4 and level ``L = log2(size) - 2`` the full resolution. While a level is
    faded in (``alpha`` < 1) its output is blended with the previous level's, upsampled.
    Networks below full resolution still take and return full-size images (inputs are
    average-pooled down, outputs nearest-upsampled), so callers never see the growth.
    The state is a buffer: it travels with ``state_dict`` and into the EMA generator.
    """

    def __init__(self, image_size: int) -> None:
        super().__init__()
        levels = int(math.log2(image_size)) - 2
        if image_size < 4 or 2 ** (levels + 2) != image_size:
            raise ValueError(f"progressive growing needs a power-of-two image size of at least 4, got {image_size}")
        self.image_size = image_size
        self.max_level = levels
        self.register_buffer("growth", torch.tensor([float(levels), 1.0]))

    @property
    def level(self) -> int:
        return int(self.growth[0])

    @property
    def alpha(self) -> float:
        return float(self.growth[1])

    def set_growth(self, level: int, alpha: float) -> None:
        """Train at `level` (0 = 4x4) with the newest level blended in by `alpha` in [0, 1]."""
        if not 0 <= level <= self.max_level or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"growth must have 0 <= level <= {self.max_level} and 0 <= alpha <= 1, "
                             f"got level {level}, alpha {alpha}")
        self.growth.copy_(torch.tensor([float(level), float(alpha)]))
