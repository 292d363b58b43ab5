"""The denoiser of openai/guided-diffusion (Dhariwal & Nichol 2021), as the authors ran it.

The paper's diffusion model is guided-diffusion's ``UNetModel`` trained with
``--image_size 256 --num_channels 64 --num_res_blocks 3`` and the repository's defaults for
everything else (PAPER-FIDELITY.md): channel multipliers (1, 1, 2, 2, 4, 4), self-attention
on the 16x16 and 8x8 feature maps and in the middle block, 4 heads, scale-shift norm,
no dropout, no learned variance (5 channels in, 5 out), resampling by convolutions
(``resblock_updown`` off), class-unconditional. At those settings this network has
41,125,637 parameters, the authors' count.

The structure, written here from the published design:

* timestep embedding: sinusoidal features of width ``model_channels`` (MONAI's
  :func:`get_timestep_embedding` computes exactly guided-diffusion's: cos half then sin
  half, max period 10000) through Linear, SiLU, Linear to ``4 * model_channels``;
* :class:`ResBlock`: GroupNorm, SiLU, 3x3 conv; the embedding through SiLU, Linear to a
  scale and a shift applied after the second GroupNorm as ``norm(h) * (1 + scale) + shift``
  (or added before it without scale-shift norm); SiLU, dropout, a zero-initialised 3x3
  conv; a 1x1 conv on the skip path when the width changes;
* :class:`AttentionBlock`: GroupNorm, a 1x1 conv to q, k, v laid out head by head (the
  "legacy" order), softmax attention with q and k each scaled by ``head_dim ** -0.25``,
  a zero-initialised 1x1 output projection, residual;
* encoder: a 3x3 conv, then per level ``num_res_blocks`` ResBlocks (each followed by
  attention where the feature map has an attention size) and a stride-2 3x3 conv between
  levels; middle: ResBlock, attention, ResBlock; decoder: per level ``num_res_blocks + 1``
  ResBlocks on the concatenation with the matching encoder output, attention likewise,
  and nearest-neighbour upsampling plus a 3x3 conv between levels; out: GroupNorm, SiLU,
  a zero-initialised 3x3 conv.

GroupNorm runs in float32 (guided-diffusion's ``GroupNorm32``). Parameter names follow
guided-diffusion's (``input_blocks.1.0.in_layers.2.weight``, ``middle_block.1.qkv.weight``,
...), so a state dict saved by that code loads into this module. MONAI's own diffusion
blocks do not fit: its ResnetBlock has no scale-shift norm and another GroupNorm epsilon,
and its attention has separate q/k/v projections without the zero-initialised output.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding, zero_module
from torch import nn

NORM_GROUPS = 32  # guided-diffusion's normalization(): GroupNorm32(32, channels)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class TimestepBlock(nn.Module):
    """A module whose forward also takes the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the embedding to the children that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (guided-diffusion's ``conv_resample``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding (see the module docstring)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = True, groups: int = NORM_GROUPS) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(),
                                        nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with ``num_heads`` heads and a residual connection."""

    def __init__(self, channels: int, num_heads: int, groups: int = NORM_GROUPS) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention width {channels} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        length, head = qkv.shape[-1], c // self.num_heads
        # Legacy layout: the 3c channels are [q, k, v] of head 0, then of head 1, ...
        q, k, v = qkv.reshape(b * self.num_heads, 3 * head, length).split(head, dim=1)
        scale = head ** -0.25
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, length)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


class GuidedUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (2D, unconditional, no learned variance).

    Args:
        image_size: input height and width (each of the ``len(channel_mult) - 1``
            downsamplings halves it).
        in_channels: image channels (5: four MR sequences and the annotation).
        model_channels: width of the first level (``--num_channels``).
        out_channels: predicted-noise channels (``in_channels`` without learned sigma).
        num_res_blocks: ResBlocks per encoder level (the decoder has one more).
        attention_resolutions: feature-map sizes (e.g. 16 and 8) that get self-attention,
            as guided-diffusion's ``--attention_resolutions``.
        channel_mult: width multiplier per level.
        num_heads: attention heads (guided-diffusion's ``num_head_channels=-1``).
        dropout: dropout before each ResBlock's last conv.
        use_scale_shift_norm: condition ResBlocks by scale and shift (else by addition).
        norm_groups: GroupNorm groups (32 in guided-diffusion; smaller only for tiny tests).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], channel_mult: Sequence[int],
                 num_heads: int = 4, dropout: float = 0.0, use_scale_shift_norm: bool = True,
                 norm_groups: int = NORM_GROUPS) -> None:
        super().__init__()
        check_shape(image_size, channel_mult, attention_resolutions)
        self.model_channels = model_channels
        attention_ds = {image_size // int(size) for size in attention_resolutions}
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, norm_groups)

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads, norm_groups)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attention(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_ds:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(norm_groups, ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Predicted noise eps(x_t, t) for images `x` [N, C, H, W] at integer `timesteps` [N]."""
        emb = self.time_embed(get_timestep_embedding(timesteps, self.model_channels))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


def check_shape(image_size: int, channel_mult: Sequence[int], attention_resolutions: Sequence[int]) -> None:
    """Raise ValueError when `image_size` does not halve ``len(channel_mult) - 1`` times or an
    attention size is not one of the feature-map sizes."""
    if not channel_mult:
        raise ValueError("channel_mult needs at least one level")
    factor = 2 ** (len(channel_mult) - 1)
    if image_size % factor:
        raise ValueError(f"image size {image_size} is not divisible by {factor} "
                         f"(channel_mult has {len(channel_mult)} levels, each halving the size)")
    sizes = [image_size // 2 ** level for level in range(len(channel_mult))]
    unknown = sorted(set(int(s) for s in attention_resolutions) - set(sizes), reverse=True)
    if unknown:
        raise ValueError(f"attention_resolutions {unknown} are not feature-map sizes of this network "
                         f"(at image size {image_size}: {sizes})")
