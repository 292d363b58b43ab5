"""Terms of the adversarial objectives, and progressive growth: what the GAN trainer applies.

Progressive families (ProGAN, StyleGAN 1) grow on a schedule in images seen
(:class:`GrowthSchedule`) from ``initial_resolution``; the global batch
(``minibatch_dict``) and the learning rates (``lr_dict``, ``discriminator_lr_dict``) follow
the resolution being trained, and both optimisers are reset (moments cleared) whenever the
TF1 level of detail enters or leaves a fade-in (``reset_opt_for_new_lod``). Discriminator
augmentation (:func:`augment`) moves all five channels together and changes intensities of
the four images only, so the annotation channel stays a valid label map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synthmri.config import ConfigError
from synthmri.generators.pixels import ANNOTATION

#: The adversarial losses an :class:`Objective` may name.
LOSSES = ("wgan-gp", "non-saturating")


@dataclass(frozen=True)
class GrowthSchedule:
    """Progressive growing by images seen: stabilise the first level, then fade in and stabilise each level.

    The timeline of the official ``TrainingSchedule``: ``stable_kimg`` at the initial level,
    then per level ``fade_kimg`` of fade-in followed by ``stable_kimg``.

    Attributes:
        max_level: the full-resolution level (log2(size) - 2).
        fade_kimg: thousands of images over which each new level's alpha rises 0 -> 1.
        stable_kimg: thousands of images trained at each level once fully faded in.
        start_level: the level growth starts at (0 = 4x4; StyleGAN 1 starts at 1, 8x8).
    """

    max_level: int
    fade_kimg: float
    stable_kimg: float
    start_level: int = 0

    @property
    def _start(self) -> int:
        return min(self.start_level, self.max_level)

    def at(self, images_seen: int) -> tuple[int, float]:
        """``(level, alpha)`` after `images_seen` real images."""
        kimg = images_seen / 1000.0
        phase = self.fade_kimg + self.stable_kimg
        if phase <= 0:  # no growing configured: start at full resolution
            return self.max_level, 1.0
        if kimg < self.stable_kimg:
            return self._start, 1.0
        grown, into = divmod(kimg - self.stable_kimg, phase)
        level = self._start + int(grown) + 1
        if level > self.max_level:
            return self.max_level, 1.0
        return level, min(1.0, into / self.fade_kimg) if self.fade_kimg > 0 else 1.0

    def lod(self, images_seen: int) -> float:
        """The TF1 codes' level of detail: 0 at full resolution, one more per halving,
        fractional while a level fades in."""
        level, alpha = self.at(images_seen)
        return float(self.max_level - level) + (1.0 - alpha)

    def next_change(self, images_seen: int) -> int | None:
        """The fewest images seen, above `images_seen`, at which the level differs; None at the top."""
        level, _ = self.at(images_seen)
        phase = self.fade_kimg + self.stable_kimg
        if level >= self.max_level or phase <= 0:
            return None
        edge = max(images_seen + 1, math.ceil((self.stable_kimg + (level - self._start) * phase) * 1000))
        while edge - 1 > images_seen and self.at(edge - 1)[0] != level:  # float rounding at the edge
            edge -= 1
        while self.at(edge)[0] == level:
            edge += 1
        return edge

    @property
    def full_kimg(self) -> float:
        """Images (thousands) until the full resolution is faded in."""
        return (self.max_level - self._start) * (self.fade_kimg + self.stable_kimg)


def augment(images: torch.Tensor, p: float, rng: torch.Generator) -> torch.Tensor:
    """Differentiable discriminator augmentation that keeps the annotation channel valid.

    Each sample is, with probability `p` each: mirrored left-right; shifted by a whole
    number of pixels (up to 1/8 of the size, zeros shifted in); and, in its four image
    channels only, given a random brightness offset and contrast factor. Geometric moves
    apply to all five channels alike and only move pixels, so annotation values stay
    labels; real and generated batches go through the same distribution of moves.

    Args:
        images: [B, 5, H, W] in [-1, 1] (background is -1).
        p: probability of each augmentation per sample; 0 returns `images` unchanged.
        rng: CPU generator for the random choices.
    """
    if p <= 0:
        return images
    n, _, h, w = images.shape
    draw = torch.rand((n, 4), generator=rng)
    flip = draw[:, 0] < p
    out = torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)
    shift = (draw[:, 1] < p).tolist()
    limit = max(1, h // 8)
    offsets = torch.randint(-limit, limit + 1, (n, 2), generator=rng).tolist()
    moved = []
    for i in range(n):
        sample = out[i]
        if shift[i]:
            dy, dx = offsets[i]
            # Pad with the background value, crop back: a translation, not a wrap-around.
            sample = F.pad(sample + 1.0, (limit, limit, limit, limit))
            sample = sample[:, limit - dy: limit - dy + h, limit - dx: limit - dx + w] - 1.0
        moved.append(sample)
    out = torch.stack(moved)
    colour = (draw[:, 2] < p).to(images.device)[:, None, None, None]
    brightness = (torch.randn((n, 1, 1, 1), generator=rng) * 0.1).to(images.device)
    contrast = torch.exp2(torch.randn((n, 1, 1, 1), generator=rng) * 0.25).to(images.device)
    adjusted = ((out[:, :ANNOTATION] + 1.0) * contrast + brightness * 2.0) - 1.0
    pictures = torch.where(colour, adjusted, out[:, :ANNOTATION])
    return torch.cat([pictures, out[:, ANNOTATION:]], dim=1)


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-sample squared gradient norm of D at the real images, |grad_x D(x)|^2 ([B])."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3))


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     rng: torch.Generator | None, t: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP: (|grad D| - 1)^2 at random interpolates of real and fake images ([B]).

    Args:
        t: interpolation weights ``[B, 1, 1, 1]`` in [0, 1]; drawn from `rng` when None.
    """
    if t is None:
        t = torch.rand((len(real), 1, 1, 1), generator=rng)
    t = t.to(real.device, real.dtype)
    mixed = real.detach().lerp(fake.detach(), t).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).square()



def resolution_of(level: int) -> int:
    """Side length of growth `level` (0 = 4x4)."""
    return 4 * 2**level


@dataclass(frozen=True)
class Objective:
    """A family's adversarial loss and regularisers (weights of zero turn a term off).

    Attributes:
        loss: ``wgan-gp`` or ``non-saturating``.
        gp_lambda: WGAN-GP gradient-penalty weight.
        drift: WGAN-GP drift weight on D(real)^2.
        r1_gamma: R1 weight gamma (the penalty is gamma / 2 * |grad|^2).
        r1_interval: discriminator steps between R1 evaluations (1 = every step).
        pl_weight: path-length penalty weight.
        pl_interval: generator steps between path-length evaluations.
        style_mixing: probability of mixing two latents in a generator batch.
        generator_first: the generator's phases run before the discriminator's
            (StyleGAN2-ADA / StyleGAN3's ``Gmain, Greg, Dmain, Dreg``); False: the TF1 order,
            discriminator first.
    """

    loss: str
    gp_lambda: float = 0.0
    drift: float = 0.0
    r1_gamma: float = 0.0
    r1_interval: int = 1
    pl_weight: float = 0.0
    pl_interval: int = 4
    style_mixing: float = 0.0
    generator_first: bool = False

    def check(self, section: str) -> None:
        """Raise ConfigError (naming ``generator.<section>``) for an impossible objective."""
        if self.loss not in LOSSES:
            raise ConfigError(f"generator.{section}: loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("gp_lambda", "drift", "r1_gamma", "pl_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"generator.{section}.{name} must not be negative, got {getattr(self, name)}")
        for name in ("r1_interval", "pl_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"generator.{section}.{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.style_mixing <= 1.0:
            raise ConfigError(f"generator.{section}.style_mixing must be in [0, 1], got {self.style_mixing}")
