"""Adversarial training shared by the GAN families: objectives, the family, sampling.

A GAN family (``progan.py``, ``stylegan1.py``...) supplies only its networks and an
:class:`Objective`; :class:`AdversarialFamily` turns them into a
:class:`~synthmri.generators.GeneratorFamily` that the common training loop drives through
an :class:`~synthmri.generators.adversarial_trainer.AdversarialTrainer` (the official
training phases, lazy regularisation, micro-batches), each phase one optimiser step:

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

Progressive families (ProGAN, StyleGAN 1) grow on a
:class:`~synthmri.generators.adversarial_terms.GrowthSchedule`; the discriminator
augmentation and the penalties live in :mod:`synthmri.generators.adversarial_terms`. Their
public names are importable from here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from synthmri.config import ConfigError
from synthmri.generators.adversarial_terms import (
    LOSSES,
    GrowthSchedule,
    Objective,
    augment,
    gradient_penalty,
    r1_penalty,
    resolution_of,
)
from synthmri.generators.adversarial_trainer import AdversarialTrainer, Phase, phases_of
from synthmri.generators.distributed import Runtime, device_of
from synthmri.generators.layers import gaussian
from synthmri.generators.pixels import to_uint8

if TYPE_CHECKING:
    from synthmri.config import AdversarialConfig, Config


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
        schedule = self._schedule(network, settings)
        self._check_batches(network, settings, schedule, runtime)
        discriminator = self.build_discriminator(model_args).to(runtime.device)
        runtime.broadcast_module(discriminator)
        return AdversarialTrainer(network, discriminator, objective, settings, schedule, runtime)

    def _schedule(self, network: nn.Module, settings: "AdversarialConfig") -> GrowthSchedule | None:
        """The growth schedule of a progressive family (None otherwise); the config checked its tables."""
        if not self.progressive:
            return None
        initial = getattr(settings, "initial_resolution", 4)
        return GrowthSchedule(network.max_level, settings.fade_kimg, settings.stable_kimg,
                              start_level=int(math.log2(initial)) - 2)

    def _check_batches(self, network: nn.Module, settings: "AdversarialConfig", schedule: GrowthSchedule | None,
                       runtime: Runtime) -> None:
        """Every global batch the run can use splits across the processes and into ``batch_gpu`` rounds."""
        key = f"generator.{self.section}"
        micro = settings.batch_gpu
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
        # The config refuses a psi outside [0, 2], or any psi but 1 for a family without truncation.
        return {"truncation_psi": float(self.settings(cfg).truncation_psi)} if self.truncation else {}

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


__all__ = ["LOSSES", "AdversarialFamily", "AdversarialTrainer", "GrowthSchedule", "Objective", "Phase", "augment",
           "gradient_penalty", "phases_of", "r1_penalty", "resolution_of"]
