"""The typed configuration: frozen dataclasses, one per section, and the whole :class:`Config`.

The dataclass defaults are the paper's settings (Akbar et al. 2024, see docs/design.md and docs/fidelity.md); the
generator sections live in :mod:`synthmri.config.generator`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from synthmri.config.generator import GeneratorConfig
from synthmri.config.sections import ExtraSections, extra_sections_field

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
class SegmenterConfig(ExtraSections):
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
    # Sections of architectures registered at runtime, by name (synthmri.config.sections):
    # read as cfg.segmenter.<name>, written out beside the sections above.
    extra_sections: dict[str, Any] = extra_sections_field("SEGMENTERS")


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
    # How r is computed: `int8` exact integer products of the uint8 pixels (float64 r), `float32`
    # normalised float32 rows (r to ~1e-6), `auto` int8 where the device has an int8 product.
    arithmetic: str = "auto"
    # `share` removes synthetic slices above this r; null: above the baseline's maximum,
    # i.e. closer to a training slice than any held-out real patient came.
    share_threshold: float | None = None


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
    # The gate refuses to judge against a real-only baseline whose mean Dice is below this: a
    # baseline that failed to train would make any generator look good. Far below the paper's
    # real-only 0.73-0.80 (Table 3), so only a failed training trips it.
    min_real_dice: float = 0.5


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
