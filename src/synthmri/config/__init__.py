"""Typed configuration: frozen dataclasses loaded from YAML profiles.

The dataclass defaults are the paper's settings (Akbar et al. 2024, see docs/design.md and docs/fidelity.md);
a profile (``configs/demo.yaml``, ``configs/paper.yaml`` or any YAML path) overrides
them section by section, and command-line flags override the profile. The resolved
config is written next to every stage's output and logged to MLflow.

The package's parts:

* :mod:`.schema` and :mod:`.generator`: the dataclasses, one per section;
* :mod:`.choices`: every list of allowed values (layouts, channels, sources, model names...);
* :mod:`.load`: profiles, overrides, typed coercion, ``to_dict``/``flatten``/``dump_config``;
* :mod:`.validate` and :mod:`.validate_generators`: every check of a value, run by
  :func:`load_config`;
* :mod:`.sections`: the sections of generator families and segmenter architectures
  registered at runtime (:mod:`synthmri.registry`).

Importing it is cheap: no network module, no torch.
"""

from synthmri.config.choices import (
    BRATS_RELEASES,
    DATA_LAYOUTS,
    DATA_SPLITS,
    DDPM_NETWORKS,
    DDPM_SAMPLER_ALIASES,
    DDPM_SAMPLERS,
    DDPM_SCHEDULES,
    EVAL_SLICES,
    EVALUATION_CONVENTIONS,
    GENERATOR_MODELS,
    GRID_SOURCES,
    IMAGE_CHANNELS,
    INCEPTION_INPUTS,
    SEGMENTER_ARCHS,
    SLICE_CHANNELS,
    SLICE_SPLITS,
    STYLEGAN3_CRITICAL_LAYERS,
    SWIN_STAGES,
    TRAINING_SOURCES,
    UNTRUNCATED_MODELS,
)
from synthmri.config.errors import ConfigError
from synthmri.config.generator import (
    AdversarialConfig,
    DDPMConfig,
    GeneratorConfig,
    ProGANConfig,
    StyleGAN1Config,
    StyleGAN2Config,
    StyleGAN3Config,
    StyleGANConfig,
)
from synthmri.config.load import (
    CONFIG_DIR_ENV,
    dump_config,
    flatten,
    load_config,
    parse_override,
    resolve_profile_path,
    set_dotted,
    to_dict,
)
from synthmri.config.schema import (
    Config,
    DataConfig,
    EvaluationConfig,
    MemorizationConfig,
    NNUNetConfig,
    PhantomConfig,
    PromotionConfig,
    QualityConfig,
    SegmenterConfig,
    SwinConfig,
    SwinUNETRConfig,
    TrackingConfig,
    UNetConfig,
)
from synthmri.config.validate import known_archs, validate
from synthmri.config.validate_generators import known_models

__all__ = [
    "AdversarialConfig", "BRATS_RELEASES", "CONFIG_DIR_ENV", "Config", "ConfigError", "DATA_LAYOUTS", "DATA_SPLITS",
    "DDPMConfig", "DDPM_NETWORKS", "DDPM_SAMPLERS", "DDPM_SAMPLER_ALIASES", "DDPM_SCHEDULES", "DataConfig",
    "EVALUATION_CONVENTIONS", "EVAL_SLICES", "EvaluationConfig", "GENERATOR_MODELS", "GRID_SOURCES",
    "GeneratorConfig", "IMAGE_CHANNELS", "INCEPTION_INPUTS", "MemorizationConfig", "NNUNetConfig", "PhantomConfig",
    "ProGANConfig", "PromotionConfig", "QualityConfig", "SEGMENTER_ARCHS", "SLICE_CHANNELS", "SLICE_SPLITS",
    "STYLEGAN3_CRITICAL_LAYERS", "SWIN_STAGES", "SegmenterConfig", "StyleGAN1Config", "StyleGAN2Config",
    "StyleGAN3Config", "StyleGANConfig", "SwinConfig", "SwinUNETRConfig", "TRAINING_SOURCES", "TrackingConfig",
    "UNTRUNCATED_MODELS", "UNetConfig", "dump_config", "flatten", "load_config", "parse_override",
    "known_archs", "known_models", "resolve_profile_path", "set_dotted", "to_dict", "validate",
]
