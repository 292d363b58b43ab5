"""The StyleGAN3-T family: "Alias-Free Generative Adversarial Networks" (Karras et al. 2021).

Pure PyTorch (no custom CUDA ops); networks only, the loss and training step live in
:mod:`synthmri.generators.adversarial`.

* The generator treats every feature map as a band-limited signal sampled on a grid. The
  input is a set of Fourier features evaluated on the first layer's grid; each layer does a
  modulated 3x3 convolution and a *filtered* leaky ReLU (upsample, non-linearity,
  low-pass, downsample) so that no frequency above a layer's cutoff aliases. Translating
  the input features by a sub-pixel amount (``synthesis.input.transform``) then translates
  the image (translation equivariance, config "T").
* Per-layer cutoffs, stopbands, sampling rates and canvas sizes follow the paper's
  schedule (:func:`_schedule`); the last two layers are critically sampled.
* Feature maps follow StyleGAN3's rule ``min(channel_base / 2 / cutoff, channel_max)``
  (a layer's width depends on its cutoff, not on its canvas size, which includes margins).
* Each synthesis layer divides its input by the running RMS of that input (a buffer,
  updated in ``train()`` mode only), as in the paper; ``eval()`` mode is deterministic.
* The discriminator is StyleGAN2's residual network (fromRGB, blocks of two 3x3 convs with
  a blurred stride-2 downsample and a 1x1 skip, minibatch stddev, conv, two dense layers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
from torch import nn

from synthmri.config import STYLEGAN3_CRITICAL_LAYERS, ConfigError
from synthmri.generators import stylegan2
from synthmri.generators.adversarial import AdversarialFamily, Objective
from synthmri.generators.layers import (
    LRELU_GAIN,
    LRELU_SLOPE,
    EqualLinear,
    MappingNetwork,
)

if TYPE_CHECKING:
    from synthmri.config import StyleGAN3Config

_CRITICAL = STYLEGAN3_CRITICAL_LAYERS  # critically sampled layers at the end (StyleGAN3's num_critical)
_OUTPUT_SCALE = 0.25  # the paper's output gain: keeps the initial images small
_MAGNITUDE_BETA = 0.999  # EMA decay of the input RMS (0.5 ** (32 / 20k) at batch 32)
_ARCH_KEYS = ("z_dim", "w_dim", "mapping_layers", "mapping_lr_mul", "channel_base", "channel_max",
              "num_layers", "margin_size", "first_cutoff", "first_stopband", "last_stopband_rel",
              "filter_size", "lrelu_upsampling")
_INT_KEYS = {"z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "num_layers",
             "margin_size", "filter_size", "lrelu_upsampling"}


def model_args_from(section: StyleGAN3Config, image_size: int, channels: int) -> dict[str, Any]:
    """The architecture (JSON-able) from the ``generator.stylegan3`` section, checked against the image size.

    The section's values were validated with the config (:mod:`synthmri.config.validate`).

    Raises:
        ConfigError: an image size that is not a power of two of at least 16 (naming
            ``data.size``), no channels, or a first cutoff above the image's Nyquist rate.
    """
    size = int(image_size)
    if size < 16 or size & (size - 1):
        raise ConfigError(f"data.size: StyleGAN3 needs a power-of-two image size >= 16, got {image_size}")
    if int(channels) < 1:
        raise ConfigError(f"StyleGAN3 needs at least one image channel, got {channels}")
    args: dict[str, Any] = {"image_size": size, "channels": int(channels)}
    for key in _ARCH_KEYS:
        value = getattr(section, key)
        args[key] = int(value) if key in _INT_KEYS else float(value)
    if not args["first_cutoff"] < size / 2:
        raise ConfigError(f"generator.stylegan3.first_cutoff must be in (0, image_size / 2 = {size / 2:g}), "
                          f"got {args['first_cutoff']}")
    return args


def _schedule(a: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per-layer cutoff, stopband, sampling rate, half-width, canvas size and width.

    Entry 0 is the input (Fourier features) and layer 0; entry ``i`` is layer ``i``'s output;
    the last entry is the toRGB layer. Cutoff and stopband grow geometrically and reach
    their final values ``num_critical`` layers before the end.
    """
    size, n = a["image_size"], a["num_layers"]
    exponent = np.minimum(np.arange(n + 1) / (n - _CRITICAL), 1.0)
    cutoffs = a["first_cutoff"] * (size / 2 / a["first_cutoff"]) ** exponent
    stopbands = a["first_stopband"] * (size / 2 * a["last_stopband_rel"] / a["first_stopband"]) ** exponent
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, size))))
    sizes = (rates + 2 * a["margin_size"]).astype(int)
    sizes[-2:] = size  # the last layers have no margin: they produce the image itself
    widths = np.maximum(np.rint(np.minimum(a["channel_base"] / 2 / cutoffs, a["channel_max"])), 1).astype(int)
    widths[-1] = a["channels"]
    return {"cutoff": cutoffs, "stopband": stopbands, "rate": rates, "size": sizes, "width": widths,
            "half_width": np.maximum(stopbands, rates / 2) - cutoffs}


def _lowpass(numtaps: int, cutoff: float, width: float, fs: float) -> torch.Tensor | None:
    """Kaiser-windowed sinc low-pass taps (unit DC gain), or None for a single tap.

    The transition band ``[cutoff, cutoff + width]`` sets the Kaiser window's beta.
    """
    if numtaps <= 1:
        return None
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    taps = scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta), fs=fs)
    return torch.as_tensor(taps, dtype=torch.float32)


def _crop_or_pad(x: torch.Tensor, dim: int, lo: int, hi: int) -> torch.Tensor:
    """Zero-pad `dim` by (lo, hi); negative amounts crop (as a view, without a copy)."""
    x = x.narrow(dim, max(-lo, 0), x.shape[dim] - max(-lo, 0) - max(-hi, 0))
    if lo > 0 or hi > 0:
        pad = (max(lo, 0), max(hi, 0))
        x = F.pad(x, pad if dim == 3 else (0, 0, *pad))
    return x


def _fir_axis(x: torch.Tensor, taps: torch.Tensor | None, dim: int, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0), gain: float = 1.0) -> torch.Tensor:
    """Resample along `dim` (2 = height, 3 = width), like ``upfirdn``: insert ``up - 1`` zeros
    after each sample, pad by `pad` (negative crops), convolve with ``gain * taps`` ('valid')
    and keep every `down`-th sample. Either `up` or `down` must be 1."""
    c, k = x.shape[1], 1 if taps is None else taps.numel()
    taps = x.new_ones(1) if taps is None else taps
    kernel = (taps * gain).to(x.dtype).reshape((1, 1, k, 1) if dim == 2 else (1, 1, 1, k)).expand(c, -1, -1, -1)
    stride = (up, 1) if dim == 2 else (1, up)
    if up > 1:  # polyphase: a strided transposed conv is zero insertion + 'full' conv, without the zeros
        x = F.conv_transpose2d(x, kernel, stride=stride, groups=c)
        return _crop_or_pad(x, dim, pad[0] - k + 1, pad[1] + up - k)
    x = _crop_or_pad(x, dim, *pad)
    stride = (down, 1) if dim == 2 else (1, down)
    if k == 1:
        return x[..., ::stride[0], ::stride[1]] * gain if gain != 1 else x[..., ::stride[0], ::stride[1]]
    return F.conv2d(x, kernel.flip(dim), stride=stride, groups=c)  # flip: conv2d correlates


class _SynthesisInput(nn.Module):
    """Fourier features on the first layer's grid, moved by a per-sample affine from w.

    ``transform`` (3x3 buffer, identity by default) maps output coordinates to feature
    coordinates, in image units (the image spans [-0.5, 0.5], one output pixel is
    ``1 / image_size``): a translation ``t`` gives ``out'(p) = out(p + t)``.
    """

    def __init__(self, w_dim: int, channels: int, size: int, rate: float, cutoff: float) -> None:
        super().__init__()
        self.size, self.rate, self.cutoff = int(size), float(rate), float(cutoff)
        # Frequencies uniform over the disc |f| <= cutoff; phases uniform (in cycles).
        radius = cutoff * torch.rand(channels).sqrt()
        angle = 2 * math.pi * torch.rand(channels)
        self.register_buffer("freqs", torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1))
        self.register_buffer("phases", torch.rand(channels) - 0.5)
        self.register_buffer("transform", torch.eye(3))
        self.weight = nn.Parameter(torch.randn(channels, channels))
        # [cos, sin, tx, ty] of a rotation and translation; starts as the identity.
        self.affine = EqualLinear(w_dim, 4)
        with torch.no_grad():
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.autocast(w.device.type, enabled=False):  # phases need float32 precision
            return self._features(w.float())

    def _features(self, w: torch.Tensor) -> torch.Tensor:
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)  # a pure rotation, whatever the scale
        cos, sin, tx, ty = t.unbind(1)
        one, zero = torch.ones_like(cos), torch.zeros_like(cos)
        rotate = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], 1).view(-1, 3, 3)
        shift = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], 1).view(-1, 3, 3)
        m = rotate @ shift @ self.transform.to(t.dtype)
        # f . (A p + t) = (f A) . p + f . t: transform the frequencies and phases, not the grid.
        phases = self.phases + (self.freqs @ m[:, :2, 2:]).squeeze(2)  # [B, C]
        freqs = self.freqs @ m[:, :2, :2]  # [B, C, 2]
        # Fade out what a transform pushed beyond the cutoff, before it reaches Nyquist.
        amplitude = (1 - (freqs.norm(dim=2) - self.cutoff) / (self.rate / 2 - self.cutoff)).clamp(0, 1)
        coords = (torch.arange(self.size, device=w.device, dtype=t.dtype) + 0.5 - self.size / 2) / self.rate
        arg = (freqs[..., 0, None, None] * coords + freqs[..., 1, None, None] * coords[:, None]
               + phases[..., None, None])  # [B, C, H, W]
        x = torch.sin(2 * math.pi * arg) * amplitude[..., None, None]
        return torch.einsum("bchw,oc->bohw", x, self.weight / math.sqrt(self.weight.shape[1]))


class _SynthesisLayer(nn.Module):
    """Modulated conv + filtered leaky ReLU from one sampling grid to the next.

    The toRGB layer (``is_torgb``) is a modulated 1x1 conv without demodulation, bias only.
    """

    def __init__(self, w_dim: int, spec: Mapping[str, np.ndarray], index: int, filter_size: int,
                 lrelu_upsampling: int, is_torgb: bool) -> None:
        super().__init__()
        i, o = max(index - 1, 0), index
        cin, cout = int(spec["width"][i]), int(spec["width"][o])
        self.is_torgb = is_torgb
        kernel = 1 if is_torgb else 3
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.register_buffer("magnitude_ema", torch.ones(()))
        in_rate, out_rate = float(spec["rate"][i]), float(spec["rate"][o])
        rate = max(in_rate, out_rate) * (1 if is_torgb else lrelu_upsampling)  # where the ReLU runs
        self.up, self.down = round(rate / in_rate), round(rate / out_rate)
        up_taps = filter_size * self.up if self.up > 1 and not is_torgb else 1
        down_taps = filter_size * self.down if self.down > 1 and not is_torgb else 1
        # (cutoff, stopband, sampling rate) of each filter, for inspection and tests.
        self.up_band = (float(spec["cutoff"][i]), float(spec["cutoff"][i] + spec["half_width"][i]), rate)
        self.down_band = (float(spec["cutoff"][o]), float(spec["cutoff"][o] + spec["half_width"][o]), rate)
        self.register_buffer("up_filter", _lowpass(up_taps, self.up_band[0], 2 * spec["half_width"][i], rate),
                             persistent=False)
        self.register_buffer("down_filter", _lowpass(down_taps, self.down_band[0], 2 * spec["half_width"][o],
                                                     rate), persistent=False)
        # Pad (or crop) so the 'full' conv output, resampled, lands on the output canvas.
        in_size, out_size = int(spec["size"][i]), int(spec["size"][o])
        total = (out_size - 1) * self.down + 1 - (in_size + kernel - 1) * self.up + up_taps + down_taps - 2
        self.pad = ((total + self.up) // 2, total - (total + self.up) // 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.training:  # track the input RMS; dividing by it keeps activations near unit scale
            rms2 = x.detach().float().square().mean()
            self.magnitude_ema.copy_(rms2.lerp(self.magnitude_ema, _MAGNITUDE_BETA))
        styles = self.affine(w)
        _, cin, k, _ = self.weight.shape
        weight = self.weight
        if self.is_torgb:
            styles = styles / math.sqrt(cin * k * k)
        else:  # normalise before modulating: same result after demodulation, safer in low precision
            weight = weight * weight.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()
            styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
        # Modulation as scaling of the activations: one ordinary conv for the whole batch.
        x = x * (styles * self.magnitude_ema.rsqrt())[:, :, None, None].to(x.dtype)
        x = F.conv2d(x, weight.to(x.dtype), padding=k - 1)  # 'full' conv: the margins are cropped later
        if not self.is_torgb:  # demodulate: unit expected output variance per sample and map
            demod = (weight.square().sum(dim=(2, 3)) @ styles.square().t() + 1e-8).rsqrt()  # [cout, B]
            x = x * demod.t()[:, :, None, None].to(x.dtype)
        x = x + self.bias.to(x.dtype)[:, None, None]
        for dim in (3, 2):
            x = _fir_axis(x, self.up_filter, dim, up=self.up, pad=self.pad, gain=self.up)
        gain = 1.0
        if not self.is_torgb:  # leaky ReLU; its sqrt(2) gain is applied by the (linear) low-pass
            x, gain = F.leaky_relu(x, LRELU_SLOPE), LRELU_GAIN
        x = _fir_axis(x, self.down_filter, 3, down=self.down, gain=gain)
        return _fir_axis(x, self.down_filter, 2, down=self.down)


class _Synthesis(nn.Module):
    """ws ``[B, num_ws, w_dim]`` -> images ``[B, channels, S, S]`` (``num_ws = num_layers + 2``).

    Args:
        model_args: the output of :func:`model_args_from`.
        output_clamp: clamp the output to ``[-output_clamp, output_clamp]`` (off when None).
    """

    def __init__(self, model_args: Mapping[str, Any], output_clamp: float | None = None) -> None:
        super().__init__()
        a = model_args
        spec = _schedule(a)
        self.image_size, self.channels, self.output_clamp = a["image_size"], a["channels"], output_clamp
        self.input = _SynthesisInput(a["w_dim"], int(spec["width"][0]), int(spec["size"][0]),
                                     float(spec["rate"][0]), float(spec["cutoff"][0]))
        self.layers = nn.ModuleList(
            _SynthesisLayer(a["w_dim"], spec, i, a["filter_size"], a["lrelu_upsampling"], i == a["num_layers"])
            for i in range(a["num_layers"] + 1))
        self.num_ws = len(self.layers) + 1

    def forward(self, ws: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """`rng` is accepted for interface parity; StyleGAN3 has no noise inputs."""
        x = self.input(ws[:, 0])
        for layer, w in zip(self.layers, ws[:, 1:].unbind(1)):
            x = layer(x, w)
        x = x * _OUTPUT_SCALE
        return x if self.output_clamp is None else x.clamp(-self.output_clamp, self.output_clamp)


class Generator(nn.Module):
    """Mapping network + alias-free synthesis network.

    Attributes:
        mapping: :class:`~synthmri.generators.layers.MappingNetwork` with ``num_layers + 2`` ws.
        synthesis: ``synthesis(ws, rng=None)``; ``synthesis.input.transform`` moves the input
            features and ``synthesis.output_clamp`` (None) optionally clamps the images.
    """

    def __init__(self, model_args: Mapping[str, Any]) -> None:
        super().__init__()
        self.z_dim, self.w_dim = model_args["z_dim"], model_args["w_dim"]
        self.image_size, self.channels = model_args["image_size"], model_args["channels"]
        self.synthesis = _Synthesis(model_args)
        self.mapping = MappingNetwork(self.z_dim, self.w_dim, self.synthesis.num_ws,
                                      layers=model_args["mapping_layers"], lr_mul=model_args["mapping_lr_mul"])

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0,
                rng: torch.Generator | None = None) -> torch.Tensor:
        """Images ``[B, channels, S, S]`` for latents ``z`` ``[B, z_dim]``."""
        return self.synthesis(self.mapping(z, truncation_psi), rng=rng)


def build_generator(model_args: Mapping[str, Any]) -> Generator:
    """A freshly initialised generator from :func:`model_args_from` output."""
    return Generator(model_args)


def build_discriminator(model_args: Mapping[str, Any]) -> nn.Module:
    """StyleGAN3 keeps StyleGAN2's residual discriminator: the same network, built from these args."""
    return stylegan2.build_discriminator(model_args)


FAMILY = AdversarialFamily(
    name="stylegan3", section="stylegan3", model_args_from=model_args_from,
    build_generator=build_generator, build_discriminator=build_discriminator,
    objective=lambda s: Objective(loss="non-saturating", r1_gamma=s.r1_gamma, r1_interval=s.r1_interval,
                                  style_mixing=s.style_mixing, generator_first=True),
    progressive=False, truncation=True,
)
