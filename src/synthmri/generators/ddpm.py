"""DDPM: a MONAI DiffusionModelUNet denoiser trained on the 5 channels jointly.

The paper trains a DDPM with a linear beta schedule over 4000 steps; we train the same
noise-prediction objective and sample either with the full ancestral DDPM chain or with
DDIM in a few steps (DESIGN.md: DDIM reaches similar quality in 20-100 steps).

Images enter the network scaled from uint8 0..255 to [-1, 1] and leave it as uint8 with
the annotation channel snapped to 0/51/102/204. The network is a plain
``DiffusionModelUNet``: the noise schedule, loss and sampling loop live here, outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from synthmri.config import ConfigError
from synthmri.generators.distributed import Runtime, device_of
from synthmri.generators.layers import gaussian
from synthmri.generators.pixels import to_uint8, to_unit_range

if TYPE_CHECKING:
    from synthmri.config import Config, DDPMConfig

SAMPLERS = ("ddim", "ddpm")
_UNET_KEYS = ("spatial_dims", "in_channels", "out_channels", "channels", "attention_levels",
              "num_res_blocks", "num_head_channels", "norm_num_groups")


def model_args_from(section: "DDPMConfig", image_size: int, channels: int) -> dict[str, Any]:
    """Network and noise-schedule arguments, checked against the image size.

    Raises:
        ConfigError: (a ValueError) an inconsistent ``generator.ddpm`` section; the message
            names the key.
    """
    widths = tuple(int(c) for c in section.channels)
    attention = tuple(bool(a) for a in section.attention_levels)
    if len(attention) != len(widths):
        raise ConfigError(f"generator.ddpm.attention_levels has {len(attention)} entries, "
                         f"generator.ddpm.channels has {len(widths)}; they must match")
    groups = int(section.norm_num_groups)
    if groups < 1 or any(width % groups for width in widths):
        raise ConfigError(f"generator.ddpm.channels {list(widths)} must be multiples of "
                         f"generator.ddpm.norm_num_groups ({groups})")
    factor = 2 ** (len(widths) - 1)
    if image_size % factor:
        raise ConfigError(f"image size {image_size} is not divisible by {factor} "
                         f"(generator.ddpm.channels has {len(widths)} levels, each halving the size)")
    for level, (width, attend) in enumerate(zip(widths, attention)):
        if attend and width % section.num_head_channels:
            raise ConfigError(f"generator.ddpm.channels[{level}]={width} is not divisible by "
                             f"generator.ddpm.num_head_channels={section.num_head_channels}")
    if not 0 < section.beta_start < section.beta_end < 1:
        raise ConfigError(f"generator.ddpm needs 0 < beta_start < beta_end < 1, got {section.beta_start}, {section.beta_end}")
    if section.timesteps < 2:
        raise ConfigError(f"generator.ddpm.timesteps must be at least 2, got {section.timesteps}")
    return {
        "spatial_dims": 2,
        "in_channels": channels,
        "out_channels": channels,
        "channels": list(widths),
        "attention_levels": list(attention),
        "num_res_blocks": int(section.num_res_blocks),
        "num_head_channels": int(section.num_head_channels),
        "norm_num_groups": groups,
        "image_size": int(image_size),
        "timesteps": int(section.timesteps),
        "beta_start": float(section.beta_start),
        "beta_end": float(section.beta_end),
    }


def build_network(model_args: Mapping[str, Any]) -> DiffusionModelUNet:
    """The denoiser eps(x_t, t) from :func:`model_args_from` output."""
    return DiffusionModelUNet(**{key: model_args[key] for key in _UNET_KEYS})


def noise_scheduler(model_args: Mapping[str, Any]) -> DDPMScheduler:
    """The training (and ancestral sampling) schedule: linear betas over `timesteps`."""
    return DDPMScheduler(num_train_timesteps=model_args["timesteps"], schedule="linear_beta",
                         beta_start=model_args["beta_start"], beta_end=model_args["beta_end"])


def ddim_scheduler(model_args: Mapping[str, Any], steps: int) -> DDIMScheduler:
    """A DDIM schedule of `steps` timesteps, evenly strided, whose last step lands on x_0."""
    total = model_args["timesteps"]
    if not 1 <= steps <= total:
        raise ValueError(f"DDIM steps must be in 1..{total} (the training timesteps), got {steps}")
    scheduler = DDIMScheduler(num_train_timesteps=total, schedule="linear_beta",
                              beta_start=model_args["beta_start"], beta_end=model_args["beta_end"])
    scheduler.set_timesteps(steps)
    # MONAI's step() moves from t to t - total // steps, but its rounded-linspace timesteps are
    # not spaced by that stride, so each step would land off the next timestep. Use exactly
    # strided ones, offset so the first is as noisy as possible and the last steps to t < 0
    # (the clean image): e.g. 1000 timesteps, 15 steps -> 989, 923, ..., 65.
    stride = total // steps
    offset = min(stride - 1, total - 1 - (steps - 1) * stride)
    scheduler.timesteps = offset + stride * torch.arange(steps - 1, -1, -1, dtype=torch.long)
    return scheduler


class DDPMTrainer:
    """Noise-prediction MSE with AdamW on one denoiser.

    Args:
        network: the DiffusionModelUNet being trained (in train mode).
        model_args: its :func:`model_args_from` output (for the noise schedule).
        lr: AdamW learning rate.
    """

    def __init__(self, network: torch.nn.Module, model_args: Mapping[str, Any], lr: float,
                 runtime: Runtime | None = None) -> None:
        self.network = network
        self.runtime = runtime or Runtime()
        self.scheduler = noise_scheduler(model_args)
        self.timesteps = int(model_args["timesteps"])
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=lr)

    def step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """Noise a uint8 batch at random timesteps and regress the noise; one AdamW step."""
        run = self.runtime
        x0 = to_unit_range(batch.to(run.device, non_blocking=True))
        noise = gaussian(tuple(x0.shape), generator, run.device)
        t = torch.randint(0, self.timesteps, (len(x0),), generator=generator).to(run.device)
        noisy = self.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
        with run.autocast():
            predicted = self.network(noisy, t)
        loss = F.mse_loss(predicted.float(), noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.average_gradients(self.network)
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


@torch.inference_mode()
def sample(network: torch.nn.Module, model_args: Mapping[str, Any], n: int,
           generator: torch.Generator, options: Mapping[str, Any]) -> np.ndarray:
    """Draw `n` images in one batch.

    Args:
        network: a trained denoiser.
        model_args: its model arguments (schedule and image size).
        n: batch size.
        generator: seeds the initial noise (and the DDPM chain's noise).
        options: ``{"sampler": "ddim" | "ddpm", "steps": int}``; ``steps`` is used by DDIM
            only (DDPM walks every training timestep).

    Returns:
        uint8 [n, C, H, W] with the annotation channel on 0/51/102/204.
    """
    unknown = sorted(set(options) - {"sampler", "steps"})
    if unknown:
        raise ValueError(f"unknown DDPM sampling option(s) {unknown}; known: sampler, steps")
    kind = options.get("sampler", "ddim")
    if kind not in SAMPLERS:
        raise ValueError(f"DDPM sampler must be one of {SAMPLERS}, got {kind!r}")
    if kind == "ddim":
        scheduler: DDPMScheduler | DDIMScheduler = ddim_scheduler(model_args, int(options.get("steps", 100)))
    else:
        scheduler = noise_scheduler(model_args)
    size = int(model_args["image_size"])
    device = device_of(network)
    x = gaussian((n, int(model_args["in_channels"]), size, size), generator, device)
    network.eval()
    for t in scheduler.timesteps:
        eps = network(x, torch.full((n,), int(t), dtype=torch.long, device=device))
        if kind == "ddim":
            x, _ = scheduler.step(eps, int(t), x)  # eta = 0: deterministic given the start noise
        else:
            x, _ = scheduler.step(eps, int(t), x, generator=generator)
    return to_uint8(x)


@dataclass(frozen=True)
class DDPMFamily:
    """The ``ddpm`` entry of :data:`synthmri.generators.FAMILIES`."""

    name: str = "ddpm"

    def settings(self, cfg: "Config") -> "DDPMConfig":
        return cfg.generator.ddpm

    def model_args(self, cfg: "Config", image_size: int, channels: int = 5) -> dict[str, Any]:
        return model_args_from(cfg.generator.ddpm, image_size, channels)

    def build(self, model_args: Mapping[str, Any]) -> torch.nn.Module:
        return build_network(model_args)

    def trainer(self, network: torch.nn.Module, model_args: Mapping[str, Any], cfg: "Config",
                runtime: Runtime | None = None) -> DDPMTrainer:
        return DDPMTrainer(network, model_args, cfg.generator.ddpm.lr, runtime)

    def sampling_options(self, cfg: "Config") -> dict[str, Any]:
        section = cfg.generator.ddpm
        if section.sampler not in SAMPLERS:
            raise ConfigError(f"generator.ddpm.sampler must be one of {SAMPLERS}, got {section.sampler!r}")
        if section.sample_steps < 1:
            raise ConfigError(f"generator.ddpm.sample_steps must be positive, got {section.sample_steps}")
        return {"sampler": section.sampler, "steps": int(section.sample_steps)}

    def sample(self, network: torch.nn.Module, model_args: Mapping[str, Any], n: int,
               generator: torch.Generator, options: Mapping[str, Any]) -> np.ndarray:
        return sample(network, model_args, n, generator, options)


FAMILY = DDPMFamily()
