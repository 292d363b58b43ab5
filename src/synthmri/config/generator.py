"""Generator sections of the config: one frozen dataclass per family, and the generator level.

Defaults are the paper's settings (Akbar et al. 2024); see :mod:`synthmri.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from synthmri.config.sections import ExtraSections, extra_sections_field

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


@dataclass(frozen=True)
class GeneratorConfig(ExtraSections):
    """Which generator to train and how many synthetic slices to draw."""

    model: str = "ddpm"
    n_synthetic: int = 100_000
    sample_batch_size: int = 64
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    progan: ProGANConfig = field(default_factory=ProGANConfig)
    stylegan1: StyleGAN1Config = field(default_factory=StyleGAN1Config)
    stylegan2: StyleGAN2Config = field(default_factory=StyleGAN2Config)
    stylegan3: StyleGAN3Config = field(default_factory=StyleGAN3Config)
    # Sections of generator families registered at runtime, by name (synthmri.config.sections):
    # read as cfg.generator.<name>, written out beside the sections above.
    extra_sections: dict[str, Any] = extra_sections_field("GENERATORS")
