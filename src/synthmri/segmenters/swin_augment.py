"""The authors' Swin transformer augmentation, batched in torch on the tensors' device.

The paper ('Swin transformer') lists five techniques "inspired by Cirillo et al.": rotation
by 0-30 degrees, scaling of each axis by +-20%, a horizontal or vertical flip with a 50%
chance, a power-law gamma intensity change with parameters in [0.8, 1.2], and an elastic
deformation (normally distributed displacements of sd 2 voxels on a deformation grid,
smoothed with a third-order spline). The authors' MMSegmentation config applies no
augmentation in its pipeline (its data config is ``noaug``; the Readme installs
``elasticdeform``), so the probabilities and the remaining details come from Cirillo et al.'s
published code (github mdciri/3D-augmentation-techniques, ``augmentation.py``), made 2D:

* each technique is applied with probability 0.5, independently (``random_decisions``),
  in the order flip, brightness, rotation + scaling, elastic (``combine_aug``);
* flip: one axis chosen uniformly (here H or W);
* brightness: per channel ``sign(x) * gain * |x| ** gamma``, gain and gamma ~ U[0.8, 1.2];
* rotation + scaling: one resampling, output-to-input map ``R(angle) @ diag(s_x, s_y)`` with
  the scale factors ~ U[0.8, 1.2] per axis; the angle ~ U[0, 30] degrees as the paper says
  (Cirillo's code draws up to 90), about the slice centre (Cirillo's code rotates about the
  array origin); images bilinear, labels nearest, zeros outside;
* elastic: ``elasticdeform.deform_random_grid(sigma=2)`` with its default 3x3 control grid:
  displacements ~ N(0, 2^2) pixels per control point and axis, interpolated to every pixel;
  here by bicubic interpolation (``align_corners=True``, control points at the corners and
  the centre) in place of elasticdeform's cubic B-spline; images bilinear (Cirillo's
  order 1), labels nearest (order 0), zeros outside.

Intensities are on the [0, 1] scale (the brightness gain may take them to 1.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

AUGMENT_P = 0.5  # each technique (Cirillo et al.'s random_decisions)
ROTATE_DEG = (0.0, 30.0)  # paper
SCALE_RANGE = (0.8, 1.2)  # per axis, paper (+-20%) and Cirillo's code
GAIN_RANGE = GAMMA_RANGE = (0.8, 1.2)  # per channel, paper and Cirillo's brightness()
ELASTIC_SIGMA = 2.0  # pixels, paper and Cirillo's elastic()
ELASTIC_POINTS = 3  # control points per axis, elasticdeform's default


def _uniform(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return bounds[0] + u * (bounds[1] - bounds[0])


def _resample(images: torch.Tensor, labels: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample images bilinearly and labels by nearest neighbour at `grid` (zeros outside)."""
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    classes = F.grid_sample(labels.to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return moved, classes.round().to(labels.dtype)


def flip(images: torch.Tensor, labels: torch.Tensor, axis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse each sample along its `axis` [n] (CPU; 2: rows, a vertical flip; 3: columns, horizontal)."""
    images, labels = images.clone(), labels.clone()
    for dim in (2, 3):
        index = torch.nonzero(axis == dim).flatten().to(images.device)
        if len(index):
            images[index], labels[index] = images[index].flip(dim), labels[index].flip(dim)
    return images, labels


def adjust_brightness(images: torch.Tensor, gain: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Cirillo et al.'s power law per channel: ``sign(x) * gain * |x| ** gamma``; gain, gamma [n, C] (CPU)."""
    gain = gain.to(images.device, images.dtype)[:, :, None, None]
    gamma = gamma.to(images.device, images.dtype)[:, :, None, None]
    return images.sign() * gain * images.abs() ** gamma


def rotate_scale(images: torch.Tensor, labels: torch.Tensor, angle: torch.Tensor,
                 scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One resampling per sample with the output-to-input map ``R(angle) @ diag(scale)`` about the centre.

    In pixel units about the slice centre, an output pixel at ``p`` (x along W, y along H)
    reads the input at ``R(angle) @ diag(s_x, s_y) @ p``: ``angle`` [n] in radians, ``scale``
    [n, 2] as (s_x, s_y) (CPU). Angle 0 and scales 1 leave a sample in place; a factor above
    1 shrinks the content along that axis.
    """
    n, _, h, w = images.shape
    angle, scale = angle.to(torch.float64).cpu(), scale.to(torch.float64).cpu()
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [n, 2, 2]
    half = torch.tensor([w / 2, h / 2], dtype=torch.float64)  # normalised -> pixel units, per axis
    matrix = rot @ torch.diag_embed(scale) * half[None, None, :] / half[None, :, None]
    theta = torch.cat([matrix, torch.zeros(n, 2, 1, dtype=torch.float64)], dim=2).to(images.device, images.dtype)
    return _resample(images, labels, F.affine_grid(theta, [n, 1, h, w], align_corners=False))


def elastic_deform(images: torch.Tensor, labels: torch.Tensor,
                   displacement: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deform by a coarse displacement grid `displacement` [n, 2, P, P] (pixels, (x, y); CPU).

    The grid is interpolated bicubically to every pixel (control points spanning the slice
    from corner to corner); the output pixel at ``p`` reads the input at ``p + d(p)``.
    """
    n, _, h, w = images.shape
    dense = F.interpolate(displacement.to(images.device, images.dtype), size=(h, w), mode="bicubic",
                          align_corners=True)  # [n, 2, H, W]
    to_normalised = torch.tensor([2.0 / w, 2.0 / h], device=images.device, dtype=images.dtype)
    identity = torch.eye(2, 3, device=images.device, dtype=images.dtype).expand(n, 2, 3)
    grid = F.affine_grid(identity, [n, 1, h, w], align_corners=False) + dense.permute(0, 2, 3, 1) * to_normalised
    return _resample(images, labels, grid)


@dataclass(frozen=True)
class SwinAugmentPlan:
    """Per-sample draws for one batch (CPU): masks bool [n], values float64.

    Attributes:
        flip, flip_axis: int64 [n], 2 (vertical) or 3 (horizontal), each with chance 1/2.
        brightness, gain, gamma: [n, C], U[0.8, 1.2] each.
        spatial, angle, scale: angle [n] radians in [0, 30°]; scale [n, 2] (s_x, s_y) in [0.8, 1.2].
        elastic, displacement: [n, 2, 3, 3] pixels, N(0, 2²).
    """

    flip: torch.Tensor
    flip_axis: torch.Tensor
    brightness: torch.Tensor
    gain: torch.Tensor
    gamma: torch.Tensor
    spatial: torch.Tensor
    angle: torch.Tensor
    scale: torch.Tensor
    elastic: torch.Tensor
    displacement: torch.Tensor


class SwinAugmenter:
    """The authors' Swin augmentation on a batch of tensors (any device), batched and seeded.

    Each sample independently, each with probability 0.5, in this order: a flip along H or
    W; brightness ``gain * x ** gamma`` per channel; rotation (U[0, 30°]) with per-axis
    scaling (U[0.8, 1.2]) in one resampling; an elastic deformation (3x3 control grid,
    N(0, 2²) pixels, bicubic). See the module docstring for where each setting comes from.
    All parameters are drawn from a CPU generator, so they do not depend on the device.

    Args:
        seed: seeds the parameter generator.
        enabled: False makes the augmenter the identity.
    """

    def __init__(self, seed: int, enabled: bool = True) -> None:
        self.enabled = enabled
        state = np.random.SeedSequence(seed).generate_state(1)
        self._generator = torch.Generator().manual_seed(int(state[0]))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment `images` [B, C, H, W] (float, [0, 1]) and `labels` [B, 1, H, W] (classes) alike."""
        if not self.enabled:
            return images, labels
        return self.apply(images, labels, self.draw(images.shape[0], images.shape[1]))

    def draw(self, n: int, channels: int) -> SwinAugmentPlan:
        """Draw the next plan for `n` samples of `channels` channels (the same sequence for the same seed)."""
        g, f64 = self._generator, torch.float64
        u = torch.rand(n, 6, generator=g, dtype=f64)
        return SwinAugmentPlan(
            flip=u[:, 0] < AUGMENT_P, flip_axis=torch.where(u[:, 4] < 0.5, 2, 3),
            brightness=u[:, 1] < AUGMENT_P,
            gain=_uniform(torch.rand(n, channels, generator=g, dtype=f64), GAIN_RANGE),
            gamma=_uniform(torch.rand(n, channels, generator=g, dtype=f64), GAMMA_RANGE),
            spatial=u[:, 2] < AUGMENT_P, angle=_uniform(u[:, 5], ROTATE_DEG) * (math.pi / 180),
            scale=_uniform(torch.rand(n, 2, generator=g, dtype=f64), SCALE_RANGE),
            elastic=u[:, 3] < AUGMENT_P,
            displacement=torch.randn(n, 2, ELASTIC_POINTS, ELASTIC_POINTS, generator=g, dtype=f64) * ELASTIC_SIGMA,
        )

    @staticmethod
    def apply(images: torch.Tensor, labels: torch.Tensor,
              plan: SwinAugmentPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply `plan` to `images` [B, C, H, W] and `labels` [B, 1, H, W]; the inputs are not modified."""
        if images.ndim != 4 or labels.shape != (images.shape[0], 1, *images.shape[2:]):
            raise ValueError(f"need images [B, C, H, W] and labels [B, 1, H, W], got {list(images.shape)} "
                             f"and {list(labels.shape)}")
        images, labels = images.clone(), labels.clone()
        steps = (
            (plan.flip, lambda i, x, y: flip(x, y, plan.flip_axis[i])),
            (plan.brightness, lambda i, x, y: (adjust_brightness(x, plan.gain[i], plan.gamma[i]), y)),
            (plan.spatial, lambda i, x, y: rotate_scale(x, y, plan.angle[i], plan.scale[i])),
            (plan.elastic, lambda i, x, y: elastic_deform(x, y, plan.displacement[i])),
        )
        for mask, step in steps:
            where = torch.nonzero(mask).flatten()
            if len(where):
                index = where.to(images.device)
                images[index], labels[index] = step(where, images[index], labels[index])
        return images, labels
