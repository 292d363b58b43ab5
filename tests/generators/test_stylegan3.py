"""The StyleGAN3-T networks: translation equivariance, shapes, filters, double backward, config errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from synthmri.config import ConfigError, StyleGAN3Config, load_config
from synthmri.generators.stylegan3 import (
    FAMILY,
    _fir_axis,
    _lowpass,
    build_discriminator,
    build_generator,
    model_args_from,
)

from . import one_thread

#: Tiny widths: every part of the networks (6 synthesis layers, 3 sampling rates at 64x64).
TINY = StyleGAN3Config(z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=32, num_layers=6)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


def generator(size: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_generator(model_args_from(TINY, size, 5)).eval()


def relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt() / b.square().mean().sqrt())


def test_subpixel_input_translation_translates_the_output():
    """Equivariance (acceptance criterion): at 64x64 the input grid samples at 16 per image,
    so a shift of (2, -1) output pixels is (0.5, -0.25) input pixels."""
    size, border, (dx, dy) = 64, 16, (2, -1)
    g = generator(size)
    synthesis = g.synthesis
    assert synthesis.input.rate == 16 and synthesis.input.size == 16 + 2 * TINY.margin_size
    with torch.no_grad():
        ws = g.mapping(torch.randn(2, TINY.z_dim, generator=torch.Generator().manual_seed(1)))
        reference = synthesis(ws)
        synthesis.input.transform[0, 2] = dx / size  # image units: one output pixel is 1 / size
        synthesis.input.transform[1, 2] = dy / size
        shifted = synthesis(ws)
        synthesis.input.transform.copy_(torch.eye(3))
        assert torch.equal(synthesis(ws), reference)

    def error(sx: int, sy: int) -> float:
        """Interior of `shifted` against the reference moved by (sx, sy): out'(p) = out(p + s)."""
        inner = slice(border, size - border)
        ref = reference[..., border + sy:size - border + sy, border + sx:size - border + sx]
        return relative_rms(shifted[..., inner, inner], ref)

    right = error(dx, dy)
    wrong = min(error(dx + 1, dy), error(dx, dy - 1), error(0, 0), error(-dx, -dy))
    assert right < 5e-3, right  # about 40 dB PSNR relative to the image's RMS, or better
    assert wrong > 10 * right and wrong > 0.02, (right, wrong)


@pytest.mark.parametrize("size", [16, 32])
def test_shapes_and_style_count(size):
    torch.manual_seed(0)
    args = model_args_from(TINY, size, 5)
    g, d = build_generator(args), build_discriminator(args)
    assert g.z_dim == TINY.z_dim and g.mapping.num_ws == TINY.num_layers + 2
    assert torch.equal(g.synthesis.input.transform, torch.eye(3))
    images = g(torch.randn(3, TINY.z_dim))
    assert images.shape == (3, 5, size, size) and torch.isfinite(images).all()
    logits = d(images)
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_filters_have_unit_dc_gain_and_attenuate_above_the_stopband():
    layers = generator(64).synthesis.layers
    checked = 0
    for layer in layers:
        for taps, (cutoff, stopband, rate) in ((layer.up_filter, layer.up_band), (layer.down_filter, layer.down_band)):
            if taps is None:
                continue
            response = np.abs(np.fft.rfft(taps.numpy().astype(np.float64), n=8192))
            freqs = np.fft.rfftfreq(8192, d=1.0 / rate)
            assert response[0] == pytest.approx(1.0, abs=1e-6)
            assert response[freqs <= cutoff / 2].min() > 0.8  # the low band passes (short filters sag)
            assert response[freqs >= stopband].max() < 0.06  # about -25 dB above the stopband
            checked += 1
    assert checked >= 2 * (TINY.num_layers - 1)
    assert _lowpass(1, 4.0, 2.0, 32.0) is None


@pytest.mark.parametrize("dim, up, down, pad", [(3, 2, 1, (9, 8)), (2, 4, 1, (-6, -9)), (3, 1, 2, (0, 0)),
                                                (2, 1, 2, (3, -1)), (3, 1, 1, (-2, -2))])
def test_resampling_matches_zero_insertion_then_convolution(dim, up, down, pad):
    """The polyphase resampler against the textbook definition, on random (asymmetric) taps."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 7, 9))
    taps = rng.normal(size=5 if up * down > 1 else 1)
    zeros = np.zeros(x.shape[:dim] + (x.shape[dim] * up,) + x.shape[dim + 1:])
    np.moveaxis(zeros, dim, -1)[..., ::up] = np.moveaxis(x, dim, -1)
    padded = np.moveaxis(zeros, dim, -1)
    padded = np.pad(padded, [(0, 0)] * 3 + [(max(pad[0], 0), max(pad[1], 0))])
    padded = padded[..., max(-pad[0], 0):padded.shape[-1] - max(-pad[1], 0)]
    full = np.apply_along_axis(lambda row: np.convolve(row, taps * 1.5, mode="valid"), -1, padded)
    expected = np.moveaxis(full[..., ::down], -1, dim)
    got = _fir_axis(torch.from_numpy(x).float(), None if taps.size == 1 else torch.from_numpy(taps).float(),
                    dim, up=up, down=down, pad=pad, gain=1.5)
    if taps.size == 1:
        expected = expected / taps[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_discriminator_supports_double_backward():
    torch.manual_seed(0)
    d = build_discriminator(model_args_from(TINY, 16, 5))
    x = torch.randn(4, 5, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    grad.square().sum().backward()
    # Every parameter but the final bias (which cannot change a gradient) gets a second-order gradient.
    missing = [name for name, p in d.named_parameters() if p.grad is None]
    assert missing == ["out.bias"]
    assert all(torch.isfinite(p.grad).all() for p in d.parameters() if p.grad is not None)


def test_same_ws_same_image_and_gradients_reach_ws():
    g = generator(32)
    ws = g.mapping(torch.randn(2, TINY.z_dim)).detach().requires_grad_(True)
    first = g.synthesis(ws, rng=torch.Generator().manual_seed(0))
    assert torch.equal(first, g.synthesis(ws, rng=torch.Generator().manual_seed(1)))
    first.square().sum().backward()
    assert torch.isfinite(ws.grad).all() and ws.grad.abs().sum() > 0


def test_truncation_zero_gives_one_image_for_all_latents():
    g = generator(16)
    with torch.no_grad():
        images = g(torch.randn(3, TINY.z_dim), truncation_psi=0.0)
        varied = g(torch.randn(3, TINY.z_dim))
    assert torch.allclose(images, images[:1].expand_as(images), atol=1e-6)
    assert not torch.allclose(varied, varied[:1].expand_as(varied), atol=1e-3)


def test_train_mode_tracks_input_magnitudes_and_eval_does_not():
    g = generator(16)
    layer = g.synthesis.layers[0]
    ws = g.mapping(torch.randn(2, TINY.z_dim))
    with torch.no_grad():
        g.synthesis(ws)
        assert float(layer.magnitude_ema) == 1.0
        g.train()
        g.synthesis(ws)
    assert float(layer.magnitude_ema) != 1.0
    g.synthesis(ws).square().mean().backward()  # the in-place update does not break autograd
    assert torch.isfinite(layer.weight.grad).all()


def test_model_args_are_json_and_the_family_is_described():
    args = model_args_from(TINY, 32, 5)
    assert set(args) == {"image_size", "channels", "z_dim", "w_dim", "mapping_layers", "mapping_lr_mul",
                         "channel_base", "channel_max", "num_layers", "margin_size", "first_cutoff",
                         "first_stopband", "last_stopband_rel", "filter_size", "lrelu_upsampling"}
    assert all(isinstance(v, (int, float)) for v in args.values())
    objective = FAMILY.objective(TINY)
    assert FAMILY.name == FAMILY.section == "stylegan3" and FAMILY.truncation and not FAMILY.progressive
    assert objective.loss == "non-saturating" and objective.r1_gamma == TINY.r1_gamma


@pytest.mark.parametrize("override, size, key", [
    ({}, 24, "data.size"),
    ({}, 8, "data.size"),
    ({"num_layers": 2}, 32, "generator.stylegan3.num_layers"),
    ({"first_cutoff": 16.0}, 32, "generator.stylegan3.first_cutoff"),
    ({"first_stopband": 1.0}, 32, "generator.stylegan3.first_stopband"),
    ({"last_stopband_rel": 0.9}, 32, "generator.stylegan3.last_stopband_rel"),
    ({"margin_size": -1}, 32, "generator.stylegan3.margin_size"),
    ({"filter_size": 0}, 32, "generator.stylegan3.filter_size"),
    ({"channel_max": 0}, 32, "generator.stylegan3.channel_max"),
])
def test_invalid_settings_name_the_key(override, size, key):
    with pytest.raises(ConfigError, match=key):
        if key == "data.size" or "first_cutoff" in override:  # depends on the image size: checked by the network
            model_args_from(dataclasses.replace(TINY, **override), size, 5)
        else:  # the section alone: checked as the config loads
            load_config(None, {f"generator.stylegan3.{name}": value for name, value in override.items()})


def test_stylegan3_t_keeps_the_official_parameter_count():
    """--cfg=stylegan3-t at 256x256 with 5 channels: G 28,472,391; D is StyleGAN2's, 28,864,385."""
    from synthmri.config import load_config

    from . import REPO

    section = load_config(REPO / "configs" / "paper.yaml").generator.stylegan3
    assert (section.mapping_layers, section.lr, section.discriminator_lr) == (2, 2.5e-3, 2e-3)
    assert section.channel_base == 32768
    with torch.device("meta"):
        args = model_args_from(section, 256, 5)
        g, d = build_generator(args), build_discriminator(args)
    assert sum(p.numel() for p in g.parameters()) == 28_472_391
    assert sum(p.numel() for p in d.parameters()) == 28_864_385
    assert FAMILY.objective(section).generator_first  # Gmain, Dmain, Dreg, as the official loop
