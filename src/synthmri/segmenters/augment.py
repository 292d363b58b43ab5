"""The paper's U-Net augmentation, batched in torch on the tensors' device.

Each step is a function of the images it changes and their per-sample parameters
(:func:`rotate_scale`, :func:`add_noise`, :func:`gaussian_blur`,
:func:`simulate_low_resolution`, :func:`adjust_gamma`); :class:`Augmenter` draws which
samples each step changes and with what parameters (:class:`AugmentPlan`) and applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Augmentation (paper; nnU-Net's defaults where the paper gives no probability).
ROTATE_P, ROTATE_DEG = 0.75, 30.0
SCALE_P, SCALE_RANGE = 0.75, (0.9, 1.1)
NOISE_P, NOISE_SD = 0.5, 0.05  # sd ~ U[0, 0.05] on the [0, 1] intensity scale
BLUR_P, BLUR_SIGMA = 0.2, (0.5, 1.0)
LOWRES_P, LOWRES_ZOOM = 0.25, (0.75, 1.0)  # p: nnU-Net's
GAMMA_P, GAMMA_RANGE = 0.3, (0.8, 1.2)  # p: nnU-Net's

BLUR_TRUNCATED = 4.0  # kernel tail in sigmas, MONAI's GaussianFilter default
GAMMA_EPS = 1e-7  # MONAI's AdjustContrast epsilon


def _to(x: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Copy a small CPU tensor to `device` without waiting for the work queued there."""
    return x.to(device=device, dtype=dtype, non_blocking=True)


def _column(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values [n] -> [n, 1, 1, 1] in `like`'s dtype and device."""
    return _to(x, like.device, like.dtype).view(-1, 1, 1, 1)


def rotate_scale(images: torch.Tensor, labels: torch.Tensor, angle: torch.Tensor,
                 factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by `angle` (radians) and zoom by `factor` about the centre, one resampling per sample.

    Images are resampled bilinearly, labels (classes) by nearest neighbour; zeros fill what
    comes from outside the slice.

    Args:
        images: float [n, C, H, W].
        labels: integer [n, 1, H, W].
        angle, factor: [n] (CPU); angle 0 and factor 1 leave a sample in place.

    Returns:
        The moved images and labels, dtypes kept.
    """
    # affine_grid maps output to input coordinates: rotate by the angle, divide by the
    # zoom factor. Slices are square, so normalised coordinates are isotropic.
    angle, factor = angle.to(torch.float64).cpu(), factor.to(torch.float64).cpu()
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.zeros(len(angle), 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta = _to(theta, images.device, images.dtype)
    grid = F.affine_grid(theta, [len(angle), 1, *images.shape[2:]], align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    classes = F.grid_sample(labels.to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return moved, classes.round().to(labels.dtype)


def add_noise(images: torch.Tensor, sd: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add zero-mean Gaussian noise of standard deviation `sd` [n] to each image (all channels).

    Args:
        images: float [n, C, H, W].
        sd: [n].
        generator: on the images' device; None uses torch's default one.
    """
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return images + noise * _column(sd, images)


def gaussian_kernels(sigma: torch.Tensor, truncated: float = BLUR_TRUNCATED) -> tuple[torch.Tensor, int]:
    """MONAI's ``gaussian_1d(approx="erf")`` for each sigma, zero-padded to a common length.

    Args:
        sigma: [n] (CPU), positive.
        truncated: kernel tail in sigmas.

    Returns:
        float32 [n, 2 * tail + 1] kernels (not normalised, as MONAI's) and the common tail.
    """
    sigma = sigma.to(torch.float32).cpu()
    tails = (sigma.double() * truncated).clamp_min(0.5).add(0.5).floor()  # int(max(s * t, 0.5) + 0.5)
    tail = int(tails.max()) if len(sigma) else 0
    x = torch.arange(-tail, tail + 1, dtype=torch.float32)
    t = (0.70710678 / sigma.abs())[:, None]
    kernels = (0.5 * ((t * (x + 0.5)).erf() - (t * (x - 0.5)).erf())).clamp(min=0)
    return kernels.masked_fill(x.abs() > tails[:, None], 0.0), tail


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, per image its own sigma along H and W, zero padding (MONAI's GaussianSmooth).

    All images and channels go through one grouped convolution per axis.

    Args:
        images: float [n, C, H, W].
        sigma: [n, 2] (CPU), sigma along H (MONAI's sigma_x) and W (sigma_y).
    """
    n, c, h, w = images.shape
    x = images.reshape(1, n * c, h, w)
    for axis in (0, 1):  # H first, as MONAI's separable_filtering
        kernels, tail = gaussian_kernels(sigma[:, axis])
        weight = _to(kernels, images.device, images.dtype).repeat_interleave(c, dim=0)
        shape, padding = ((n * c, 1, -1, 1), (tail, 0)) if axis == 0 else ((n * c, 1, 1, -1), (0, tail))
        x = F.conv2d(x, weight.view(shape), padding=padding, groups=n * c)
    return x.reshape(n, c, h, w)


def low_resolution_size(size: tuple[int, int], zoom: float) -> tuple[int, int]:
    """The downsampled size MONAI's RandSimulateLowResolution uses: each side rounded (half to even), >= 1."""
    return tuple(max(1, int(np.round(s * zoom))) for s in size)


def simulate_low_resolution(images: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """Downsample by `zoom` [n] (nearest), then upsample back (bicubic, align_corners=False).

    Images sharing a downsampled size are resampled together.

    Args:
        images: float [n, C, H, W].
        zoom: [n] (CPU), in (0, 1].
    """
    size = tuple(images.shape[2:])
    targets = [low_resolution_size(size, z) for z in zoom.tolist()]
    out = torch.empty_like(images)
    for target in sorted(set(targets)):
        index = _to(torch.tensor([i for i, t in enumerate(targets) if t == target]), images.device)
        small = F.interpolate(images[index], size=target, mode="nearest")
        out[index] = F.interpolate(small, size=size, mode="bicubic", align_corners=False)
    return out


def adjust_gamma(images: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """MONAI's AdjustContrast per image: rescale [min, max] of the whole image to [0, 1], power `gamma` [n], back.

    Args:
        images: float [n, C, H, W].
        gamma: [n].
    """
    low, high = torch.aminmax(images.flatten(1), dim=1)
    low, span = low.view(-1, 1, 1, 1), (high - low).view(-1, 1, 1, 1)
    return ((images - low) / (span + GAMMA_EPS)) ** _column(gamma, images) * span + low


def _uniform(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return bounds[0] + u * (bounds[1] - bounds[0])


@dataclass(frozen=True)
class AugmentPlan:
    """Per-sample draws for one batch: CPU tensors of length B (masks bool, values float64).

    A step changes a sample where its mask is True; values are drawn for every sample.

    Attributes:
        rotate, angle: rotation, radians in [-30°, 30°].
        scale, factor: zoom factor in [0.9, 1.1].
        noise, noise_sd: noise sd in [0, 0.05].
        blur, blur_sigma: [B, 2] sigma along H and W in [0.5, 1].
        lowres, zoom: low-resolution zoom in [0.75, 1].
        gamma, gamma_value: gamma in [0.8, 1.2].
    """

    rotate: torch.Tensor
    angle: torch.Tensor
    scale: torch.Tensor
    factor: torch.Tensor
    noise: torch.Tensor
    noise_sd: torch.Tensor
    blur: torch.Tensor
    blur_sigma: torch.Tensor
    lowres: torch.Tensor
    zoom: torch.Tensor
    gamma: torch.Tensor
    gamma_value: torch.Tensor


class Augmenter:
    """The paper's U-Net augmentation on a batch of tensors (any device), batched and seeded.

    Order: rotation (±30°, p=0.75) and scaling (0.9-1.1, p=0.75), drawn independently and
    applied as one bilinear resampling (labels nearest, zeros outside); Gaussian noise (p=0.5,
    sd U[0, 0.05]); Gaussian blur (p=0.2, sigma U[0.5, 1] per axis); simulated low resolution
    (p=0.25, zoom U[0.75, 1]); gamma (p=0.3, U[0.8, 1.2]). Intensities are on the [0, 1] scale,
    before the z-score. Labels move only with the spatial step.

    Why batched: applying MONAI's array transforms slice by slice costs a Python loop, several
    small kernels per slice and, for RandGaussianNoise, numpy noise drawn on the CPU and copied
    to the device: too slow to keep up with U-Net training on a GPU. Here each step is a few
    tensor operations over all the samples it changes, on the tensors' device.

    Each intensity step computes what MONAI's deterministic transform computes for the drawn
    parameters (the random streams differ from MONAI's):

    * noise: RandGaussianNoise(sample_std=True) - the image plus N(0, sd²) noise, drawn with torch;
    * blur: RandGaussianSmooth / GaussianSmooth((sigma_x, sigma_y)) - erf kernels truncated at
      4 sigma, zero padding, H then W;
    * low resolution: RandSimulateLowResolution(downsample_mode="nearest", upsample_mode="bicubic")
      - nearest to round(zoom * side), bicubic back, align_corners=False, no anti-aliasing;
    * gamma: RandAdjustContrast / AdjustContrast(gamma) - min/max over the whole image, epsilon 1e-7.

    The spatial step replaces RandAffine, which couples rotation and scaling under one probability.

    Parameters and probabilities are drawn from a CPU generator, so they do not depend on the
    device; noise comes from a generator on the images' device, created on first use there.

    Args:
        seed: seeds the parameter generator and the noise generators.
        enabled: False makes the augmenter the identity.
    """

    def __init__(self, seed: int, enabled: bool = True) -> None:
        self.enabled = enabled
        seeds = np.random.SeedSequence(seed).generate_state(2)
        self._generator = torch.Generator().manual_seed(int(seeds[0]))
        self._noise_seed = int(seeds[1])
        self._noise_generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment `images` [B, C, H, W] (float, [0, 1]) and `labels` [B, 1, H, W] (classes) alike."""
        if not self.enabled:
            return images, labels
        return self.apply(images, labels, self.draw(images.shape[0]))

    def draw(self, n: int) -> AugmentPlan:
        """Draw the next plan for `n` samples (the same sequence for the same seed)."""
        spatial = torch.rand(n, 4, generator=self._generator, dtype=torch.float64)
        u = torch.rand(n, 9, generator=self._generator, dtype=torch.float64)
        return AugmentPlan(
            rotate=spatial[:, 0] < ROTATE_P, angle=(spatial[:, 2] * 2 - 1) * math.radians(ROTATE_DEG),
            scale=spatial[:, 1] < SCALE_P, factor=_uniform(spatial[:, 3], SCALE_RANGE),
            noise=u[:, 0] < NOISE_P, noise_sd=u[:, 1] * NOISE_SD,
            blur=u[:, 2] < BLUR_P, blur_sigma=_uniform(u[:, 3:5], BLUR_SIGMA),
            lowres=u[:, 5] < LOWRES_P, zoom=_uniform(u[:, 6], LOWRES_ZOOM),
            gamma=u[:, 7] < GAMMA_P, gamma_value=_uniform(u[:, 8], GAMMA_RANGE),
        )

    def apply(self, images: torch.Tensor, labels: torch.Tensor,
              plan: AugmentPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply `plan` to `images` [B, C, H, W] and `labels` [B, 1, H, W]; the inputs are not modified."""
        if images.ndim != 4 or labels.shape != (images.shape[0], 1, *images.shape[2:]):
            raise ValueError(f"need images [B, C, H, W] and labels [B, 1, H, W], got {list(images.shape)} "
                             f"and {list(labels.shape)}")
        images, labels = images.clone(), labels.clone()
        device = images.device

        def selected(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
            where = torch.nonzero(mask).flatten()
            return (where, _to(where, device)) if len(where) else None

        if (sel := selected(plan.rotate | plan.scale)) is not None:
            where, index = sel
            angle = torch.where(plan.rotate[where], plan.angle[where], 0.0)
            factor = torch.where(plan.scale[where], plan.factor[where], 1.0)
            images[index], labels[index] = rotate_scale(images[index], labels[index], angle, factor)
        if (sel := selected(plan.noise)) is not None:
            images[sel[1]] = add_noise(images[sel[1]], plan.noise_sd[sel[0]], self._noise_generator(device))
        if (sel := selected(plan.blur)) is not None:
            images[sel[1]] = gaussian_blur(images[sel[1]], plan.blur_sigma[sel[0]])
        if (sel := selected(plan.lowres)) is not None:
            images[sel[1]] = simulate_low_resolution(images[sel[1]], plan.zoom[sel[0]])
        if (sel := selected(plan.gamma)) is not None:
            images[sel[1]] = adjust_gamma(images[sel[1]], plan.gamma_value[sel[0]])
        return images, labels

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        if device not in self._noise_generators:
            self._noise_generators[device] = torch.Generator(device=device).manual_seed(self._noise_seed)
        return self._noise_generators[device]
