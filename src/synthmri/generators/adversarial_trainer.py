"""The official GAN training phases on one global batch: :class:`AdversarialTrainer`.

One :meth:`AdversarialTrainer.step` runs the phases of the family's
:class:`~synthmri.generators.adversarial.Objective` on one global batch: discriminator then
generator in the TF1 codes (ProGAN, StyleGAN 1), ``Gmain, Greg, Dmain, Dreg`` in
StyleGAN2-ADA / StyleGAN3 (``Objective.generator_first``), each phase one optimiser step.

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

Progressive families follow their :class:`~synthmri.generators.adversarial_terms.GrowthSchedule`
(see :mod:`synthmri.generators.adversarial_terms`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from synthmri.generators.adversarial_terms import (
    GrowthSchedule,
    augment,
    gradient_penalty,
    r1_penalty,
    resolution_of,
)
from synthmri.generators.distributed import Runtime
from synthmri.generators.layers import gaussian
from synthmri.generators.pixels import to_unit_range

if TYPE_CHECKING:
    from synthmri.config import AdversarialConfig
    from synthmri.generators.adversarial_terms import Objective

PL_DECAY = 0.01  # path-length running mean: new = old + 0.01 * (batch mean - old)
PL_BATCH_SHRINK = 2  # path length on the first half of each micro-batch's latents (official pl_batch_shrink)


def _lazy_ratio(interval: int) -> float:
    return interval / (interval + 1) if interval > 1 else 1.0


def _adam(params: Any, lr: float, betas: tuple[float, float], interval: int) -> torch.optim.Adam:
    """Adam, adjusted for lazy regularisation every `interval` steps (StyleGAN2, appendix B)."""
    ratio = _lazy_ratio(interval)
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio), eps=1e-8)



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

