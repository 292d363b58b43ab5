"""The authors' Swin augmentation: each step against an independent computation, and the sampler."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from synthmri.segmenters.swin_augment import (
    SwinAugmenter,
    SwinAugmentPlan,
    adjust_brightness,
    elastic_deform,
    flip,
    rotate_scale,
)

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def batch(n: int = 4, h: int = 32, w: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 4, h, w, generator=g)
    labels = torch.randint(0, 4, (n, 1, h, w), generator=g)
    return images, labels


def quiet_plan(n: int, channels: int = 4) -> SwinAugmentPlan:
    """A plan that changes nothing (every mask False), to switch single steps on."""
    off = torch.zeros(n, dtype=torch.bool)
    return SwinAugmentPlan(
        flip=off, flip_axis=torch.full((n,), 2), brightness=off, gain=torch.ones(n, channels, dtype=F64),
        gamma=torch.ones(n, channels, dtype=F64), spatial=off, angle=torch.zeros(n, dtype=F64),
        scale=torch.ones(n, 2, dtype=F64), elastic=off, displacement=torch.zeros(n, 2, 3, 3, dtype=F64),
    )


def test_disabled_is_the_identity():
    images, labels = batch()
    out_images, out_labels = SwinAugmenter(0, enabled=False)(images, labels)
    assert out_images is images and out_labels is labels


def test_same_seed_same_output_and_classes_kept():
    images, labels = batch(8)
    first, second, other = SwinAugmenter(3), SwinAugmenter(3), SwinAugmenter(4)
    for _ in range(3):
        a, la = first(images, labels)
        b, lb = second(images, labels)
        c, _ = other(images, labels)
        assert torch.equal(a, b) and torch.equal(la, lb)
        assert not torch.equal(a, c)
        assert a.shape == images.shape and a.dtype == images.dtype
        assert la.shape == labels.shape and la.dtype == torch.int64
        assert set(la.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.equal(images, batch(8)[0])  # inputs untouched


def test_draws_have_the_published_probabilities_and_ranges():
    plan = SwinAugmenter(0).draw(20000, 4)
    for mask in (plan.flip, plan.brightness, plan.spatial, plan.elastic):
        assert mask.double().mean().item() == pytest.approx(0.5, abs=0.02)
    assert (plan.flip_axis == 2).double().mean().item() == pytest.approx(0.5, abs=0.02)
    assert set(plan.flip_axis.unique().tolist()) == {2, 3}
    degrees = plan.angle * 180 / math.pi
    assert degrees.min() >= 0 and degrees.max() <= 30 and degrees.max() > 29.9
    for values in (plan.scale, plan.gain, plan.gamma):
        assert values.min() >= 0.8 and values.max() <= 1.2 and values.max() - values.min() > 0.39
    assert plan.gain.shape == plan.gamma.shape == (20000, 4) and plan.scale.shape == (20000, 2)
    assert plan.displacement.shape == (20000, 2, 3, 3)
    assert plan.displacement.std().item() == pytest.approx(2.0, rel=0.02)


def test_flip_equals_torch_flip():
    images, labels = batch(4)
    axis = torch.tensor([2, 3, 3, 2])
    out, out_labels = flip(images, labels, axis)
    for i, dim in enumerate(axis.tolist()):
        assert torch.equal(out[i], images[i].flip(dim - 1)) and torch.equal(out_labels[i], labels[i].flip(dim - 1))
    # Through the augmenter: only the flip on, vertical for sample 0, horizontal for sample 1.
    plan = dataclasses.replace(quiet_plan(2), flip=torch.tensor([True, True]), flip_axis=torch.tensor([2, 3]))
    out, out_labels = SwinAugmenter.apply(images[:2], labels[:2], plan)
    assert torch.equal(out[0], torch.flip(images[0], dims=(1,)))
    assert torch.equal(out[1], torch.flip(images[1], dims=(2,)))
    assert torch.equal(out_labels[1], torch.flip(labels[1], dims=(2,)))


def test_brightness_is_gain_times_power_per_channel():
    images, labels = batch(2)
    images[0, 0, 0, 0] = -0.25  # the power law keeps the sign
    gain = torch.tensor([[0.8, 1.0, 1.1, 1.2], [1.2, 0.9, 1.0, 0.85]], dtype=F64)
    gamma = torch.tensor([[1.2, 0.8, 1.0, 0.9], [0.85, 1.15, 1.0, 1.2]], dtype=F64)
    x = images.double().numpy()
    expected = np.sign(x) * gain.numpy()[:, :, None, None] * np.abs(x) ** gamma.numpy()[:, :, None, None]
    np.testing.assert_allclose(adjust_brightness(images, gain, gamma).numpy(), expected, rtol=1e-5, atol=1e-6)
    plan = dataclasses.replace(quiet_plan(2), brightness=torch.tensor([False, True]), gain=gain, gamma=gamma)
    out, out_labels = SwinAugmenter.apply(images, labels, plan)
    assert torch.equal(out[0], images[0]) and torch.equal(out_labels, labels)  # labels never change here
    np.testing.assert_allclose(out[1].numpy(), expected[1], rtol=1e-5, atol=1e-6)


def test_rotation_by_90_degrees_equals_rot90():
    images, labels = batch(2, 16, 16)
    quarter = torch.full((2,), math.pi / 2, dtype=F64)  # counter-clockwise as displayed (rows down)
    out, out_labels = rotate_scale(images, labels, quarter, torch.ones(2, 2, dtype=F64))
    torch.testing.assert_close(out, torch.rot90(images, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    assert torch.equal(out_labels, torch.rot90(labels, 1, dims=(2, 3)))


def test_identity_rotation_and_integer_zoom_of_a_non_square_slice():
    images, labels = batch(2, 16, 24)
    out, out_labels = rotate_scale(images, labels, torch.zeros(2, dtype=F64), torch.ones(2, 2, dtype=F64))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    assert torch.equal(out_labels, labels)
    # Scale (2, 1): the output column j (centre at j + 0.5 - 12 pixels from the slice centre)
    # reads the input at twice that, index 2j - 11.5: midway between columns 2j - 12 and 2j - 11.
    zoom = torch.tensor([[2.0, 1.0]] * 2, dtype=F64)
    out, out_labels = rotate_scale(images, labels, torch.zeros(2, dtype=F64), zoom)
    torch.testing.assert_close(out[..., 6:18], (images[..., 0::2] + images[..., 1::2]) / 2, atol=1e-5, rtol=0)
    assert out[..., :6].abs().max() == 0 and out[..., 18:].abs().max() == 0  # read from outside the slice
    assert out_labels[..., :6].abs().max() == 0 and set(out_labels.unique().tolist()) <= {0, 1, 2, 3}


def test_elastic_with_zero_displacement_is_the_identity_and_a_uniform_one_a_shift():
    images, labels = batch(2, 16, 24)
    out, out_labels = elastic_deform(images, labels, torch.zeros(2, 2, 3, 3, dtype=F64))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    assert torch.equal(out_labels, labels)
    # Every control point displaced by +1 pixel in x and +2 in y: out[y, x] = in[y + 2, x + 1].
    shift = torch.zeros(2, 2, 3, 3, dtype=F64)
    shift[:, 0], shift[:, 1] = 1.0, 2.0
    out, out_labels = elastic_deform(images, labels, shift)
    torch.testing.assert_close(out[..., :-2, :-1], images[..., 2:, 1:], atol=1e-5, rtol=0)
    assert torch.equal(out_labels[..., :-2, :-1], labels[..., 2:, 1:])
    assert out[..., -2:, :].abs().max() < 1e-5 and out_labels[..., :, -1].abs().max() == 0  # zeros from outside


def test_elastic_displacement_is_smooth_and_interpolates_the_control_points():
    images = torch.zeros(1, 1, 33, 33)
    images[0, 0] = torch.arange(33.0)[None, :].expand(33, 33)  # intensity = column index
    labels = torch.zeros(1, 1, 33, 33, dtype=torch.int64)
    displacement = torch.zeros(1, 2, 3, 3, dtype=F64)
    displacement[0, 0, 1, 1] = 2.0  # the centre control point moves +2 in x
    out, _ = elastic_deform(images, labels, displacement)
    moved = out[0, 0] - images[0, 0]  # the x displacement read off a linear ramp
    # The control points sit at the corners, edge midpoints and centre (align_corners=True).
    assert moved[16, 16].item() == pytest.approx(2.0, abs=1e-4)
    assert moved[0, 0].item() == pytest.approx(0.0, abs=1e-4) and moved[16, 0].item() == pytest.approx(0.0, abs=1e-4)
    assert moved[1:-1, 1:-1].abs().max() <= 2.0 + 1e-4  # no overshoot beyond the control value here
    assert (moved[16, 1:17].diff() >= -1e-4).all()  # rises smoothly towards the centre


def test_runs_on_the_tensors_device_with_cpu_draws():
    images, labels = batch(4)
    out, out_labels = SwinAugmenter(1)(images.double(), labels)
    assert out.dtype == torch.float64 and out.device == images.device and out_labels.dtype == torch.int64
