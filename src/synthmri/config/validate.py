"""Validation of a whole config: every value checked once, here, when the config is loaded.

:func:`validate` runs at the end of :func:`~synthmri.config.load_config`, after the
values were coerced to their types. The network, training and evaluation code trusts a
loaded config and checks only what depends on run-time data (a store's image size, the
number of processes, a checkpoint's contents).
"""

from __future__ import annotations

from typing import Any

from synthmri.config.choices import (
    DATA_LAYOUTS,
    DATA_SPLITS,
    EVAL_SLICES,
    EVALUATION_CONVENTIONS,
    IMAGE_CHANNELS,
    INCEPTION_INPUTS,
    MEMORIZATION_ARITHMETIC,
    SEGMENTER_ARCHS,
    SLICE_CHANNELS,
    SWIN_STAGES,
    one_of,
)
from synthmri.config.errors import ConfigError
from synthmri.config.schema import (
    Config,
    DataConfig,
    NNUNetConfig,
    QualityConfig,
    SegmenterConfig,
    SwinConfig,
    SwinUNETRConfig,
)
from synthmri.config.sections import registry_of
from synthmri.config.validate_generators import check_generator


def validate(config: Config) -> None:
    """Raise ConfigError for the first invalid value of `config`.

    Args:
        config: a config built from defaults, a profile and overrides.

    Raises:
        ConfigError: a value out of range, a name not among the allowed ones, or values
            that contradict each other; the message names the key.
    """
    check_data(config.data)
    check_generator(config.generator)
    check_segmenter(config.segmenter)
    mem = config.memorization
    if mem.max_shift < 0:
        raise ConfigError(f"memorization.max_shift must be 0 or more, got {mem.max_shift}")
    if mem.arithmetic not in MEMORIZATION_ARITHMETIC:
        raise ConfigError(f"memorization.arithmetic must be one of {', '.join(MEMORIZATION_ARITHMETIC)}, "
                          f"got {mem.arithmetic!r}")
    if mem.share_threshold is not None and not -1.0 <= mem.share_threshold <= 1.0:
        raise ConfigError(f"memorization.share_threshold must be a correlation in [-1, 1] or null, got {mem.share_threshold}")
    check_quality(config.quality)
    if config.evaluation.convention not in EVALUATION_CONVENTIONS:
        raise ConfigError(f"evaluation.convention must be one of {', '.join(EVALUATION_CONVENTIONS)}, "
                          f"got {config.evaluation.convention!r}")
    if config.evaluation.eval_slices not in EVAL_SLICES:
        raise ConfigError(f"evaluation.eval_slices must be {one_of(EVAL_SLICES)}, "
                          f"got {config.evaluation.eval_slices!r}")
    gate = config.promotion
    for key in ("max_memorized_excess", "min_relative_dice", "min_real_dice"):
        if not 0.0 <= getattr(gate, key) <= 1.0:
            raise ConfigError(f"promotion.{key} must be in [0, 1], got {getattr(gate, key)}")


def check_data(data: DataConfig) -> None:
    """Raise ConfigError for an invalid ``data`` section.

    Args:
        data: the section.

    Raises:
        ConfigError: the first invalid value; the message names its key.
    """
    if data.size > data.pad_to:
        raise ConfigError(f"data.size ({data.size}) must not exceed data.pad_to ({data.pad_to})")
    if not 0.0 <= data.min_foreground_fraction < 1.0:
        raise ConfigError(f"data.min_foreground_fraction must be in [0, 1), got {data.min_foreground_fraction}")
    if not 0.0 <= data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {data.val_fraction}")
    if data.filter_channel not in IMAGE_CHANNELS:
        raise ConfigError(f"data.filter_channel must be an image channel, got {data.filter_channel!r}")
    if data.split not in DATA_SPLITS:
        raise ConfigError(f"data.split must be one of {', '.join(DATA_SPLITS)}, got {data.split!r}")
    if data.layout not in DATA_LAYOUTS:
        raise ConfigError(f"data.layout must be {one_of(DATA_LAYOUTS)}, got {data.layout!r}")
    values = sorted((data.label_map or {1: 1}).values())
    if len(set(values)) != len(values) or any(not 0 < v <= 255 for v in values):
        raise ConfigError(f"data.label_map values must be distinct in 1..255, got {data.label_map}")


def known_archs() -> tuple[str, ...]:
    """The built-in segmenter architectures, then those registered at runtime.

    Returns:
        The names ``segmenter.arch`` accepts, in that order.
    """
    registered = registry_of("SEGMENTERS").names()
    return SEGMENTER_ARCHS + tuple(name for name in registered if name not in SEGMENTER_ARCHS)


def check_segmenter(seg: SegmenterConfig) -> None:
    """Raise ConfigError for an invalid ``segmenter`` level.

    Args:
        seg: the segmenter level of a config.

    Raises:
        ConfigError: the first invalid value; the message names its key.
    """
    known = known_archs()
    if seg.arch not in known:
        raise ConfigError(f"segmenter.arch must be one of {', '.join(known)}, got {seg.arch!r}")
    if seg.repeats < 1:
        raise ConfigError(f"segmenter.repeats must be at least 1, got {seg.repeats}")
    if seg.ratio_total < 0:
        raise ConfigError(f"segmenter.ratio_total must be 0 (the real train split's size) or positive, got {seg.ratio_total}")
    if not seg.ratio_shares or any(not 0.0 <= s <= 1.0 for s in seg.ratio_shares):
        raise ConfigError(f"segmenter.ratio_shares must be shares in [0, 1], got {list(seg.ratio_shares)}")
    if not 0.0 < seg.synthetic_holdout < 1.0:
        raise ConfigError(f"segmenter.synthetic_holdout must be a share in (0, 1), got {seg.synthetic_holdout}")
    check_swinunetr(seg.swinunetr)
    check_swin(seg.swin)
    unet = seg.unet
    if unet.depth < 2 or unet.base_filters < 1:
        raise ConfigError(f"segmenter.unet.depth must be at least 2 and base_filters at least 1, "
                          f"got {unet.depth} and {unet.base_filters}")
    check_nnunet(seg.nnunet)
    for name in SEGMENTER_ARCHS:
        check_budget(getattr(seg, name), f"segmenter.{name}")
    for name, section in seg.extra_sections.items():
        check_budget(section, f"segmenter.{name}")
        own = getattr(section, "validate", None)
        if callable(own):
            own(f"segmenter.{name}")


def check_budget(section: Any, key: str) -> None:
    """The training length every architecture's section gives: a batch, and at least one of it.

    Args:
        section: the architecture's section (``batch_size``, ``train_samples`` and, for a
            length in epochs, ``epochs``).
        key: its dotted name, e.g. ``segmenter.unet``.

    Raises:
        ConfigError: a batch below 1, or a sample budget below one batch.
    """
    if section.batch_size < 1:
        raise ConfigError(f"{key}.batch_size must be at least 1, got {section.batch_size}")
    if not getattr(section, "epochs", 0) and section.train_samples < section.batch_size:
        raise ConfigError(f"{key}.train_samples ({section.train_samples}) is less than one batch "
                          f"({section.batch_size})")


def _check_stages(key: str, width: int, depths: tuple[int, ...], num_heads: tuple[int, ...],
                  drop_path: float, window_size: int) -> None:
    """The Swin encoder's four stages: blocks, heads dividing each stage's width, drop path, window."""
    if len(depths) != len(num_heads):
        raise ConfigError(f"{key}.depths {list(depths)} and num_heads {list(num_heads)} need one entry per stage")
    if len(depths) != SWIN_STAGES or min(depths) < 1 or min(num_heads) < 1:
        raise ConfigError(f"{key}.depths and num_heads must name {SWIN_STAGES} stages of at least 1 block and "
                          f"1 head, got {list(depths)} and {list(num_heads)}")
    widths = [width * 2**i for i in range(SWIN_STAGES)]
    if any(w % h for w, h in zip(widths, num_heads)):
        raise ConfigError(f"{key}.num_heads {list(num_heads)} must divide the stage widths {widths}")
    if not 0.0 <= drop_path < 1.0:
        raise ConfigError(f"{key}.drop_path must be in [0, 1), got {drop_path}")
    if window_size < 1:
        raise ConfigError(f"{key}.window_size must be at least 1, got {window_size}")


def check_swinunetr(section: SwinUNETRConfig) -> None:
    """Raise ConfigError for an invalid ``segmenter.swinunetr`` section.

    Args:
        section: the section.

    Raises:
        ConfigError: the first invalid value; the message names its key.
    """
    if section.feature_size % 12:
        raise ConfigError(f"segmenter.swinunetr.feature_size must be a multiple of 12, got {section.feature_size}")
    if section.feature_size < 12:
        raise ConfigError(f"segmenter.swinunetr.feature_size must be at least 12, got {section.feature_size}")
    _check_stages("segmenter.swinunetr", section.feature_size, section.depths, section.num_heads,
                  section.drop_path, section.window_size)


def check_swin(section: SwinConfig) -> None:
    """Raise ConfigError for an invalid ``segmenter.swin`` section.

    Args:
        section: the section.

    Raises:
        ConfigError: the first invalid value; the message names its key.
    """
    key = "segmenter.swin"
    if len(section.depths) != len(section.num_heads):  # checked before the length: its own message
        raise ConfigError(f"{key}.depths {list(section.depths)} and num_heads {list(section.num_heads)} "
                          "need one entry per stage")
    if section.epochs < 0 or section.train_samples < 0 or (section.epochs == 0) == (section.train_samples == 0):
        raise ConfigError(f"{key}: give the length as epochs or as train_samples, one of them "
                          f"(got epochs {section.epochs}, train_samples {section.train_samples})")
    if section.embed_dim < 1 or section.patch_size < 1:
        raise ConfigError(f"{key}.embed_dim and patch_size must be positive, got {section.embed_dim} and "
                          f"{section.patch_size}")
    _check_stages(key, section.embed_dim, section.depths, section.num_heads, section.drop_path, section.window_size)
    if section.decode_channels < 1 or section.aux_channels < 1 or not section.pool_scales \
            or min(section.pool_scales) < 1:
        raise ConfigError(f"{key}: decode_channels and aux_channels must be positive and pool_scales positive sizes, "
                          f"got {section.decode_channels}, {section.aux_channels} and {list(section.pool_scales)}")


def check_nnunet(section: NNUNetConfig) -> None:
    """Raise ConfigError for an invalid ``segmenter.nnunet`` section.

    Args:
        section: the section.

    Raises:
        ConfigError: the first invalid value; the message names its key.
    """
    levels = len(section.filters)
    if levels < 3:  # DynUNet's minimum: an input level, one inner level and a bottleneck
        raise ConfigError(f"segmenter.nnunet.filters must name at least 3 levels, got {list(section.filters)}")
    if not 0 <= section.deep_supervision_heads <= levels - 2:
        raise ConfigError(f"segmenter.nnunet.deep_supervision_heads must be in 0..{levels - 2} for {levels} levels, "
                          f"got {section.deep_supervision_heads}")


def check_quality(quality: QualityConfig) -> None:
    """Raise ConfigError for an invalid ``quality`` section.

    Args:
        quality: the section.

    Raises:
        ConfigError: the first invalid value; the message names its key.
    """
    unknown = [c for c in quality.inception_channels if c not in SLICE_CHANNELS]
    if unknown:
        raise ConfigError(f"quality.inception_channels: unknown channel(s) {unknown}; use {', '.join(SLICE_CHANNELS)}")
    if quality.inception_input not in INCEPTION_INPUTS:
        raise ConfigError(f"quality.inception_input must be one of {', '.join(INCEPTION_INPUTS)}, "
                          f"got {quality.inception_input!r}")
    if quality.max_images < 2 or quality.pr_k < 1 or quality.is_splits < 1:
        raise ConfigError("quality.max_images must be at least 2, quality.pr_k and quality.is_splits at least 1")
    if quality.inception_images < 2:
        raise ConfigError(f"quality.inception_images must be at least 2, got {quality.inception_images}")
