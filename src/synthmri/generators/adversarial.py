"""Adversarial training shared by the GAN families: objectives, regularisers, growth, sampling.

A GAN family (``progan.py``, ``stylegan1.py``...) supplies only its networks and an
:class:`Objective`; :class:`AdversarialFamily` turns them into a
:class:`~synthmri.generators.GeneratorFamily` that the common training loop drives. One
:meth:`AdversarialTrainer.step` is one discriminator update followed by one generator
update, as in ProGAN and StyleGAN:

* ``wgan-gp`` (ProGAN): critic loss D(fake) - D(real) + lambda * gradient penalty on
  real/fake interpolates + drift * D(real)^2; generator loss -D(fake).
* ``non-saturating`` (StyleGAN 1-3): softplus(D(fake)) + softplus(-D(real)) with the R1
  penalty gamma/2 * |grad D(real)|^2, evaluated every ``r1_interval`` steps ("lazy") and
  scaled up by the interval; generator loss softplus(-D(fake)), plus the optional
  path-length penalty every ``pl_interval`` steps (StyleGAN2).

With lazy regularisation Adam's learning rate and betas are adjusted by
``interval / (interval + 1)`` as in StyleGAN2, so the regularised optimiser sees the same
effective step. Progressive families (ProGAN, StyleGAN 1) grow on a schedule in images
seen (:class:`GrowthSchedule`). Discriminator augmentation (:func:`augment`) moves all five
channels together and changes intensities of the four images only, so the annotation
channel stays a valid label map.
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
    """

    loss: str
    gp_lambda: float = 0.0
    drift: float = 0.0
    r1_gamma: float = 0.0
    r1_interval: int = 1
    pl_weight: float = 0.0
    pl_interval: int = 4
    style_mixing: float = 0.0

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
    """Progressive growing by images seen: stabilise level 0, then fade in and stabilise each level.

    Attributes:
        max_level: the full-resolution level (log2(size) - 2).
        fade_kimg: thousands of images over which each new level's alpha rises 0 -> 1.
        stable_kimg: thousands of images trained at each level once fully faded in.
    """

    max_level: int
    fade_kimg: float
    stable_kimg: float

    def at(self, images_seen: int) -> tuple[int, float]:
        """``(level, alpha)`` after `images_seen` real images."""
        kimg = images_seen / 1000.0
        phase = self.fade_kimg + self.stable_kimg
        if phase <= 0:  # no growing configured: start at full resolution
            return self.max_level, 1.0
        if kimg < self.stable_kimg:
            return 0, 1.0
        grown, into = divmod(kimg - self.stable_kimg, phase)
        level = int(grown) + 1
        if level > self.max_level:
            return self.max_level, 1.0
        return level, min(1.0, into / self.fade_kimg) if self.fade_kimg > 0 else 1.0

    @property
    def full_kimg(self) -> float:
        """Images (thousands) until the full resolution is faded in."""
        return self.max_level * (self.fade_kimg + self.stable_kimg)


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
                     rng: torch.Generator) -> torch.Tensor:
    """WGAN-GP: (|grad D| - 1)^2 at random interpolates of real and fake images ([B])."""
    t = torch.rand((len(real), 1, 1, 1), generator=rng).to(real.device, real.dtype)
    mixed = real.detach().lerp(fake.detach(), t).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).square()


def _adam(params: Any, lr: float, betas: tuple[float, float], interval: int) -> torch.optim.Adam:
    """Adam, adjusted for lazy regularisation every `interval` steps (StyleGAN2, appendix B)."""
    ratio = interval / (interval + 1) if interval > 1 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio), eps=1e-8)


class AdversarialTrainer:
    """One discriminator step and one generator step per call, with the family's objective.

    Args:
        generator: the generator being trained (train mode, on ``runtime.device``).
        discriminator: its discriminator (same device).
        objective: loss and regularisers.
        settings: the family's config section (learning rates, betas, batch, augment_p).
        schedule: growth schedule of a progressive family, else None.
        runtime: device, autocast and gradient averaging.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, objective: Objective,
                 settings: "AdversarialConfig", schedule: GrowthSchedule | None, runtime: Runtime) -> None:
        self.generator, self.discriminator = generator, discriminator
        self.objective, self.settings, self.schedule, self.runtime = objective, settings, schedule, runtime
        betas = (settings.beta1, settings.beta2)
        pl_interval = objective.pl_interval if objective.pl_weight > 0 else 1
        self.g_optimizer = _adam(generator.parameters(), settings.lr, betas, pl_interval)
        self.d_optimizer = _adam(discriminator.parameters(), settings.discriminator_lr, betas,
                                 objective.r1_interval if objective.r1_gamma > 0 else 1)
        self.images_seen = 0  # global, across processes: drives the growth schedule
        self.steps = 0
        self.pl_mean = torch.zeros((), device=runtime.device)

    def _latents(self, n: int, rng: torch.Generator) -> torch.Tensor:
        return gaussian((n, self.generator.z_dim), rng, self.runtime.device)

    def _generate(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fake images (and their styles, for StyleGANs) for a training step."""
        g = self.generator
        if not hasattr(g, "mapping"):
            return g(self._latents(n, rng), rng=rng), None
        ws = g.mapping(self._latents(n, rng), update_w_avg=True)
        if self.objective.style_mixing > 0 and float(torch.rand((), generator=rng)) < self.objective.style_mixing:
            # Style mixing: from a random layer on, take the styles of a second latent.
            cutoff = int(torch.randint(1, ws.shape[1], (), generator=rng)) if ws.shape[1] > 1 else 0
            ws = ws.clone()
            ws[:, cutoff:] = g.mapping(self._latents(n, rng))[:, cutoff:]
        return g.synthesis(ws, rng=rng), ws

    def _d(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return self.discriminator(augment(images, self.settings.augment_p, rng))

    def step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """Update D, then G, on this process's share of a uint8 batch; returns named losses."""
        rng, objective, run = generator, self.objective, self.runtime
        if self.schedule is not None:
            level, alpha = self.schedule.at(self.images_seen)
            self.generator.set_growth(level, alpha)
            self.discriminator.set_growth(level, alpha)
        real = to_unit_range(batch.to(run.device, non_blocking=True))
        n = len(real)
        losses: dict[str, float] = {}

        # Discriminator: real up, fake down (the generator's graph is not needed here).
        self.discriminator.requires_grad_(True)
        self.generator.requires_grad_(False)
        lazy_r1 = objective.r1_gamma > 0 and self.steps % objective.r1_interval == 0
        with run.autocast():
            with torch.no_grad():
                fake, _ = self._generate(n, rng)
            real_in = real.detach().requires_grad_(lazy_r1)
            real_logits = self._d(real_in, rng).float()
            fake_logits = self._d(fake, rng).float()
        if objective.loss == "wgan-gp":
            d_loss = fake_logits.mean() - real_logits.mean()
            if objective.gp_lambda > 0:
                penalty = gradient_penalty(self.discriminator, real, fake, rng).mean()
                d_loss = d_loss + objective.gp_lambda * penalty
                losses["gradient_penalty"] = float(penalty.detach())
            d_loss = d_loss + objective.drift * real_logits.square().mean()
        else:
            d_loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        losses["loss_d"] = float(d_loss.detach())
        if lazy_r1:
            r1 = r1_penalty(real_logits, real_in).mean()
            d_loss = d_loss + objective.r1_gamma / 2 * r1 * objective.r1_interval
            losses["r1_penalty"] = float(r1.detach())
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        run.average_gradients(self.discriminator)
        self.d_optimizer.step()

        # Generator: fool the (now frozen) discriminator.
        self.discriminator.requires_grad_(False)
        self.generator.requires_grad_(True)
        with run.autocast():
            fake, _ = self._generate(n, rng)
            fake_logits = self._d(fake, rng).float()
        g_loss = -fake_logits.mean() if objective.loss == "wgan-gp" else F.softplus(-fake_logits).mean()
        losses["loss_g"] = float(g_loss.detach())
        if objective.pl_weight > 0 and self.steps % objective.pl_interval == 0 and hasattr(self.generator, "mapping"):
            penalty = self._path_length(max(1, n // 2), rng)
            g_loss = g_loss + objective.pl_weight * penalty * objective.pl_interval
            losses["path_length_penalty"] = float(penalty.detach())
        self.g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        run.average_gradients(self.generator)
        self.g_optimizer.step()

        self.steps += 1
        self.images_seen += n * run.world_size
        if self.schedule is not None:
            losses["growth_level"], losses["growth_alpha"] = float(level), float(alpha)
        return losses

    def _path_length(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """StyleGAN2's path-length penalty: (|J_w^T y| - running mean)^2, y ~ N(0, I) / sqrt(HW)."""
        _, ws = self._generate(n, rng)
        ws = ws.detach().requires_grad_(True)
        with self.runtime.autocast():
            images = self.generator.synthesis(ws, rng=rng).float()
        noise = gaussian(tuple(images.shape), rng, images.device) / math.sqrt(images.shape[2] * images.shape[3])
        (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
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
                "steps": self.steps, "pl_mean": self.pl_mean.detach().cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.g_optimizer.load_state_dict(state["g_optimizer"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.images_seen, self.steps = int(state["images_seen"]), int(state["steps"])
        self.pl_mean = state["pl_mean"].to(self.runtime.device)


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
            ``fade_kimg`` and ``stable_kimg``.
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
        schedule = None
        if self.progressive:
            schedule = GrowthSchedule(network.max_level, settings.fade_kimg, settings.stable_kimg)
        discriminator = self.build_discriminator(model_args).to(runtime.device)
        runtime.broadcast_module(discriminator)
        return AdversarialTrainer(network, discriminator, objective, settings, schedule, runtime)

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
