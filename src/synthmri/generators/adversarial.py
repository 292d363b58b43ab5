"""Adversarial training shared by the GAN families: objectives, regularisers, growth, sampling.

A GAN family (``progan.py``, ``stylegan1.py``...) supplies only its networks and an
:class:`Objective`; :class:`AdversarialFamily` turns them into a
:class:`~synthmri.generators.GeneratorFamily` that the common training loop drives. One
:meth:`AdversarialTrainer.step` runs the official training phases on one global batch:
discriminator then generator in the TF1 codes (ProGAN, StyleGAN 1), ``Gmain, Greg, Dmain,
Dreg`` in StyleGAN2-ADA / StyleGAN3 (``Objective.generator_first``), each phase one
optimiser step:

* ``wgan-gp`` (ProGAN): critic loss D(fake) - D(real) + lambda * gradient penalty on
  real/fake interpolates + drift * D(real)^2; generator loss -D(fake).
* ``non-saturating`` (StyleGAN 1-3): softplus(D(fake)) + softplus(-D(real)) with the R1
  penalty gamma/2 * |grad D(real)|^2, evaluated every ``r1_interval`` steps ("lazy") and
  scaled up by the interval; generator loss softplus(-D(fake)), plus the optional
  path-length penalty every ``pl_interval`` steps (StyleGAN2).

With lazy regularisation (an interval above 1) the regulariser is its own phase (``Greg``,
``Dreg``) with its own optimiser step on the steps it runs, scaled by the interval, and
Adam's learning rate and betas are adjusted by ``interval / (interval + 1)`` as in
StyleGAN2, so the regularised optimiser sees the same effective step; with an interval of 1
the penalty joins the main loss (``Gboth``, ``Dboth``).

Micro-batches (``batch_gpu``, the official ``--batch-gpu``): every phase splits the
process's batch into rounds of ``batch_gpu`` images, runs each round's forward and backward
pass and accumulates the gradients, then averages them across processes and steps once,
as the official ``training_loop.py``. Each round's loss is weighted by its share of the
batch, so the accumulated gradient is the full batch's mean gradient (the official code
sums the rounds' means, a constant factor Adam ignores). Latents (and WGAN-GP's
interpolation weights) are drawn for the whole batch and split, so a network without
batch-dependent layers gets the same update whatever ``batch_gpu`` is; minibatch standard
deviation groups within a round, as officially. Path length is computed on the first
``1 / PL_BATCH_SHRINK`` of each round's latents.

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
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthmri.config import ConfigError
from synthmri.generators.distributed import Runtime, device_of
from synthmri.generators.layers import gaussian
from synthmri.generators.pixels import ANNOTATION, to_uint8, to_unit_range

if TYPE_CHECKING:
    from synthmri.config import AdversarialConfig, Config

LOSSES = ("wgan-gp", "non-saturating")
PL_DECAY = 0.01  # path-length running mean: new = old + 0.01 * (batch mean - old)
PL_BATCH_SHRINK = 2  # path length on the first half of each micro-batch's latents (official pl_batch_shrink)


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


def _lazy_ratio(interval: int) -> float:
    return interval / (interval + 1) if interval > 1 else 1.0


def _adam(params: Any, lr: float, betas: tuple[float, float], interval: int) -> torch.optim.Adam:
    """Adam, adjusted for lazy regularisation every `interval` steps (StyleGAN2, appendix B)."""
    ratio = _lazy_ratio(interval)
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio), eps=1e-8)


def resolution_of(level: int) -> int:
    """Side length of growth `level` (0 = 4x4)."""
    return 4 * 2**level


@dataclass(frozen=True)
class Phase:
    """One official training phase: a network, its terms, and how often it runs.

    Attributes:
        name: ``Gmain``, ``Greg``, ``Gboth``, ``Dmain``, ``Dreg`` or ``Dboth``.
        main: the adversarial loss.
        reg: the regulariser (path length for G, R1 for D).
        interval: the phase runs on steps divisible by this; its regulariser is scaled by it.
    """

    name: str
    main: bool
    reg: bool
    interval: int

    @property
    def discriminator(self) -> bool:
        return self.name.startswith("D")


def phases_of(prefix: str, reg: bool, interval: int) -> list[Phase]:
    """``main`` and ``reg`` phases when the regulariser is lazy (interval > 1), else one ``both``/``main``."""
    if reg and interval > 1:
        return [Phase(f"{prefix}main", True, False, 1), Phase(f"{prefix}reg", False, True, interval)]
    return [Phase(f"{prefix}{'both' if reg else 'main'}", True, reg, 1)]


class AdversarialTrainer:
    """The official training phases on one global batch per call, with the family's objective.

    Args:
        generator: the generator being trained (train mode, on ``runtime.device``).
        discriminator: its discriminator (same device).
        objective: loss and regularisers.
        settings: the family's config section (learning rates, betas, batch, batch_gpu,
            augment_p; for progressive families ``minibatch_dict``, ``lr_dict`` and
            ``discriminator_lr_dict``).
        schedule: growth schedule of a progressive family, else None.
        runtime: device, autocast and gradient averaging.

    Attributes:
        planned_iterations: optimisation steps for ``settings.kimg`` (the per-resolution
            batch of ``minibatch_dict`` included); the training loop runs this many.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, objective: Objective,
                 settings: "AdversarialConfig", schedule: GrowthSchedule | None, runtime: Runtime) -> None:
        self.generator, self.discriminator = generator, discriminator
        self.objective, self.settings, self.schedule, self.runtime = objective, settings, schedule, runtime
        betas = (settings.beta1, settings.beta2)
        g_reg = objective.pl_weight > 0 and hasattr(generator, "mapping")
        d_reg = objective.r1_gamma > 0
        g_interval = objective.pl_interval if g_reg else 1
        d_interval = objective.r1_interval if d_reg else 1
        self.g_optimizer = _adam(generator.parameters(), settings.lr, betas, g_interval)
        self.d_optimizer = _adam(discriminator.parameters(), settings.discriminator_lr, betas, d_interval)
        self._lr_ratios = (_lazy_ratio(g_interval), _lazy_ratio(d_interval))
        g_phases, d_phases = phases_of("G", g_reg, g_interval), phases_of("D", d_reg, d_interval)
        self.phases = g_phases + d_phases if objective.generator_first else d_phases + g_phases
        progressive = schedule is not None
        self.minibatch_dict = dict(getattr(settings, "minibatch_dict", None) or {}) if progressive else {}
        self.lr_dict = dict(getattr(settings, "lr_dict", None) or {}) if progressive else {}
        self.discriminator_lr_dict = dict(getattr(settings, "discriminator_lr_dict", None) or {}) if progressive else {}
        self.images_seen = 0  # global, across processes: drives the growth schedule
        self.steps = 0
        self.pl_mean = torch.zeros((), device=runtime.device)
        self._lod_key: tuple[int, int] | None = None  # (floor, ceil) of the last step's level of detail
        self.planned_iterations = self._count_iterations()

    # --- schedule -----------------------------------------------------------------------

    def batch_at(self, images_seen: int) -> int:
        """The global batch of a step that starts after `images_seen` images."""
        if self.schedule is None or not self.minibatch_dict:
            return int(self.settings.batch_size)
        level, _ = self.schedule.at(images_seen)
        return int(self.minibatch_dict.get(resolution_of(level), self.settings.batch_size))

    def next_batch_size(self) -> int:
        """The global batch of the next step (the resolution's ``minibatch_dict`` entry, else ``batch_size``)."""
        return self.batch_at(self.images_seen)

    def _count_iterations(self) -> int:
        if self.schedule is None or not self.minibatch_dict:
            return int(self.settings.iterations)
        total = int(round(self.settings.kimg * 1000))
        images = steps = 0
        while images < total:  # one jump per constant-batch stretch of the schedule
            batch = self.batch_at(images)
            change = self.schedule.next_change(images)
            limit = total if change is None else min(total, change)
            count = max(1, -(-(limit - images) // batch))
            steps, images = steps + count, images + count * batch
        return max(1, steps)

    def reset_optimizers(self) -> None:
        """Clear both optimisers' moments and step counts (TF1's ``reset_optimizer_state``)."""
        for optimizer in (self.g_optimizer, self.d_optimizer):
            optimizer.state.clear()

    def _follow_schedule(self) -> tuple[int, float]:
        """Grow both networks, reset Adam on a new level of detail, set the resolution's learning rates."""
        assert self.schedule is not None
        level, alpha = self.schedule.at(self.images_seen)
        self.generator.set_growth(level, alpha)
        self.discriminator.set_growth(level, alpha)
        lod = self.schedule.lod(self.images_seen)
        key = (math.floor(lod), math.ceil(lod))
        if self._lod_key is not None and key != self._lod_key:
            self.reset_optimizers()  # the official reset_opt_for_new_lod
        self._lod_key = key
        resolution = resolution_of(level)
        for optimizer, base, table, ratio in (
                (self.g_optimizer, self.settings.lr, self.lr_dict, self._lr_ratios[0]),
                (self.d_optimizer, self.settings.discriminator_lr, self.discriminator_lr_dict, self._lr_ratios[1])):
            for group in optimizer.param_groups:
                group["lr"] = float(table.get(resolution, base)) * ratio
        return level, alpha

    # --- one step -----------------------------------------------------------------------

    def _micro(self, n: int) -> int:
        micro = int(self.settings.batch_gpu)
        if micro <= 0 or micro >= n:
            return n
        if n % micro:
            raise ValueError(f"batch_gpu ({micro}) must divide the per-process batch ({n})")
        return micro

    def _latents(self, n: int, rng: torch.Generator) -> torch.Tensor:
        return gaussian((n, self.generator.z_dim), rng, self.runtime.device)

    def _styles(self, z: torch.Tensor, rng: torch.Generator, update_w_avg: bool = False) -> torch.Tensor:
        """Styles for latents `z`, mixed with a second latent's with probability ``style_mixing``."""
        g = self.generator
        ws = g.mapping(z, update_w_avg=update_w_avg)
        if self.objective.style_mixing > 0 and float(torch.rand((), generator=rng)) < self.objective.style_mixing:
            # From a random layer on (among those the growth level reads), a second latent's styles.
            layers = min(ws.shape[1], int(getattr(g, "active_ws", ws.shape[1])))
            if layers > 1:
                cutoff = int(torch.randint(1, layers, (), generator=rng))
                ws = ws.clone()
                ws[:, cutoff:] = g.mapping(self._latents(len(z), rng))[:, cutoff:]
        return ws

    def _generate(self, z: torch.Tensor, rng: torch.Generator, update_w_avg: bool = False) -> torch.Tensor:
        """Fake images for latents `z` (styles mixed for StyleGANs)."""
        g = self.generator
        if not hasattr(g, "mapping"):
            return g(z, rng=rng)
        return g.synthesis(self._styles(z, rng, update_w_avg), rng=rng)

    def _d(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return self.discriminator(augment(images, self.settings.augment_p, rng))

    def step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """Run the phases on this process's share of a uint8 batch; returns named losses."""
        level: int | None = None
        if self.schedule is not None:
            level, alpha = self._follow_schedule()
        real = to_unit_range(batch.to(self.runtime.device, non_blocking=True))
        micro = self._micro(len(real))
        # One seed per phase, drawn every step: what a phase draws depends neither on
        # batch_gpu nor on which lazy phases run this step.
        seeds = torch.randint(0, 2**62, (len(self.phases),), generator=generator).tolist()
        losses: dict[str, float] = {}
        for phase, seed in zip(self.phases, seeds):
            if self.steps % phase.interval == 0:
                losses.update(self._run(phase, real, micro, torch.Generator().manual_seed(seed)))
        self.discriminator.requires_grad_(False)
        self.generator.requires_grad_(True)
        self.steps += 1
        self.images_seen += len(real) * self.runtime.world_size
        if level is not None:
            losses["growth_level"], losses["growth_alpha"] = float(level), float(alpha)
        return losses

    def _run(self, phase: Phase, real: torch.Tensor, micro: int, rng: torch.Generator) -> dict[str, float]:
        """One phase: accumulate the rounds' gradients, average them across processes, step once."""
        module, optimizer = ((self.discriminator, self.d_optimizer) if phase.discriminator
                             else (self.generator, self.g_optimizer))
        self.discriminator.requires_grad_(phase.discriminator)
        self.generator.requires_grad_(not phase.discriminator)
        n = len(real)
        z = self._latents(n, rng)  # drawn for the whole batch, then split into rounds
        t = None
        if phase.discriminator and phase.main and self.objective.loss == "wgan-gp" and self.objective.gp_lambda > 0:
            t = torch.rand((n, 1, 1, 1), generator=rng)
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        round_fn = self._d_round if phase.discriminator else self._g_round
        for start in range(0, n, micro):
            part = slice(start, start + micro)
            share = (min(n, start + micro) - start) / n
            for name, value in round_fn(phase, real[part], z[part], None if t is None else t[part], rng,
                                        share).items():
                totals[name] = totals.get(name, 0.0) + share * value
        self.runtime.average_gradients(module)
        optimizer.step()
        return totals

    def _d_round(self, phase: Phase, real: torch.Tensor, z: torch.Tensor, t: torch.Tensor | None,
                 rng: torch.Generator, share: float) -> dict[str, float]:
        """Discriminator terms of one round; backward with weight `share`; returns their values."""
        objective, run = self.objective, self.runtime
        terms: dict[str, float] = {}
        fake = None
        if phase.main:
            with run.autocast(), torch.no_grad():
                fake = self._generate(z, rng, update_w_avg=True)
        real_in = real.detach().requires_grad_(phase.reg)
        if phase.main and objective.loss == "wgan-gp":
            with run.autocast():
                real_logits = self._d(real_in, rng).float()
                fake_logits = self._d(fake, rng).float()
            loss = fake_logits.mean() - real_logits.mean()
            if objective.gp_lambda > 0:
                penalty = gradient_penalty(self.discriminator, real, fake, rng, t=t).mean()
                loss = loss + objective.gp_lambda * penalty
                terms["gradient_penalty"] = float(penalty.detach())
            loss = loss + objective.drift * real_logits.square().mean()
            terms["loss_d"] = float(loss.detach())
        else:
            loss = torch.zeros((), device=real.device)
            # Fakes down, reals up: two discriminator passes (minibatch stddev never mixes
            # reals with fakes), one backward (the official loss.py's two, summed).
            with run.autocast():
                if phase.main:
                    fake_logits = self._d(fake, rng).float()
                real_logits = self._d(real_in, rng).float()
            if phase.main:
                loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
                terms["loss_d"] = float(loss.detach())
        if phase.reg:
            r1 = r1_penalty(real_logits, real_in).mean()
            loss = loss + objective.r1_gamma / 2 * r1 * phase.interval
            terms["r1_penalty"] = float(r1.detach())
        (loss * share).backward()
        return terms

    def _g_round(self, phase: Phase, real: torch.Tensor, z: torch.Tensor, t: torch.Tensor | None,
                 rng: torch.Generator, share: float) -> dict[str, float]:
        """Generator terms of one round; backward with weight `share`; returns their values."""
        objective, run = self.objective, self.runtime
        terms: dict[str, float] = {}
        loss = torch.zeros((), device=z.device)
        if phase.main:
            with run.autocast():
                fake_logits = self._d(self._generate(z, rng), rng).float()
            g_loss = -fake_logits.mean() if objective.loss == "wgan-gp" else F.softplus(-fake_logits).mean()
            loss = loss + g_loss
            terms["loss_g"] = float(g_loss.detach())
        if phase.reg:
            penalty = self._path_length(z[:max(1, len(z) // PL_BATCH_SHRINK)], rng)
            loss = loss + objective.pl_weight * penalty * phase.interval
            terms["path_length_penalty"] = float(penalty.detach())
        (loss * share).backward()
        return terms

    def _path_length(self, z: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """StyleGAN2's path-length penalty: (|J_w^T y| - running mean)^2, y ~ N(0, I) / sqrt(HW).

        The gradient is taken with respect to the (mixed) styles, which stay in the mapping
        network's graph, as in the official ``loss.py``.
        """
        ws = self._styles(z, rng)
        with self.runtime.autocast():
            images = self.generator.synthesis(ws, rng=rng).float()
        noise = gaussian(tuple(images.shape), rng, images.device) / math.sqrt(images.shape[2] * images.shape[3])
        (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(dim=2).mean(dim=1).sqrt()
        mean = lengths.detach().mean()
        if self.runtime.distributed:
            import torch.distributed as dist

            dist.all_reduce(mean)
            mean /= self.runtime.world_size
        self.pl_mean.copy_(self.pl_mean.lerp(mean, PL_DECAY))
        return (lengths - self.pl_mean).square().mean()

    def state_dict(self) -> dict[str, Any]:
        """Discriminator weights, both optimisers and the counters a resumed run needs."""
        return {"discriminator": self.discriminator.state_dict(), "g_optimizer": self.g_optimizer.state_dict(),
                "d_optimizer": self.d_optimizer.state_dict(), "images_seen": self.images_seen,
                "steps": self.steps, "pl_mean": self.pl_mean.detach().cpu(),
                "lod_key": None if self._lod_key is None else list(self._lod_key)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.g_optimizer.load_state_dict(state["g_optimizer"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.images_seen, self.steps = int(state["images_seen"]), int(state["steps"])
        self.pl_mean = state["pl_mean"].to(self.runtime.device)
        key = state.get("lod_key")
        self._lod_key = None if key is None else (int(key[0]), int(key[1]))


@dataclass(frozen=True)
class AdversarialFamily:
    """A GAN family in the :data:`synthmri.generators.FAMILIES` registry.

    Attributes:
        name: registry name (``stylegan2``).
        section: attribute of ``cfg.generator`` holding the family's settings.
        model_args_from: ``(section, image_size, channels) -> model_args``.
        build_generator: ``model_args -> generator`` (``z_dim``; ``forward(z, truncation_psi, rng)``).
        build_discriminator: ``model_args -> discriminator`` (``forward(x) -> [B]`` logits).
        objective: ``section -> Objective``.
        progressive: networks grow (they provide ``set_growth``); schedule from the section's
            ``initial_resolution``, ``fade_kimg`` and ``stable_kimg``, the batch and learning
            rates by resolution from ``minibatch_dict``, ``lr_dict`` and ``discriminator_lr_dict``.
        truncation: sampling accepts ``truncation_psi`` (StyleGANs).
    """

    name: str
    section: str
    model_args_from: Callable[[Any, int, int], dict[str, Any]]
    build_generator: Callable[[Mapping[str, Any]], nn.Module]
    build_discriminator: Callable[[Mapping[str, Any]], nn.Module]
    objective: Callable[[Any], Objective]
    progressive: bool = False
    truncation: bool = True

    def settings(self, cfg: "Config") -> "AdversarialConfig":
        return getattr(cfg.generator, self.section)

    def model_args(self, cfg: "Config", image_size: int, channels: int = 5) -> dict[str, Any]:
        return self.model_args_from(self.settings(cfg), image_size, channels)

    def build(self, model_args: Mapping[str, Any]) -> nn.Module:
        return self.build_generator(model_args)

    def trainer(self, network: nn.Module, model_args: Mapping[str, Any], cfg: "Config",
                runtime: Runtime | None = None) -> AdversarialTrainer:
        runtime = runtime or Runtime()
        settings = self.settings(cfg)
        objective = self.objective(settings)
        objective.check(self.section)
        for key in ("lr", "discriminator_lr"):
            if getattr(settings, key) <= 0:
                raise ConfigError(f"generator.{self.section}.{key} must be positive, got {getattr(settings, key)}")
        if not 0.0 <= settings.augment_p <= 1.0:
            raise ConfigError(f"generator.{self.section}.augment_p must be in [0, 1], got {settings.augment_p}")
        schedule = self._schedule(network, settings)
        self._check_batches(network, settings, schedule, runtime)
        discriminator = self.build_discriminator(model_args).to(runtime.device)
        runtime.broadcast_module(discriminator)
        return AdversarialTrainer(network, discriminator, objective, settings, schedule, runtime)

    def _schedule(self, network: nn.Module, settings: "AdversarialConfig") -> GrowthSchedule | None:
        """The growth schedule of a progressive family (None otherwise), its tables checked."""
        if not self.progressive:
            return None
        key = f"generator.{self.section}"
        initial = getattr(settings, "initial_resolution", 4)
        if isinstance(initial, bool) or not isinstance(initial, int) or initial < 4 or initial & (initial - 1):
            raise ConfigError(f"{key}.initial_resolution must be a power of two of at least 4, got {initial!r}")
        for name in ("minibatch_dict", "lr_dict", "discriminator_lr_dict"):
            table = getattr(settings, name, None) or {}
            bad = {r: v for r, v in table.items() if r < 4 or r & (r - 1) or not v > 0
                   or (name == "minibatch_dict" and v != int(v))}
            if bad:
                raise ConfigError(f"{key}.{name}: keys must be resolutions (powers of two, at least 4) and "
                                  f"values positive{' integers' if name == 'minibatch_dict' else ''}, got {bad}")
        return GrowthSchedule(network.max_level, settings.fade_kimg, settings.stable_kimg,
                              start_level=int(math.log2(initial)) - 2)

    def _check_batches(self, network: nn.Module, settings: "AdversarialConfig", schedule: GrowthSchedule | None,
                       runtime: Runtime) -> None:
        """Every global batch the run can use splits across the processes and into ``batch_gpu`` rounds."""
        key = f"generator.{self.section}"
        micro = settings.batch_gpu
        if isinstance(micro, bool) or not isinstance(micro, int) or micro < 0:
            raise ConfigError(f"{key}.batch_gpu must be 0 (the whole batch) or a positive integer, got {micro!r}")
        batches = {int(settings.batch_size)}
        table = getattr(settings, "minibatch_dict", None) or {}
        if schedule is not None and table:
            levels = range(min(schedule.start_level, schedule.max_level), schedule.max_level + 1)
            batches = {int(table.get(resolution_of(level), settings.batch_size)) for level in levels}
        for batch in sorted(batches):
            if batch % runtime.world_size:
                raise ConfigError(f"{key}: the global batch {batch} must divide evenly across "
                                  f"{runtime.world_size} processes (batch_size, minibatch_dict)")
            local = batch // runtime.world_size
            if 0 < micro < local and local % micro:
                raise ConfigError(f"{key}.batch_gpu ({micro}) must divide the per-process batch {local} "
                                  f"(global batch {batch} over {runtime.world_size} process(es))")

    def sampling_options(self, cfg: "Config") -> dict[str, Any]:
        psi = float(self.settings(cfg).truncation_psi)
        if not self.truncation:
            if psi != 1.0:
                raise ConfigError(f"generator.{self.section}.truncation_psi: {self.name} has no truncation, got {psi}")
            return {}
        if not 0.0 <= psi <= 2.0:
            raise ConfigError(f"generator.{self.section}.truncation_psi must be in [0, 2], got {psi}")
        return {"truncation_psi": psi}

    @torch.inference_mode()
    def sample(self, network: nn.Module, model_args: Mapping[str, Any], n: int,
               generator: torch.Generator, options: Mapping[str, Any]) -> np.ndarray:
        """`n` images in one batch: uint8 [n, 5, H, W], annotation snapped to the labels.

        Args:
            options: ``{"truncation_psi": float}`` for StyleGANs; nothing for ProGAN.

        Raises:
            ValueError: an option this family does not take.
        """
        allowed = {"truncation_psi"} if self.truncation else set()
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"unknown {self.name} sampling option(s) {unknown}; known: {sorted(allowed) or 'none'}")
        network.eval()
        device = device_of(network)
        z = gaussian((n, network.z_dim), generator, device)
        images = network(z, truncation_psi=float(options.get("truncation_psi", 1.0)), rng=generator)
        return to_uint8(images)
