"""Segmenter features: the hooked deepest encoder layer, pooled, for tiny U-Net and Swin networks."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from synthmri.config import to_dict
from synthmri.segmenters.features import load_feature_network, segmenter_features
from synthmri.segmenters import ARCHITECTURES, get_architecture
from synthmri.segmenters.data import prepare_batch
from synthmri.segmenters.train import save_checkpoint

UNET_ARGS = {"in_channels": 4, "out_channels": 4, "filters": [8, 16, 32], "deep_supervision_heads": 1,
             "negative_slope": 0.01}
# drop_path > 0: stochastic depth makes train mode random, so determinism shows eval mode.
SWIN_ARGS = {"in_channels": 4, "out_channels": 4, "feature_size": 12, "depths": [1, 1, 1, 1],
             "num_heads": [3, 6, 12, 24], "window_size": 4, "drop_path": 0.2}
SIDES = {"nnunet": 32, "swinunetr": 64}
WIDTHS = {"nnunet": 32, "swinunetr": 16 * 12}


pytestmark = pytest.mark.usefixtures("single_thread")


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_architecture(arch).build(**(UNET_ARGS if arch == "nnunet" else SWIN_ARGS))


def _slices(n: int, side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    slices = rng.integers(0, 256, size=(n, 5, side, side), dtype=np.uint8)
    slices[:, 4] = rng.choice(np.array([0, 51, 102, 204], dtype=np.uint8), size=(n, side, side))
    return slices


def _direct_features(model: torch.nn.Module, arch: str, slices: np.ndarray) -> np.ndarray:
    """The deepest encoder output, computed by calling the encoder's modules by hand."""
    images, _ = prepare_batch(slices, None, "cpu")
    with torch.inference_mode():
        if arch == "nnunet":
            x = model.input_block(images)
            for block in model.downsamples:
                x = block(x)
            block = model.bottleneck
        else:
            x, block = model.swinViT(images, model.normalize)[4], model.encoder10.layer
        # The block's second convolution, before its last instance norm.
        deepest = block.conv2(block.lrelu(block.norm1(block.conv1(x))))
    return deepest.mean(dim=(2, 3)).double().numpy()


@pytest.mark.parametrize("arch", ["nnunet", "swinunetr"])
def test_features_are_the_pooled_deepest_encoder_layer(arch):
    model = _model(arch).train()
    slices = _slices(5, SIDES[arch])
    layer = model.get_submodule(ARCHITECTURES[arch].feature_layer)
    seen_training = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen_training.append(model.training))
    try:
        features = segmenter_features(model, arch, slices, batch_size=2)
    finally:
        handle.remove()
    assert features.shape == (5, WIDTHS[arch]) and features.dtype == np.float64
    assert seen_training == [False] * 3  # eval mode in every batch (of 2, 2 and 1 slices)
    assert model.training and all(m.training for m in model.modules())  # the caller's mode is back
    assert np.isfinite(features).all()
    # Batching and repeated calls change nothing; different images give different features.
    again = segmenter_features(model.eval(), arch, slices, batch_size=64)
    assert not model.training
    np.testing.assert_allclose(again, features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_direct_features(model, arch, slices), features, rtol=1e-5, atol=1e-6)
    assert np.abs(features[0] - features[1]).max() > 1e-4
    other = segmenter_features(model, arch, _slices(5, SIDES[arch], seed=1))
    assert np.abs(other - features).max() > 1e-4


def test_unet_feature_width_follows_the_last_filter():
    model = get_architecture("nnunet").build(**{**UNET_ARGS, "filters": [8, 16, 24, 40]})
    assert segmenter_features(model, "nnunet", _slices(2, 32)).shape == (2, 40)


def test_segmenter_features_reject_bad_inputs():
    model = _model("nnunet")
    with pytest.raises(ValueError, match=r"no feature layer"):
        segmenter_features(model, "vit", _slices(2, 32))
    with pytest.raises(ValueError, match=r"no submodule"):
        segmenter_features(model, "swinunetr", _slices(2, 32))
    with pytest.raises(ValueError, match=r"\[n, 5, H, W\]"):
        segmenter_features(model, "nnunet", _slices(2, 32)[:, :4])
    with pytest.raises(ValueError, match=r"no slices"):
        segmenter_features(model, "nnunet", _slices(2, 32)[:0])
    with pytest.raises(ValueError, match=r"batch_size"):
        segmenter_features(model, "nnunet", _slices(2, 32), batch_size=0)


def test_a_trainer_checkpoint_loads_as_feature_network(tmp_path, tiny_config):
    model = _model("nnunet")
    save_checkpoint(tmp_path / "model" / "model.pt", {
        "arch": "nnunet", "model_args": UNET_ARGS, "state_dict": model.state_dict(), "config": to_dict(tiny_config),
        "train": "real", "synthetic": [], "seed": tiny_config.seed, "name": "unet-real-orig-s0",
        "best_val_dice": 0.1, "step": 0,
    })
    loaded, arch = load_feature_network(tmp_path / "model")
    assert arch == "nnunet" and not loaded.training
    slices = _slices(3, 32)
    np.testing.assert_allclose(segmenter_features(loaded, arch, slices), segmenter_features(model, "nnunet", slices),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(FileNotFoundError):
        load_feature_network(tmp_path / "missing")
