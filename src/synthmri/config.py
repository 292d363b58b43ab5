"""Typed configuration: frozen dataclasses loaded from YAML profiles.

The dataclass defaults are the paper's settings (Akbar et al. 2024, see DESIGN.md);
a profile (``configs/demo.yaml``, ``configs/paper.yaml`` or any YAML path) overrides
them section by section, and command-line flags override the profile. The resolved
config is written next to every stage's output and logged to MLflow.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

CONFIG_DIR_ENV = "SYNTHMRI_CONFIG_DIR"


class ConfigError(ValueError):
    """A profile or override that does not fit the schema; the message names the key."""


@dataclass(frozen=True)
class PhantomConfig:
    """Synthetic BraTS-layout subjects for laptops and tests."""

    subjects: int = 24
    shape: tuple[int, int, int] = (240, 240, 155)
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Slicing of BraTS volumes into the slice store (paper, 'Data')."""

    pad_to: int = 256  # zero-pad each axial slice to pad_to x pad_to (240 -> 256: 8 px a side)
    size: int = 256  # resample padded slices to size x size (images smooth, labels nearest)
    intensity_threshold: int = 50  # a pixel counts as foreground above this (0-255 scale)
    min_foreground_fraction: float = 0.15  # keep a slice with more than this share foreground
    filter_channel: str = "t1"  # the published code tests the T1 channel
    # Folder and file naming: auto (detected), brats2020, brats2021, brats2023 or generic.
    layout: str = "auto"
    # BraTS label -> value in the annotation channel; null: the layout's ({1: 51, 2: 102, 4: 204},
    # BraTS 2023 {1: 51, 2: 102, 3: 204}: enhancing tumour is 3 there).
    label_map: dict[int, int] | None = None
    test_subjects: int = 56
    # Test subjects: published (the authors' 56 test subjects of BraTS 2020 or 2021, shipped in
    # synthmri/data/paper_splits/; a source of another layout falls back to seeded, saying so)
    # or seeded (test_subjects drawn with `seed`). Validation subjects are always seeded.
    split: str = "published"
    val_fraction: float = 0.2  # share of training subjects used to validate the segmenter
    seed: int = 0
    shard_size: int = 1024  # slices per shard file


@dataclass(frozen=True)
class DDPMConfig:
    """Denoising diffusion: epsilon prediction, fixed variance, Adam without weight decay.

    Defaults are the paper's run (openai/guided-diffusion at the authors' flags, Table 9;
    see configs/paper.yaml). ``network: guided`` is guided-diffusion's UNet
    (:mod:`synthmri.generators.guided_unet`), ``monai`` a MONAI DiffusionModelUNet (the
    demo's small network); each reads its own keys below, both read ``num_res_blocks``
    and ``norm_num_groups``.
    """

    network: str = "guided"  # guided (the paper's) | monai
    # network: guided (guided-diffusion's flags)
    model_channels: int = 64  # --num_channels
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)  # guided-diffusion's default at 256x256
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sizes with self-attention
    num_heads: int = 4  # heads per attention block (num_head_channels -1)
    use_scale_shift_norm: bool = True
    dropout: float = 0.0
    # network: monai
    channels: tuple[int, ...] = (128, 256, 256, 512)
    attention_levels: tuple[bool, ...] = (False, False, True, True)
    num_head_channels: int = 64
    # both networks
    num_res_blocks: int = 3
    norm_num_groups: int = 32  # group norm groups; every width must divide by it (guided-diffusion: 32)
    timesteps: int = 4000
    schedule: str = "rescaled_linear"  # rescaled_linear (guided-diffusion's "linear") | linear
    beta_start: float = 1e-4  # rescaled_linear: betas at 1000 steps, scaled by 1000 / timesteps
    beta_end: float = 0.02
    batch_size: int = 12  # global batch per optimiser step
    batch_gpu: int = 6  # micro-batch per process with gradient accumulation; 0 = the whole local batch
    iterations: int = 650_000
    lr: float = 1e-4
    ema_decay: float = 0.9999
    sampler: str = "ancestral"  # ancestral (the paper's full chain) | ddim (this product's extension)
    sample_steps: int = 100  # DDIM steps (the ancestral chain always walks every timestep)
    mixed_precision: bool = False  # the authors ran fp32; true: bfloat16 autocast on CUDA (ignored on the CPU)
    checkpoint_every: int = 5000
    sample_grid_every: int = 5000
    log_every: int = 100


@dataclass(frozen=True)
class AdversarialConfig:
    """What every GAN family shares: the training length in kimg, Adam, EMA, augmentation.

    Lengths follow the StyleGAN convention: ``kimg`` thousands of real images shown to the
    discriminator; ``batch_size`` is the global batch (split across DDP processes), and
    ``batch_gpu`` the micro-batch each process runs at a time, accumulating gradients up to
    its share of the global batch (the official ``--batch-gpu``).
    """

    batch_size: int = 32
    batch_gpu: int = 0  # micro-batch per process with gradient accumulation; 0 = the whole local batch
    kimg: float = 25_000.0
    lr: float = 2.5e-3  # generator Adam learning rate
    discriminator_lr: float = 2.5e-3
    beta1: float = 0.0
    beta2: float = 0.99
    z_dim: int = 512
    channel_base: int = 16384  # feature maps at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    ema_decay: float = 0.998  # generator EMA; StyleGAN's 10 kimg half-life at batch 32
    augment_p: float = 0.0  # probability of each discriminator augmentation (flip, shift, intensity)
    truncation_psi: float = 1.0  # sampling: 1 = no truncation (StyleGANs only)
    mixed_precision: bool = True  # bfloat16 autocast on CUDA; ignored on the CPU
    checkpoint_every: int = 5000  # iterations
    sample_grid_every: int = 5000
    log_every: int = 100

    @property
    def iterations(self) -> int:
        """Optimisation steps for ``kimg`` thousand images at ``batch_size`` (at least 1)."""
        return max(1, -(-int(round(self.kimg * 1000)) // max(1, self.batch_size)))


@dataclass(frozen=True)
class ProGANConfig(AdversarialConfig):
    """Progressive GAN: growing with fade-in, pixel norm, minibatch stddev, WGAN-GP.

    The official ``config.py`` preset ``-preset-v2-1gpu`` (Table 9: batch 128 - 8, 12000
    kimg, one V100): the global batch follows the resolution being trained
    (``minibatch_dict``), the learning rate likewise (``lr_dict``), and Adam's moments are
    cleared whenever new layers start or finish fading in. With ``minibatch_dict`` the
    trainer counts the iterations for ``kimg`` (``iterations`` below assumes ``batch_size``).
    """

    batch_size: int = 4  # the official minibatch_base: resolutions missing from minibatch_dict
    minibatch_dict: dict[int, int] = field(default_factory=lambda: {
        4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4})  # resolution -> global batch
    kimg: float = 12_000.0
    lr: float = 1e-3
    discriminator_lr: float = 1e-3
    lr_dict: dict[int, float] = field(default_factory=lambda: {1024: 1.5e-3})  # resolution -> G lr
    discriminator_lr_dict: dict[int, float] = field(default_factory=lambda: {1024: 1.5e-3})
    channel_base: int = 16384  # = 2 x the official fmap_base 8192: 64 maps at 256^2, 512 up to 32^2
    ema_decay: float = 0.999
    initial_resolution: int = 4  # lod_initial_resolution: growth starts here
    fade_kimg: float = 600.0  # images to fade in each new resolution
    stable_kimg: float = 600.0  # images to train each resolution once faded in
    gp_lambda: float = 10.0  # WGAN-GP gradient penalty weight
    drift: float = 1e-3  # epsilon_drift: keeps critic outputs near zero


@dataclass(frozen=True)
class StyleGANConfig(AdversarialConfig):
    """What the StyleGANs share: the mapping network, the R1 penalty and style mixing."""

    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    r1_gamma: float = 8.2  # paper Table 9: 8.2 for StyleGAN 2 and 3, 10 for StyleGAN 1
    r1_interval: int = 16  # lazy regularisation: R1 every 16 discriminator steps
    style_mixing: float = 0.9  # probability of mixing two latents during training


@dataclass(frozen=True)
class StyleGAN1Config(StyleGANConfig):
    """StyleGAN: mapping network, AdaIN, noise inputs, progressive growing, NS loss + R1.

    The official ``train.py`` defaults (learning rate by resolution, growth from 8x8, Adam
    reset at each growth phase) at Table 9's batch 16; sampled with truncation psi 0.7.
    """

    batch_size: int = 16  # Table 9 (the official presets: 8 at 256^2 on 2 GPUs, 32 on 8)
    batch_gpu: int = 8  # the authors' 2 x V100: 8 per GPU
    minibatch_dict: dict[int, int] = field(default_factory=dict)  # resolution -> global batch
    lr: float = 1e-3  # the official G_lrate_base / D_lrate_base, below 128^2
    discriminator_lr: float = 1e-3
    lr_dict: dict[int, float] = field(default_factory=lambda: {128: 1.5e-3, 256: 2e-3, 512: 3e-3, 1024: 3e-3})
    discriminator_lr_dict: dict[int, float] = field(default_factory=lambda: {128: 1.5e-3, 256: 2e-3, 512: 3e-3,
                                                                             1024: 3e-3})
    channel_base: int = 16384  # = 2 x the official fmap_base 8192: 64 maps at 256^2, 512 up to 32^2
    ema_decay: float = 0.9989  # G_smoothing_kimg 10 at batch 16: 0.5 ** (16 / 10000)
    truncation_psi: float = 0.7  # the authors' sampling
    r1_gamma: float = 10.0  # paper Table 9
    r1_interval: int = 1  # StyleGAN 1 regularised every step
    initial_resolution: int = 8  # the official lod_initial_resolution
    fade_kimg: float = 600.0
    stable_kimg: float = 600.0


@dataclass(frozen=True)
class StyleGAN2Config(StyleGANConfig):
    """StyleGAN2: demodulated convolutions, skip G, residual D, lazy R1, path length.

    The stylegan3 repository's ``--cfg=stylegan2`` (config F widths, lr 0.002 / 0.002).
    """

    batch_gpu: int = 8  # the authors' 4 x A100: 8 per GPU
    lr: float = 2e-3
    discriminator_lr: float = 2e-3
    channel_base: int = 32768
    pl_weight: float = 2.0  # path-length regularisation; 0 turns it off
    pl_interval: int = 4


@dataclass(frozen=True)
class StyleGAN3Config(StyleGANConfig):
    """StyleGAN3-T: alias-free generator with Fourier-feature input and filtered non-linearities."""

    batch_gpu: int = 4  # the alias-free layers (pure PyTorch here) need more memory per image
    discriminator_lr: float = 2e-3
    channel_base: int = 32768
    mapping_layers: int = 2
    style_mixing: float = 0.0
    num_layers: int = 14  # synthesis layers between the input and the output
    margin_size: int = 10  # extra pixels computed around each layer's canvas
    first_cutoff: float = 2.0  # cutoff frequency of the first layer
    first_stopband: float = 2 ** 2.1
    last_stopband_rel: float = 2 ** 0.3  # last layer's stopband relative to its cutoff
    filter_size: int = 6  # low-pass filter taps per up/down-sampling factor
    lrelu_upsampling: int = 2  # oversampling of the filtered leaky ReLU


#: Generator families, each with its section below (the networks: ``synthmri.generators.FAMILIES``).
GENERATOR_MODELS = ("ddpm", "progan", "stylegan1", "stylegan2", "stylegan3")
DATA_SPLITS = ("published", "seeded")  # see DataConfig.split
EVALUATION_CONVENTIONS = ("paper", "penalise")  # see EvaluationConfig.convention
SEGMENTER_ARCHS = ("unet", "swin", "nnunet", "swinunetr")  # synthmri.segmenters.ARCHITECTURES; a test keeps them equal


@dataclass(frozen=True)
class GeneratorConfig:
    """Which generator to train and how many synthetic slices to draw."""

    model: str = "ddpm"
    n_synthetic: int = 100_000
    sample_batch_size: int = 64
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    progan: ProGANConfig = field(default_factory=ProGANConfig)
    stylegan1: StyleGAN1Config = field(default_factory=StyleGAN1Config)
    stylegan2: StyleGAN2Config = field(default_factory=StyleGAN2Config)
    stylegan3: StyleGAN3Config = field(default_factory=StyleGAN3Config)


@dataclass(frozen=True)
class UNetConfig:
    """The authors' U-Net (their ``Segmentation/learning/models.py``; paper, 'U-Net').

    Valid 3x3 convolutions, each followed by leaky ReLU then instance norm, max-pooling down,
    bilinear upsampling plus a 1x1 convolution up, an output per decoder level (deep
    supervision). Depth 6 with 64 filters doubling to 2048: 116,014,272 parameters.
    """

    depth: int = 6  # resolution levels
    base_filters: int = 64  # filters of the first level, doubled at every level below
    batch_size: int = 32  # the authors' base batch lives in an unpublished config.ini
    train_samples: int = 32_000_000  # the authors' code (the paper text: 3e7 or 3 days)
    lr: float = 2e-2  # the authors' code (the paper text: 5e-2)
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_power: float = 0.9
    val_every_samples: int = 200_000
    negative_slope: float = 0.01


@dataclass(frozen=True)
class SwinConfig:
    """Swin-Base with a UPerNet head and an FCN auxiliary head, as MMSegmentation builds it
    and the authors trained it (paper, 'Swin transformer'; about 121 M parameters)."""

    patch_size: int = 4
    window_size: int = 7
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    drop_path: float = 0.3  # stochastic depth rate of the last block (linear from 0)
    decode_channels: int = 512  # UPerNet's channels
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)  # UPerNet's pyramid pooling
    aux_channels: int = 256  # the FCN auxiliary head on the third stage
    aux_weight: float = 0.4
    batch_size: int = 8
    epochs: int = 25  # passes over the training pool, the last short batch of each dropped
    train_samples: int = 0  # 0: `epochs` decides the length; else this many samples
    lr: float = 6e-5
    weight_decay: float = 0.01
    warmup_steps: int = 1500  # linear warm-up, then linear decay to 0
    val_every_samples: int = 0  # 0: after every epoch (the authors' code)


@dataclass(frozen=True)
class NNUNetConfig:
    """nnU-Net-like 2D U-Net on MONAI DynUNet (``--arch nnunet``; this product's, cheaper than the paper's)."""

    filters: tuple[int, ...] = (32, 64, 128, 256, 480, 480, 480)
    deep_supervision_heads: int = 3
    batch_size: int = 32
    train_samples: int = 2_000_000  # training budget in samples (nnU-Net: 1000 epochs x 250 x 12)
    lr: float = 2e-2  # the published code's initial LR (the paper text says 5e-2)
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_power: float = 0.9
    val_every_samples: int = 50_000
    negative_slope: float = 0.01


@dataclass(frozen=True)
class SwinUNETRConfig:
    """MONAI SwinUNETR in 2D (``--arch swinunetr``) with the paper's Swin optimiser (AdamW, warm-up, linear decay)."""

    feature_size: int = 48  # embedding width of the first stage (divisible by 12)
    depths: tuple[int, ...] = (2, 2, 2, 2)  # Swin blocks per stage
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    drop_path: float = 0.1  # stochastic depth rate of the Swin blocks
    batch_size: int = 8
    # 160k iterations x batch 8: the mmsegmentation Swin schedule the paper's optimiser
    # settings come from (the paper does not state the length).
    train_samples: int = 1_280_000
    lr: float = 6e-5
    weight_decay: float = 0.01
    warmup_steps: int = 1500  # linear warm-up from 0, then linear decay to 0
    val_every_samples: int = 50_000


@dataclass(frozen=True)
class SegmenterConfig:
    """Segmentation training: architecture, data mix, augmentation, repeats."""

    arch: str = "unet"
    augment: bool = True
    repeats: int = 10
    # Ratio experiment (paper Fig. 4): a fixed pool of `ratio_total` slices (0: as many as
    # the real train split holds) with a share of real ones; the rest are synthetic.
    ratio_total: int = 0
    ratio_shares: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    unet: UNetConfig = field(default_factory=UNetConfig)
    swin: SwinConfig = field(default_factory=SwinConfig)
    nnunet: NNUNetConfig = field(default_factory=NNUNetConfig)
    swinunetr: SwinUNETRConfig = field(default_factory=SwinUNETRConfig)
    # Checkpoint selection of runs without real training data: on a share of the synthetic
    # images held out of training (the authors' code), so synthetic-only runs never read real
    # data before evaluation. Runs with real data select on the real store's val subjects.
    synthetic_holdout: float = 0.2


@dataclass(frozen=True)
class EvaluationConfig:
    """3D evaluation of segmenters on the test subjects."""

    eval_slices: str = "filtered"  # filtered (the paper) | all
    batch_size: int = 64
    # How undefined scores count. paper (the authors' code): Dice of a structure absent from
    # both prediction and reference, and Hausdorff when either is empty, are NaN and left out
    # of means (each mean says how many subjects it covers); sd over repeats is the population
    # sd. penalise: both empty scores Dice 1 and distance 0, one empty Dice 0 and the volume's
    # diagonal; sample sd.
    convention: str = "paper"


@dataclass(frozen=True)
class MemorizationConfig:
    """Nearest-training-image correlation of synthetic and held-out slices."""

    chunk_size: int = 4096  # rows of the synthetic/query matrix per matmul block
    threshold: float = 0.95  # a synthetic slice with max Pearson r above this is a near-copy
    top_k: int = 8  # nearest pairs shown in the report
    # Also match copies shifted by up to this many pixels ((2s+1)^2 times the work);
    # 0 is the paper's pixel-aligned statistic.
    max_shift: int = 2
    per_channel: bool = False  # also score each channel on its own (memorization_per_channel.csv)
    # `share` removes synthetic slices above this r; null: above the baseline's maximum,
    # i.e. closer to a training slice than any held-out real patient came.
    share_threshold: float | None = None


INCEPTION_INPUTS = ("t1ce_gray", "channels")  # see QualityConfig.inception_input


@dataclass(frozen=True)
class QualityConfig:
    """Distribution metrics of synthetic slices: FID/IS (InceptionV3) and in-domain ones."""

    # FID-Inception weights (pt_inception-2015-12-05): a file, s3:// URI or MLflow artifact
    # URI. Nothing is downloaded: without it FID and IS are skipped (and say so).
    inception_weights: str | None = None
    # What Inception sees as RGB: `t1ce_gray` the T1Gd channel replicated three times (paper
    # Table 2: "synthetic T1wGd images"); `channels` the three inception_channels as R, G, B.
    inception_input: str = "t1ce_gray"
    inception_channels: tuple[str, str, str] = ("t1ce", "t2", "flair")  # fed as R, G, B under `channels`
    # FID and IS: at most this many synthetic slices (Table 2: 100,000), against at most as many
    # real training slices (train + val), seeded subsets.
    inception_images: int = 100_000
    is_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3  # neighbours defining the precision/recall manifolds
    max_images: int = 10_000  # in-domain metrics: per set, a seeded subset
    batch_size: int = 64


@dataclass(frozen=True)
class PromotionConfig:
    """Gate for setting a generator's `champion` alias."""

    # Share of synthetic slices above the memorization threshold may exceed the held-out
    # real baseline's share by at most this margin (absolute).
    max_memorized_excess: float = 0.01
    # Dice of synthetic-only training relative to real-only (with augmentation).
    min_relative_dice: float = 0.7


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and model registry."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment_prefix: str = "synthmri"
    registered_model_prefix: str = "synthmri"
    # Id of the pipeline run a stage belongs to (Kubeflow passes its run's uuid): every stage's
    # MLflow run becomes a child of one parent run per pipeline run. Empty: no parent.
    pipeline_run: str = ""


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of a run."""

    profile: str = "paper"
    seed: int = 0
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {_coerce(k, kt, f"{where}.{k}"): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # an id or name that YAML read as a number (``--set tracking.pipeline_run=1234``)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    base = cls()
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            # Merge a partial section into that section's defaults.
            merged = {**to_dict(current), **value}
            kwargs[name] = _coerce(merged, hints[name], key)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    return dataclasses.replace(base, **kwargs)


def to_dict(obj: Any) -> Any:
    """A plain, YAML/JSON-serialisable view of a config (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> scalar values, e.g. ``{"data.size": 64}``; for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in to_dict(obj).items():
        name = f"{prefix}{key}"
        # label_map has int keys: keep it whole as one value rather than descending.
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def resolve_profile_path(profile: str | os.PathLike) -> Path:
    """Find a profile by path, or by name in $SYNTHMRI_CONFIG_DIR or ./configs."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"profile file not found: {path}")
        return path
    dirs = [Path(os.environ[CONFIG_DIR_ENV])] if os.environ.get(CONFIG_DIR_ENV) else []
    dirs.append(Path.cwd() / "configs")
    for directory in dirs:
        candidate = directory / f"{profile}.yaml"
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(d) for d in dirs)
    raise ConfigError(f"profile {str(profile)!r} not found (looked for {profile}.yaml in {searched})")


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating sections on the way."""
    *sections, leaf = dotted.split(".")
    node = values
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {section!r} is not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value parsed as YAML (``data.size=64``, ``a.b=[1,2]``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_config(profile: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a profile and apply dotted overrides.

    Args:
        profile: profile name (``demo``, ``paper``) or path to a YAML file; None gives the
            paper defaults.
        overrides: dotted keys to values, applied after the profile
            (e.g. ``{"data.size": 64}``).

    Returns:
        The frozen, validated Config.

    Raises:
        ConfigError: unknown key, wrong type or missing profile; the message names it.
    """
    values: dict[str, Any] = {}
    if profile is not None:
        path = resolve_profile_path(profile)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a profile must be a mapping of sections")
        values = loaded
        values.setdefault("profile", path.stem)
    for key, value in (overrides or {}).items():
        set_dotted(values, key, value)
    try:
        config = _build(Config, values, "")
    except ConfigError as exc:
        where = f"profile {profile}: " if profile is not None else ""
        raise ConfigError(f"{where}{exc}") from None
    _validate(config)
    return config


def _validate(config: Config) -> None:
    data = config.data
    if data.size > data.pad_to:
        raise ConfigError(f"data.size ({data.size}) must not exceed data.pad_to ({data.pad_to})")
    if not 0.0 <= data.min_foreground_fraction < 1.0:
        raise ConfigError(f"data.min_foreground_fraction must be in [0, 1), got {data.min_foreground_fraction}")
    if not 0.0 <= data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {data.val_fraction}")
    if data.filter_channel not in ("t1", "t1ce", "t2", "flair"):
        raise ConfigError(f"data.filter_channel must be an image channel, got {data.filter_channel!r}")
    if data.split not in DATA_SPLITS:
        raise ConfigError(f"data.split must be one of {', '.join(DATA_SPLITS)}, got {data.split!r}")
    if data.layout not in ("auto", "brats2020", "brats2021", "brats2023", "generic"):
        raise ConfigError(f"data.layout must be auto, brats2020, brats2021, brats2023 or generic, got {data.layout!r}")
    values = sorted((data.label_map or {1: 1}).values())
    if len(set(values)) != len(values) or any(not 0 < v <= 255 for v in values):
        raise ConfigError(f"data.label_map values must be distinct in 1..255, got {data.label_map}")
    if config.generator.model not in GENERATOR_MODELS:
        raise ConfigError(f"generator.model must be one of {', '.join(GENERATOR_MODELS)}, got {config.generator.model!r}")
    ddpm = config.generator.ddpm
    if ddpm.sampler not in ("ancestral", "ddim", "ddpm"):  # ddpm: the old name of ancestral
        raise ConfigError(f"generator.ddpm.sampler must be ancestral or ddim, got {ddpm.sampler!r}")
    if ddpm.network not in ("guided", "monai"):
        raise ConfigError(f"generator.ddpm.network must be guided or monai, got {ddpm.network!r}")
    if ddpm.schedule not in ("rescaled_linear", "linear"):
        raise ConfigError(f"generator.ddpm.schedule must be rescaled_linear or linear, got {ddpm.schedule!r}")
    if ddpm.batch_gpu < 0:
        raise ConfigError(f"generator.ddpm.batch_gpu must be 0 (the whole batch) or positive, got {ddpm.batch_gpu}")
    if ddpm.norm_num_groups < 1:
        raise ConfigError(f"generator.ddpm.norm_num_groups must be positive, got {ddpm.norm_num_groups}")
    if ddpm.network == "monai":
        if any(c % ddpm.norm_num_groups for c in ddpm.channels):
            raise ConfigError(f"generator.ddpm.channels {list(ddpm.channels)} must be multiples of norm_num_groups ({ddpm.norm_num_groups})")
        if len(ddpm.attention_levels) != len(ddpm.channels):
            raise ConfigError(f"generator.ddpm.attention_levels needs one entry per channels level ({len(ddpm.channels)})")
    elif not ddpm.channel_mult or any(m < 1 or ddpm.model_channels * m % ddpm.norm_num_groups for m in ddpm.channel_mult):
        raise ConfigError(f"generator.ddpm.model_channels ({ddpm.model_channels}) times each channel_mult "
                          f"{list(ddpm.channel_mult)} must be a positive multiple of norm_num_groups ({ddpm.norm_num_groups})")
    seg = config.segmenter
    if seg.arch not in SEGMENTER_ARCHS:
        raise ConfigError(f"segmenter.arch must be one of {', '.join(SEGMENTER_ARCHS)}, got {seg.arch!r}")
    if seg.repeats < 1:
        raise ConfigError(f"segmenter.repeats must be at least 1, got {seg.repeats}")
    if seg.ratio_total < 0:
        raise ConfigError(f"segmenter.ratio_total must be 0 (the real train split's size) or positive, got {seg.ratio_total}")
    if not seg.ratio_shares or any(not 0.0 <= s <= 1.0 for s in seg.ratio_shares):
        raise ConfigError(f"segmenter.ratio_shares must be shares in [0, 1], got {list(seg.ratio_shares)}")
    if not 0.0 < seg.synthetic_holdout < 1.0:
        raise ConfigError(f"segmenter.synthetic_holdout must be a share in (0, 1), got {seg.synthetic_holdout}")
    swinunetr = seg.swinunetr
    if swinunetr.feature_size % 12:
        raise ConfigError(f"segmenter.swinunetr.feature_size must be a multiple of 12, got {swinunetr.feature_size}")
    if len(swinunetr.depths) != len(swinunetr.num_heads):
        raise ConfigError(f"segmenter.swinunetr.depths {list(swinunetr.depths)} and num_heads "
                          f"{list(swinunetr.num_heads)} need one entry per stage")
    swin = seg.swin
    if len(swin.depths) != len(swin.num_heads):
        raise ConfigError(f"segmenter.swin.depths {list(swin.depths)} and num_heads {list(swin.num_heads)} "
                          "need one entry per stage")
    if swin.epochs < 0 or swin.train_samples < 0 or (swin.epochs == 0) == (swin.train_samples == 0):
        raise ConfigError(f"segmenter.swin: give the length as epochs or as train_samples, one of them "
                          f"(got epochs {swin.epochs}, train_samples {swin.train_samples})")
    unet = seg.unet
    if unet.depth < 2 or unet.base_filters < 1:
        raise ConfigError(f"segmenter.unet.depth must be at least 2 and base_filters at least 1, "
                          f"got {unet.depth} and {unet.base_filters}")
    mem = config.memorization
    if mem.max_shift < 0:
        raise ConfigError(f"memorization.max_shift must be 0 or more, got {mem.max_shift}")
    if mem.share_threshold is not None and not -1.0 <= mem.share_threshold <= 1.0:
        raise ConfigError(f"memorization.share_threshold must be a correlation in [-1, 1] or null, got {mem.share_threshold}")
    quality = config.quality
    unknown = [c for c in quality.inception_channels if c not in ("t1", "t1ce", "t2", "flair", "seg")]
    if unknown:
        raise ConfigError(f"quality.inception_channels: unknown channel(s) {unknown}; use t1, t1ce, t2, flair, seg")
    if quality.inception_input not in INCEPTION_INPUTS:
        raise ConfigError(f"quality.inception_input must be one of {', '.join(INCEPTION_INPUTS)}, "
                          f"got {quality.inception_input!r}")
    if quality.max_images < 2 or quality.pr_k < 1 or quality.is_splits < 1:
        raise ConfigError("quality.max_images must be at least 2, quality.pr_k and quality.is_splits at least 1")
    if quality.inception_images < 2:
        raise ConfigError(f"quality.inception_images must be at least 2, got {quality.inception_images}")
    if config.evaluation.convention not in EVALUATION_CONVENTIONS:
        raise ConfigError(f"evaluation.convention must be one of {', '.join(EVALUATION_CONVENTIONS)}, "
                          f"got {config.evaluation.convention!r}")
    if config.evaluation.eval_slices not in ("filtered", "all"):
        raise ConfigError(f"evaluation.eval_slices must be filtered or all, got {config.evaluation.eval_slices!r}")


def dump_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from synthmri.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
