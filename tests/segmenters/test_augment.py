"""Batched augmentation: each step against MONAI's transform, probabilities, seeding, labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import AdjustContrast, GaussianSmooth, RandSimulateLowResolution

from synthmri.segmenters.augment import (
    BLUR_P,
    GAMMA_P,
    LOWRES_P,
    NOISE_P,
    ROTATE_P,
    SCALE_P,
    Augmenter,
    AugmentPlan,
    add_noise,
    adjust_gamma,
    gaussian_blur,
    low_resolution_size,
    rotate_scale,
    simulate_low_resolution,
)

STEPS = ("rotate", "scale", "noise", "blur", "lowres", "gamma")


@pytest.fixture(autouse=True)
def one_thread_plain_tensors():
    """One CPU thread (timings, determinism) and MONAI transforms returning plain tensors."""
    threads, track = torch.get_num_threads(), get_track_meta()
    torch.set_num_threads(1)
    set_track_meta(False)
    yield
    torch.set_num_threads(threads)
    set_track_meta(track)


def _images(n: int, c: int = 4, h: int = 20, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _only(plan: AugmentPlan, step: str) -> AugmentPlan:
    """`plan` with every step's mask but `step`'s cleared."""
    return dataclasses.replace(plan, **{s: torch.zeros_like(plan.rotate) for s in STEPS if s != step})


def _changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (before != after).flatten(1).any(dim=1).cpu()


# ---------------------------------------------------------------------------- steps vs MONAI


def test_blur_matches_monai_gaussian_smooth():
    # Sigmas with kernel tails 2, 3 and 4 (int(4 sigma + 0.5)); non-square images check the axes.
    sigma = torch.tensor([[0.5, 1.0], [0.6, 0.7], [1.0, 0.5], [0.9, 0.9], [0.74, 0.88]], dtype=torch.float64)
    images = _images(len(sigma))
    ours = gaussian_blur(images, sigma)
    for image, out, (sx, sy) in zip(images, ours, sigma.float().tolist()):
        expected = GaussianSmooth(sigma=(sx, sy))(image)
        torch.testing.assert_close(out, torch.as_tensor(expected), rtol=0, atol=1e-6)
    assert not torch.allclose(ours[0], gaussian_blur(images[:1], sigma[:1].flip(1))[0])  # sigma_x is along H


def test_gamma_matches_monai_adjust_contrast():
    gamma = torch.tensor([0.8, 0.95, 1.0, 1.13, 1.2], dtype=torch.float64)
    images = _images(len(gamma)) * 1.4 - 0.2  # not [0, 1]: min/max come from the image
    images[2, 1] = 5.0  # one bright channel sets the whole image's range
    ours = adjust_gamma(images, gamma)
    for image, out, g in zip(images, ours, gamma.tolist()):
        torch.testing.assert_close(out, torch.as_tensor(AdjustContrast(gamma=g)(image)), rtol=1e-6, atol=1e-6)
    assert torch.equal(adjust_gamma(torch.full((1, 2, 4, 4), 0.3), gamma[:1]), torch.full((1, 2, 4, 4), 0.3))


def test_low_resolution_matches_monai():
    zoom = torch.tensor([0.75, 0.8, 0.8, 0.9, 0.97, 0.999], dtype=torch.float64)  # two share a size
    images = _images(len(zoom))
    ours = simulate_low_resolution(images, zoom)
    for image, out, z in zip(images, ours, zoom.tolist()):
        transform = RandSimulateLowResolution(prob=1.0, zoom_range=(z, z), downsample_mode="nearest",
                                              upsample_mode="bicubic")
        torch.testing.assert_close(out, torch.as_tensor(transform(image)), rtol=0, atol=1e-6)
    assert low_resolution_size((20, 24), 0.75) == (15, 18)
    assert torch.equal(ours[-1], images[-1])  # round(0.999 * side) == side: nothing to simulate


def test_noise_has_the_drawn_sd_per_image():
    sd = torch.tensor([0.0, 0.01, 0.03, 0.05], dtype=torch.float64)
    images = torch.full((4, 4, 64, 64), 0.5)
    noisy = add_noise(images, sd, torch.Generator().manual_seed(0)) - 0.5
    assert torch.equal(noisy[0], torch.zeros_like(noisy[0]))
    for residual, s in zip(noisy[1:], sd[1:].tolist()):
        assert abs(residual.mean().item()) < 3 * s / 128  # 16384 values
        assert residual.std().item() == pytest.approx(s, rel=0.03)


# ---------------------------------------------------------------------------- the augmenter


def test_each_step_changes_about_its_share_and_only_the_drawn_samples():
    n, augmenter = 2000, Augmenter(seed=3)
    plan = augmenter.draw(n)
    images, labels = _images(n, c=2, h=8, w=8), torch.randint(0, 4, (n, 1, 8, 8))
    for step, p in zip(STEPS, (ROTATE_P, SCALE_P, NOISE_P, BLUR_P, LOWRES_P, GAMMA_P)):
        mask = getattr(plan, step)
        assert mask.float().mean().item() == pytest.approx(p, abs=0.045), step  # > 4 sd at n=2000
        out, _ = augmenter.apply(images, labels, _only(plan, step))
        changed = _changed(images, out)
        if step == "lowres":  # a zoom that rounds back to 8 changes nothing (as in MONAI)
            mask = mask & torch.tensor([low_resolution_size((8, 8), z) != (8, 8) for z in plan.zoom.tolist()])
        assert torch.equal(changed, mask), step


def test_augmentation_is_seeded_and_keeps_labels_in_range():
    images, labels = _images(16, h=32, w=32), torch.randint(0, 4, (16, 1, 32, 32))
    a, b, c = Augmenter(seed=7), Augmenter(seed=7), Augmenter(seed=8)
    first = [a(images, labels) for _ in range(2)]
    again = [b(images, labels) for _ in range(2)]
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = c(images, labels)
    assert not torch.equal(first[0][0], other[0])
    assert not torch.equal(first[0][0], first[1][0])  # a fresh draw per call
    for x, y in first + [other]:
        assert x.shape == images.shape and x.dtype == images.dtype and x.device == images.device
        assert y.shape == labels.shape and y.dtype == torch.int64
        assert set(torch.unique(y).tolist()) <= {0, 1, 2, 3} and torch.isfinite(x).all()
    assert torch.equal(images, _images(16, h=32, w=32))  # inputs untouched


def test_disabled_augmentation_is_identity():
    images, labels = _images(4), torch.randint(0, 4, (4, 1, 20, 24))
    x, y = Augmenter(seed=0, enabled=False)(images, labels)
    assert x is images and y is labels


def test_float64_images_stay_float64():
    images, labels = _images(64, h=16, w=16).double(), torch.randint(0, 4, (64, 1, 16, 16))
    x, y = Augmenter(seed=5)(images, labels)
    assert x.dtype == torch.float64 and y.dtype == torch.int64 and not torch.equal(x, images)


def test_spatial_augmentation_moves_labels_with_the_image():
    # Channel 0 paints the tumour classes, so after rotation/scaling it must still cover them.
    classes = torch.zeros(32, 1, 32, 32, dtype=torch.int64)
    classes[:, :, 8:20, 10:26] = 2
    classes[:, :, 11:15, 14:20] = 3
    images = torch.zeros(32, 4, 32, 32)
    images[:, 0] = (classes[:, 0] > 0).float()
    augmenter = Augmenter(seed=1)
    plan = augmenter.draw(32)
    plan = dataclasses.replace(_only(plan, "rotate"), scale=plan.scale)
    moved_images, moved_classes = augmenter.apply(images, classes, plan)
    changed = _changed(classes, moved_classes)
    assert changed.float().mean() > 0.5  # most slices rotated and/or scaled (p = 0.75 each)
    assert not (changed & ~(plan.rotate | plan.scale)).any()
    agreement = ((moved_images[:, 0] > 0.5) == (moved_classes[:, 0] > 0)).float().mean()
    assert agreement > 0.97
    assert set(torch.unique(moved_classes).tolist()) <= {0, 2, 3}


def test_rotate_scale_turns_and_zooms_about_the_centre():
    labels = torch.zeros(2, 1, 33, 33, dtype=torch.int64)
    labels[:, :, 16, 20:30] = 1  # a bar right of the centre
    images = labels.float().expand(-1, 3, -1, -1).contiguous()
    angle = torch.tensor([np.pi / 2, 0.0], dtype=torch.float64)
    factor = torch.tensor([1.0, 0.5], dtype=torch.float64)
    moved, classes = rotate_scale(images, labels, angle, factor)
    turned = classes[0, 0].nonzero()
    assert (turned[:, 1] == 16).all() and len(turned) == 10  # now a vertical bar
    shrunk = classes[1, 0].nonzero()
    assert (shrunk[:, 0] == 16).all() and 17 < shrunk[:, 1].min() and shrunk[:, 1].max() < 24
    assert torch.allclose(moved[:, 0], classes[:, 0].float(), atol=0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_is_seeded():
    images, labels = _images(32, h=64, w=64), torch.randint(0, 4, (32, 1, 64, 64))
    plan = dataclasses.replace(Augmenter(seed=2).draw(32), noise=torch.zeros(32, dtype=torch.bool))
    cpu = Augmenter(seed=2).apply(images, labels, plan)
    gpu = Augmenter(seed=2).apply(images.cuda(), labels.cuda(), plan)
    assert gpu[0].device.type == "cuda" and gpu[1].dtype == torch.int64
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-4, atol=1e-4)
    assert (gpu[1].cpu() != cpu[1]).float().mean() < 1e-3  # nearest labels may flip on ties
    a, b = Augmenter(seed=4)(images.cuda(), labels.cuda()), Augmenter(seed=4)(images.cuda(), labels.cuda())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
