"""DDPM: the paper's diffusion model (openai/guided-diffusion as the authors ran it).

The authors trained guided-diffusion's UNet with ``--image_size 256 --num_channels 64
--num_res_blocks 3 --diffusion_steps 4000 --noise_schedule linear --lr 1e-4`` and the
repository's defaults for the rest (PAPER-FIDELITY.md "Diffusion model"). This module
reproduces that run:

* network (``generator.ddpm.network``): ``guided`` is guided-diffusion's UNet
  (:mod:`synthmri.generators.guided_unet`, 41,125,637 parameters at the paper settings);
  ``monai`` a MONAI ``DiffusionModelUNet`` (the demo's small, fast network).
* schedule (``schedule``): ``rescaled_linear`` is guided-diffusion's "linear":
  ``betas = linspace(s * beta_start, s * beta_end, T)`` with ``s = 1000 / T`` and the
  reference betas 1e-4 and 0.02, i.e. 2.5e-5 ... 5e-3 at T = 4000; ``linear`` is the plain
  ``linspace(beta_start, beta_end, T)``. Schedule coefficients are computed in float64
  and applied in float32, as guided-diffusion does.
* objective: epsilon prediction, MSE over all pixels (``learn_sigma False``); Adam without
  weight decay (guided-diffusion's AdamW with ``weight_decay 0``); the EMA (0.9999) lives in
  the training loop. ``batch_gpu`` splits a batch into micro-batches whose gradients
  accumulate into one optimiser step (the result equals the full-batch step).
* sampler ``ancestral`` (the paper's): guided-diffusion's ``p_sample_loop`` with the
  fixed-large variance of ``learn_sigma False``: from x_T ~ N(0, I), for t = T-1 ... 0,
  x0_hat = clip(sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps, -1, 1) (``clip_denoised``,
  the authors' sampling default), then x_{t-1} = mu_t(x0_hat, x_t) + sigma_t z with the
  posterior mean mu_t = c1_t x0_hat + c2_t x_t, c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t),
  c2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t). Fixed-large: sigma_t^2 = beta_t for
  t >= 1; guided-diffusion stores the posterior variance at t = 1,
  beta_1 (1 - abar_0) / (1 - abar_1), as the t = 0 entry (it only enters the likelihood
  bound), and adds no noise at t = 0, so the last step returns the posterior mean, which
  at t = 0 is x0_hat itself. The paper sampled this full 4000-step chain.
* sampler ``ddim``: deterministic DDIM (eta 0) in ``sample_steps`` strided steps, with the
  same clipped x0_hat and the noise re-derived from it (guided-diffusion's ``ddim_sample``).
  This is this product's fast-sampling extension, not the paper's.

Images enter the network scaled from uint8 0..255 to [-1, 1] and leave it as uint8 with
the annotation channel snapped to 0/51/102/204.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet

from synthmri.config import DDPM_NETWORKS, DDPM_SAMPLER_ALIASES, DDPM_SAMPLERS, DDPM_SCHEDULES, ConfigError
from synthmri.generators.distributed import Runtime, device_of
from synthmri.generators.guided_unet import GuidedUNet, check_shape
from synthmri.generators.layers import gaussian
from synthmri.generators.pixels import to_uint8, to_unit_range

if TYPE_CHECKING:
    from synthmri.config import Config, DDPMConfig

_MONAI_KEYS = ("spatial_dims", "in_channels", "out_channels", "channels", "attention_levels",
               "num_res_blocks", "num_head_channels", "norm_num_groups")


def model_args_from(section: "DDPMConfig", image_size: int, channels: int) -> dict[str, Any]:
    """Network and noise-schedule arguments, checked against the image size.

    The section itself was validated with the config (:mod:`synthmri.config.validate`);
    what is checked here is what depends on `image_size`, the slice store's.

    Args:
        section: the ``generator.ddpm`` section.
        image_size: side of the square training images.
        channels: image channels.

    Returns:
        JSON-able arguments of :func:`build_network` and the noise schedule.

    Raises:
        ConfigError: (a ValueError) the network does not fit `image_size`; the message
            names the key.
    """
    groups = int(section.norm_num_groups)
    if section.network == "guided":
        args = _guided_args(section, image_size, channels, groups)
    else:
        args = _monai_args(section, image_size, channels, groups)
    schedule = {"timesteps": int(section.timesteps), "schedule": section.schedule,
                "beta_start": float(section.beta_start), "beta_end": float(section.beta_end)}
    return {**args, "image_size": int(image_size), **schedule}


def _guided_args(section: "DDPMConfig", image_size: int, channels: int, groups: int) -> dict[str, Any]:
    mult = [int(m) for m in section.channel_mult]
    attention = [int(r) for r in section.attention_resolutions]
    try:
        check_shape(image_size, mult, attention)
    except ValueError as exc:
        raise ConfigError(f"generator.ddpm.channel_mult/attention_resolutions: {exc}") from None
    widths = [section.model_channels * m for m in mult]
    attended = [w for level, w in enumerate(widths) if image_size // 2 ** level in attention] + [widths[-1]]
    if any(w % section.num_heads for w in attended):
        raise ConfigError(f"generator.ddpm.num_heads={section.num_heads} must divide the attention widths {attended}")
    return {"network": "guided", "in_channels": channels, "out_channels": channels,
            "model_channels": int(section.model_channels), "channel_mult": mult,
            "num_res_blocks": int(section.num_res_blocks), "attention_resolutions": attention,
            "num_heads": int(section.num_heads), "use_scale_shift_norm": bool(section.use_scale_shift_norm),
            "dropout": float(section.dropout), "norm_num_groups": groups}


def _monai_args(section: "DDPMConfig", image_size: int, channels: int, groups: int) -> dict[str, Any]:
    widths = tuple(int(c) for c in section.channels)
    attention = tuple(bool(a) for a in section.attention_levels)
    factor = 2 ** (len(widths) - 1)
    if image_size % factor:
        raise ConfigError(f"image size {image_size} is not divisible by {factor} "
                          f"(generator.ddpm.channels has {len(widths)} levels, each halving the size)")
    return {"network": "monai", "spatial_dims": 2, "in_channels": channels, "out_channels": channels,
            "channels": list(widths), "attention_levels": list(attention),
            "num_res_blocks": int(section.num_res_blocks), "num_head_channels": int(section.num_head_channels),
            "norm_num_groups": groups}


def build_network(model_args: Mapping[str, Any]) -> torch.nn.Module:
    """The denoiser eps(x_t, t) from :func:`model_args_from` output.

    Model arguments without ``network`` (checkpoints written before the guided network
    existed) build the MONAI network they were trained with.
    """
    network = model_args.get("network", "monai")
    if network == "monai":
        return DiffusionModelUNet(**{key: model_args[key] for key in _MONAI_KEYS})
    if network == "guided":
        return GuidedUNet(image_size=model_args["image_size"], in_channels=model_args["in_channels"],
                          model_channels=model_args["model_channels"], out_channels=model_args["out_channels"],
                          num_res_blocks=model_args["num_res_blocks"],
                          attention_resolutions=model_args["attention_resolutions"],
                          channel_mult=model_args["channel_mult"], num_heads=model_args["num_heads"],
                          dropout=model_args["dropout"], use_scale_shift_norm=model_args["use_scale_shift_norm"],
                          norm_groups=model_args["norm_num_groups"])
    raise ValueError(f"unknown DDPM network {network!r}; known: {', '.join(DDPM_NETWORKS)}")


def betas_for(model_args: Mapping[str, Any]) -> np.ndarray:
    """float64 betas of the schedule in `model_args` (no ``schedule`` key: ``linear``, the old default)."""
    total = int(model_args["timesteps"])
    start, end = float(model_args["beta_start"]), float(model_args["beta_end"])
    kind = model_args.get("schedule", "linear")
    if kind == "rescaled_linear":
        start, end = start * 1000 / total, end * 1000 / total
    elif kind != "linear":
        raise ValueError(f"unknown DDPM schedule {kind!r}; known: {', '.join(DDPM_SCHEDULES)}")
    return np.linspace(start, end, total, dtype=np.float64)


class Schedule:
    """The diffusion's float64 coefficients (guided-diffusion's ``GaussianDiffusion``) and steps.

    Attributes (numpy float64, one entry per timestep): ``betas``, ``alphas_cumprod``,
    ``alphas_cumprod_prev`` (1 before t = 0), ``posterior_mean_coef1``/``coef2`` and
    ``variance_large`` (fixed-large: beta_t, with the posterior variance at t = 1 at t = 0).
    """

    def __init__(self, model_args: Mapping[str, Any]) -> None:
        self.betas = betas_for(model_args)
        if not ((self.betas > 0) & (self.betas < 1)).all():
            raise ValueError(f"DDPM betas must lie in (0, 1); {model_args.get('schedule', 'linear')} over "
                             f"{len(self.betas)} steps spans {self.betas[0]:.3g}..{self.betas[-1]:.3g}")
        self.timesteps = len(self.betas)
        alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.variance_large = np.append(posterior_variance[1], self.betas[1:])
        self._tables: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _at(self, values: np.ndarray, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """values[t] as float32 shaped to broadcast over `x` ([N] -> [N, 1, 1, 1])."""
        key = (id(values), t.device)
        table = self._tables.get(key)
        if table is None:  # float64 on the device once per array, indexed there every step
            table = self._tables[key] = torch.from_numpy(values).to(t.device)
        return table[t].float().view(-1, *([1] * (x.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, per element of `t`."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def predict_x0(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat from the predicted noise, clipped to [-1, 1] (``clip_denoised``)."""
        x0 = self._at(self.sqrt_recip_alphas_cumprod, t, x) * x - self._at(self.sqrt_recipm1_alphas_cumprod, t, x) * eps
        return x0.clamp(-1.0, 1.0)

    def ancestral_step(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                       noise: torch.Tensor | None) -> torch.Tensor:
        """x_{t-1} = posterior mean + sqrt(fixed-large variance) * noise (no noise where t = 0)."""
        x0 = self.predict_x0(x, t, eps)
        mean = self._at(self.posterior_mean_coef1, t, x) * x0 + self._at(self.posterior_mean_coef2, t, x) * x
        if noise is None:
            return mean
        nonzero = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        return mean + nonzero * self._at(self.variance_large, t, x).sqrt() * noise

    def ddim_step(self, x: torch.Tensor, t: torch.Tensor, t_prev: int, eps: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM from t to `t_prev` (-1: the clean image, abar = 1)."""
        x0 = self.predict_x0(x, t, eps)
        eps = (self._at(self.sqrt_recip_alphas_cumprod, t, x) * x - x0) / self._at(self.sqrt_recipm1_alphas_cumprod, t, x)
        abar_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        return x0 * abar_prev ** 0.5 + (1.0 - abar_prev) ** 0.5 * eps


def ddim_timesteps(total: int, steps: int) -> torch.Tensor:
    """`steps` timesteps strided by ``total // steps``, the first as noisy as possible and the
    last below the stride (so its step lands on the clean image): e.g. 1000, 15 -> 989, 923, ..., 65."""
    if not 1 <= steps <= total:
        raise ValueError(f"DDIM steps must be in 1..{total} (the training timesteps), got {steps}")
    stride = total // steps
    offset = min(stride - 1, total - 1 - (steps - 1) * stride)
    return offset + stride * torch.arange(steps - 1, -1, -1, dtype=torch.long)


class DDPMTrainer:
    """Noise-prediction MSE with Adam (no weight decay) on one denoiser.

    Args:
        network: the denoiser being trained (in train mode).
        model_args: its :func:`model_args_from` output (for the noise schedule).
        lr: Adam learning rate.
        runtime: device, mixed precision and gradient averaging across processes.
        batch_gpu: micro-batch size; gradients of the micro-batches of a batch accumulate
            into one optimiser step (0: the whole batch at once).
    """

    def __init__(self, network: torch.nn.Module, model_args: Mapping[str, Any], lr: float,
                 runtime: Runtime | None = None, batch_gpu: int = 0) -> None:
        if batch_gpu < 0:
            raise ValueError(f"batch_gpu must be 0 (the whole batch) or positive, got {batch_gpu}")
        self.network = network
        self.runtime = runtime or Runtime()
        self.schedule = Schedule(model_args)
        self.timesteps = self.schedule.timesteps
        self.batch_gpu = int(batch_gpu)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=0.0)

    def step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """Noise a uint8 batch at random timesteps and regress the noise; one Adam step.

        Noise and timesteps are drawn for the whole batch before it is split, so a step
        in micro-batches sees exactly what the full-batch step sees; each micro-batch's
        loss is weighted by its share of the batch, so the accumulated gradient is the
        full batch's.
        """
        run = self.runtime
        x0 = to_unit_range(batch.to(run.device, non_blocking=True))
        noise = gaussian(tuple(x0.shape), generator, run.device)
        t = torch.randint(0, self.timesteps, (len(x0),), generator=generator).to(run.device)
        size = self.batch_gpu or len(x0)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=run.device)
        for first in range(0, len(x0), size):
            part = slice(first, first + size)
            noisy = self.schedule.add_noise(x0[part], noise[part], t[part])
            with run.autocast():
                predicted = self.network(noisy, t[part])
            loss = F.mse_loss(predicted.float(), noise[part]) * (len(noisy) / len(x0))
            loss.backward()
            total += loss.detach()
        run.average_gradients(self.network)
        self.optimizer.step()
        return {"loss": float(total)}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def sampler_name(kind: str) -> str:
    """The canonical sampler name (``ddpm`` -> ``ancestral``); ValueError for an unknown one."""
    kind = DDPM_SAMPLER_ALIASES.get(kind, kind)
    if kind not in DDPM_SAMPLERS:
        raise ValueError(f"DDPM sampler must be one of {DDPM_SAMPLERS}, got {kind!r}")
    return kind


@torch.inference_mode()
def sample(network: torch.nn.Module, model_args: Mapping[str, Any], n: int,
           generator: torch.Generator, options: Mapping[str, Any]) -> np.ndarray:
    """Draw `n` images in one batch.

    Args:
        network: a trained denoiser.
        model_args: its model arguments (schedule and image size).
        n: batch size.
        generator: seeds the initial noise and, for the ancestral chain, each step's noise.
        options: ``{"sampler": "ancestral" | "ddim", "steps": int}`` (default ancestral);
            ``steps`` is used by DDIM only (the ancestral chain walks every timestep).

    Returns:
        uint8 [n, C, H, W] with the annotation channel on 0/51/102/204.
    """
    unknown = sorted(set(options) - {"sampler", "steps"})
    if unknown:
        raise ValueError(f"unknown DDPM sampling option(s) {unknown}; known: sampler, steps")
    kind = sampler_name(options.get("sampler", "ancestral"))
    schedule = Schedule(model_args)
    size = int(model_args["image_size"])
    device = device_of(network)
    x = gaussian((n, int(model_args["in_channels"]), size, size), generator, device)
    network.eval()
    if kind == "ddim":
        timesteps = ddim_timesteps(schedule.timesteps, int(options.get("steps", 100))).tolist()
        for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
            step = torch.full((n,), t, dtype=torch.long, device=device)
            x = schedule.ddim_step(x, step, t_prev, network(x, step))
    else:
        for t in range(schedule.timesteps - 1, -1, -1):
            step = torch.full((n,), t, dtype=torch.long, device=device)
            eps = network(x, step)
            noise = gaussian(tuple(x.shape), generator, device) if t > 0 else None
            x = schedule.ancestral_step(x, step, eps, noise)
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
        section = cfg.generator.ddpm
        return DDPMTrainer(network, model_args, section.lr, runtime, section.batch_gpu)

    def sampling_options(self, cfg: "Config") -> dict[str, Any]:
        section = cfg.generator.ddpm
        return {"sampler": sampler_name(section.sampler), "steps": int(section.sample_steps)}

    def sample(self, network: torch.nn.Module, model_args: Mapping[str, Any], n: int,
               generator: torch.Generator, options: Mapping[str, Any]) -> np.ndarray:
        return sample(network, model_args, n, generator, options)


FAMILY = DDPMFamily()
