"""Allowed values of the configuration, each list defined once.

The config validation (:mod:`synthmri.config.validate`), the CLI's ``choices`` and the
modules that branch on these names all read them from here (through ``synthmri.config``),
so a new value is added in one place. Plain tuples of strings, no imports: importing this
costs nothing.
"""

from __future__ import annotations

#: The four MR sequences of a slice, in channel order (``data.filter_channel``).
IMAGE_CHANNELS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: Every channel of a stored slice: the MR sequences and the annotation
#: (``quality.inception_channels``).
SLICE_CHANNELS: tuple[str, ...] = (*IMAGE_CHANNELS, "seg")

#: BraTS releases whose file naming is recognised (``data.layout`` besides auto and generic).
BRATS_RELEASES: tuple[str, ...] = ("brats2020", "brats2021", "brats2023")
#: ``data.layout``: detected (auto), one release, or generic file names.
DATA_LAYOUTS: tuple[str, ...] = ("auto", *BRATS_RELEASES, "generic")
#: ``data.split``: how test subjects are chosen (the authors' list or a seeded draw).
DATA_SPLITS: tuple[str, ...] = ("published", "seeded")
#: ``memorization.arithmetic``: exact int8 products where faster (auto), or one of them.
MEMORIZATION_ARITHMETIC: tuple[str, ...] = ("auto", "int8", "float32")
#: The subject splits of a slice store.
SLICE_SPLITS: tuple[str, ...] = ("train", "val", "test")

#: ``generator.model``: the built-in generator families (``synthmri.generators.FAMILIES``
#: registers exactly these; a family registered at runtime is accepted too).
GENERATOR_MODELS: tuple[str, ...] = ("ddpm", "progan", "stylegan1", "stylegan2", "stylegan3")
#: GAN families without truncation at sampling (their ``truncation_psi`` must stay 1).
UNTRUNCATED_MODELS: tuple[str, ...] = ("progan",)
#: ``generator.ddpm.network``: guided-diffusion's UNet (the paper's) or MONAI's.
DDPM_NETWORKS: tuple[str, ...] = ("guided", "monai")
#: ``generator.ddpm.schedule``.
DDPM_SCHEDULES: tuple[str, ...] = ("rescaled_linear", "linear")
#: ``generator.ddpm.sampler``: the full ancestral chain (the paper's) or DDIM.
DDPM_SAMPLERS: tuple[str, ...] = ("ancestral", "ddim")
#: Old sampler names still accepted (older configs and checkpoints record them) -> current name.
DDPM_SAMPLER_ALIASES: dict[str, str] = {"ddpm": "ancestral"}
#: StyleGAN3's critically sampled layers at the end (``num_layers`` must exceed it).
STYLEGAN3_CRITICAL_LAYERS = 2
#: Stages of the Swin encoders (``segmenter.swin`` and ``segmenter.swinunetr``: depths, num_heads).
SWIN_STAGES = 4

#: ``segmenter.arch``: the built-in architectures (``synthmri.segmenters.ARCHITECTURES``
#: registers exactly these; an architecture registered at runtime is accepted too).
SEGMENTER_ARCHS: tuple[str, ...] = ("unet", "swin", "nnunet", "swinunetr")
#: What a segmenter trains on (``train-segmenter --train``); ``ratio`` mixes a share of real.
TRAINING_SOURCES: tuple[str, ...] = ("real", "synthetic", "mixed", "ratio")
#: The sources of the segmentation grid (the ratio sweep has its own axis).
GRID_SOURCES: tuple[str, ...] = TRAINING_SOURCES[:-1]  # all but ratio

#: ``evaluation.eval_slices``: the filtered slices (the paper's) or every slice.
EVAL_SLICES: tuple[str, ...] = ("filtered", "all")
#: ``evaluation.convention``: how undefined scores count (see EvaluationConfig).
EVALUATION_CONVENTIONS: tuple[str, ...] = ("paper", "penalise")
#: ``quality.inception_input``: what InceptionV3 sees as RGB.
INCEPTION_INPUTS: tuple[str, ...] = ("t1ce_gray", "channels")


def one_of(values: tuple[str, ...]) -> str:
    """``a, b or c``: `values` as an English list for messages.

    Args:
        values: at least one name.

    Returns:
        The names joined by commas, the last one by "or".
    """
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"
