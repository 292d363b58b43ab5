"""Validation of the ``generator`` level: the model name and every family's section.

Run by :func:`synthmri.config.validate.validate` (so by every ``load_config``). Each check
names the dotted key at fault. What can only be checked against run-time data (the slice
store's image size, the number of processes, a checkpoint) stays with the code that has
that data.
"""

from __future__ import annotations

import math
from typing import Any

from synthmri.config.choices import (
    DDPM_NETWORKS,
    DDPM_SAMPLER_ALIASES,
    DDPM_SAMPLERS,
    DDPM_SCHEDULES,
    GENERATOR_MODELS,
    STYLEGAN3_CRITICAL_LAYERS,
    UNTRUNCATED_MODELS,
    one_of,
)
from synthmri.config.errors import ConfigError
from synthmri.config.generator import DDPMConfig, GeneratorConfig, StyleGAN3Config, StyleGANConfig
from synthmri.config.sections import registry_of

#: Settings the generator training loop reads from every family's section, all at least 1.
TRAINING_COUNTS = ("iterations", "batch_size", "log_every", "checkpoint_every", "sample_grid_every")
#: The built-in GAN sections.
_GAN_SECTIONS = ("progan", "stylegan1", "stylegan2", "stylegan3")
#: GAN section fields that are widths or counts, at least 1 (the StyleGAN ones only where present).
_GAN_WIDTHS = ("z_dim", "channel_base", "channel_max", "w_dim", "mapping_layers")
#: Resolution tables of the progressive GANs.
_TABLES = ("minibatch_dict", "lr_dict", "discriminator_lr_dict")


def known_models() -> tuple[str, ...]:
    """The built-in generator models, then those registered at runtime.

    Returns:
        The names ``generator.model`` accepts, in that order.
    """
    registered = registry_of("GENERATORS").names()
    return GENERATOR_MODELS + tuple(name for name in registered if name not in GENERATOR_MODELS)


def check_generator(generator: GeneratorConfig) -> None:
    """Raise ConfigError for an invalid ``generator`` level.

    Args:
        generator: the generator level of a config.

    Raises:
        ConfigError: the first invalid value; the message names its key.
    """
    known = known_models()
    if generator.model not in known:
        raise ConfigError(f"generator.model must be one of {', '.join(known)}, got {generator.model!r}")
    if generator.n_synthetic < 1 or generator.sample_batch_size < 1:
        raise ConfigError(f"generator.n_synthetic ({generator.n_synthetic}) and generator.sample_batch_size "
                          f"({generator.sample_batch_size}) must be positive")
    check_ddpm(generator.ddpm)
    for name in _GAN_SECTIONS:
        check_gan(getattr(generator, name), name)
    for name, section in generator.extra_sections.items():
        check_training(section, f"generator.{name}")
        own = getattr(section, "validate", None)
        if callable(own):
            own(f"generator.{name}")


def check_training(section: Any, key: str) -> None:
    """The settings every family's training loop reads: counts, EMA decay, micro-batch.

    Args:
        section: a family's section; settings it lacks are skipped.
        key: its dotted name, e.g. ``generator.ddpm``.

    Raises:
        ConfigError: a count below 1, an EMA decay outside [0, 1) or a negative batch_gpu.
    """
    for name in TRAINING_COUNTS:
        if hasattr(section, name) and int(getattr(section, name)) < 1:
            raise ConfigError(f"{key}.{name} must be positive, got {getattr(section, name)}")
    if hasattr(section, "ema_decay") and not 0.0 <= section.ema_decay < 1.0:
        raise ConfigError(f"{key}.ema_decay must be in [0, 1), got {section.ema_decay}")
    if getattr(section, "batch_gpu", 0) < 0:
        raise ConfigError(f"{key}.batch_gpu must be 0 (the whole batch) or positive, got {section.batch_gpu}")


def check_ddpm(ddpm: DDPMConfig) -> None:
    """Raise ConfigError for an invalid ``generator.ddpm`` section.

    Args:
        ddpm: the section.

    Raises:
        ConfigError: the first invalid value; the message names its key.
    """
    if ddpm.sampler not in DDPM_SAMPLERS and ddpm.sampler not in DDPM_SAMPLER_ALIASES:
        raise ConfigError(f"generator.ddpm.sampler must be {one_of(DDPM_SAMPLERS)}, got {ddpm.sampler!r}")
    if ddpm.network not in DDPM_NETWORKS:
        raise ConfigError(f"generator.ddpm.network must be {one_of(DDPM_NETWORKS)}, got {ddpm.network!r}")
    if ddpm.schedule not in DDPM_SCHEDULES:
        raise ConfigError(f"generator.ddpm.schedule must be {one_of(DDPM_SCHEDULES)}, got {ddpm.schedule!r}")
    check_training(ddpm, "generator.ddpm")
    if ddpm.norm_num_groups < 1:
        raise ConfigError(f"generator.ddpm.norm_num_groups must be positive, got {ddpm.norm_num_groups}")
    if ddpm.network == "monai":
        _check_monai(ddpm)
    else:
        _check_guided(ddpm)
    if ddpm.timesteps < 2:
        raise ConfigError(f"generator.ddpm.timesteps must be at least 2, got {ddpm.timesteps}")
    if not 0 < ddpm.beta_start < ddpm.beta_end < 1:
        raise ConfigError(f"generator.ddpm needs 0 < beta_start < beta_end < 1, got {ddpm.beta_start}, {ddpm.beta_end}")
    last = ddpm.beta_end * 1000 / ddpm.timesteps  # rescaled_linear scales the betas by 1000 / timesteps
    if ddpm.schedule == "rescaled_linear" and last >= 1:
        raise ConfigError(f"generator.ddpm: rescaled_linear at {ddpm.timesteps} timesteps puts the last beta at "
                          f"{last:.3g} (beta_end * 1000 / timesteps); it must stay below 1")
    if ddpm.sample_steps < 1:
        raise ConfigError(f"generator.ddpm.sample_steps must be positive, got {ddpm.sample_steps}")


def _check_monai(ddpm: DDPMConfig) -> None:
    """The keys of ``network: monai``: widths, attention levels and head widths."""
    if any(c % ddpm.norm_num_groups for c in ddpm.channels):
        raise ConfigError(f"generator.ddpm.channels {list(ddpm.channels)} must be multiples of norm_num_groups "
                          f"({ddpm.norm_num_groups})")
    if len(ddpm.attention_levels) != len(ddpm.channels):
        raise ConfigError(f"generator.ddpm.attention_levels needs one entry per channels level ({len(ddpm.channels)})")
    if any(ddpm.attention_levels) and ddpm.num_head_channels < 1:
        raise ConfigError(f"generator.ddpm.num_head_channels must be positive, got {ddpm.num_head_channels}")
    for level, (width, attend) in enumerate(zip(ddpm.channels, ddpm.attention_levels)):
        if attend and width % ddpm.num_head_channels:
            raise ConfigError(f"generator.ddpm.channels[{level}]={width} is not divisible by "
                              f"generator.ddpm.num_head_channels={ddpm.num_head_channels}")


def _check_guided(ddpm: DDPMConfig) -> None:
    """The keys of ``network: guided``: widths, heads and dropout."""
    if ddpm.model_channels < 1 or not ddpm.channel_mult or any(
            m < 1 or ddpm.model_channels * m % ddpm.norm_num_groups for m in ddpm.channel_mult):
        raise ConfigError(f"generator.ddpm.model_channels ({ddpm.model_channels}) times each channel_mult "
                          f"{list(ddpm.channel_mult)} must be a positive multiple of norm_num_groups "
                          f"({ddpm.norm_num_groups})")
    if ddpm.num_heads < 1:
        raise ConfigError(f"generator.ddpm.num_heads must be positive, got {ddpm.num_heads}")
    if not 0 <= ddpm.dropout < 1:
        raise ConfigError(f"generator.ddpm.dropout must be in [0, 1), got {ddpm.dropout}")


def check_gan(section: Any, name: str) -> None:
    """Raise ConfigError for an invalid GAN section (``generator.progan``, ``.stylegan1``...).

    Args:
        section: the section (an AdversarialConfig).
        name: the family's name, its section's key under ``generator``.

    Raises:
        ConfigError: the first invalid value; the message names its key.
    """
    key = f"generator.{name}"
    check_training(section, key)
    for field in _GAN_WIDTHS:
        if hasattr(section, field) and getattr(section, field) < 1:
            raise ConfigError(f"{key}.{field} must be a positive integer, got {getattr(section, field)!r}")
    if isinstance(section, StyleGANConfig) and not 0 < section.mapping_lr_mul < math.inf:
        raise ConfigError(f"{key}.mapping_lr_mul must be a positive number, got {section.mapping_lr_mul!r}")
    for field in ("lr", "discriminator_lr"):
        if getattr(section, field) <= 0:
            raise ConfigError(f"{key}.{field} must be positive, got {getattr(section, field)}")
    if not 0.0 <= section.augment_p <= 1.0:
        raise ConfigError(f"{key}.augment_p must be in [0, 1], got {section.augment_p}")
    psi = section.truncation_psi
    if name in UNTRUNCATED_MODELS and psi != 1.0:
        raise ConfigError(f"{key}.truncation_psi: {name} has no truncation, got {psi}")
    if not 0.0 <= psi <= 2.0:
        raise ConfigError(f"{key}.truncation_psi must be in [0, 2], got {psi}")
    _check_objective(section, key)
    _check_growth(section, key)
    if isinstance(section, StyleGAN3Config):
        _check_stylegan3(section, key)


def _check_objective(section: Any, key: str) -> None:
    """Loss weights (not negative), lazy-regularisation intervals (at least 1), style mixing."""
    for field in ("gp_lambda", "drift", "r1_gamma", "pl_weight"):
        if getattr(section, field, 0) < 0:
            raise ConfigError(f"{key}.{field} must not be negative, got {getattr(section, field)}")
    for field in ("r1_interval", "pl_interval"):
        if getattr(section, field, 1) < 1:
            raise ConfigError(f"{key}.{field} must be at least 1, got {getattr(section, field)}")
    if not 0.0 <= getattr(section, "style_mixing", 0.0) <= 1.0:
        raise ConfigError(f"{key}.style_mixing must be in [0, 1], got {section.style_mixing}")


def _is_resolution(value: int) -> bool:
    return value >= 4 and not value & (value - 1)


def _check_growth(section: Any, key: str) -> None:
    """Progressive growing: the first resolution and the per-resolution tables."""
    if hasattr(section, "initial_resolution") and not _is_resolution(section.initial_resolution):
        raise ConfigError(f"{key}.initial_resolution must be a power of two of at least 4, "
                          f"got {section.initial_resolution!r}")
    for name in _TABLES:
        table = getattr(section, name, None) or {}
        bad = {r: v for r, v in table.items() if not _is_resolution(r) or not v > 0}
        if bad:
            raise ConfigError(f"{key}.{name}: keys must be resolutions (powers of two, at least 4) and "
                              f"values positive{' integers' if name == 'minibatch_dict' else ''}, got {bad}")


def _check_stylegan3(section: StyleGAN3Config, key: str) -> None:
    """The alias-free synthesis network's layer count and filter settings."""
    limits = {  # field -> (valid, requirement)
        "num_layers": (section.num_layers > STYLEGAN3_CRITICAL_LAYERS, f">= {STYLEGAN3_CRITICAL_LAYERS + 1}"),
        "margin_size": (section.margin_size >= 0, ">= 0"),
        "first_cutoff": (section.first_cutoff > 0, "> 0"),
        "first_stopband": (section.first_stopband > section.first_cutoff, "> first_cutoff"),
        "last_stopband_rel": (section.last_stopband_rel > 1, "> 1"),
        "filter_size": (section.filter_size >= 1, ">= 1"),
        "lrelu_upsampling": (section.lrelu_upsampling >= 1, ">= 1"),
    }
    for field, (valid, requirement) in limits.items():
        if not valid:
            raise ConfigError(f"{key}.{field} must be {requirement}, got {getattr(section, field)}")
