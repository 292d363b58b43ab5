"""In-domain image features: a trained segmentation network's deepest encoder activations.

The FID and KID of the literature compare InceptionV3 features, learnt on ImageNet
photographs: a network that has never seen an MR contrast, a skull or a tumour, so much of
what matters in synthetic brain MR (the relation between the four sequences, lesion
appearance, the tumour's subregions) falls outside what its features resolve. A
segmentation network trained on the real data has learnt exactly those: it sees the four
co-registered sequences at once, and its encoder must represent tumour, oedema and
enhancing core to segment them. Its deepest encoder layer, the most abstract and spatially
coarsest representation, averaged over space, gives one vector per slice, and the
distribution distances of :mod:`synthmri.metrics.distribution` (Fréchet distance, KID,
precision and recall) apply to those vectors unchanged. No ImageNet weights are needed.

The hooked layer is the architecture's ``feature_layer`` in the registry
(:data:`synthmri.segmenters.ARCHITECTURES`), e.g.:

* ``nnunet`` (MONAI DynUNet): ``bottleneck.conv2``, the last convolution of the lowest
  resolution level (input side / 2 ** (levels - 1)), ``filters[-1]`` channels.
* ``swinunetr`` (MONAI SwinUNETR): ``encoder10.layer.conv2``, the last convolution of the
  residual block on the Swin transformer's last output (input side / 32), ``16 *
  feature_size`` channels: the deepest encoder output, where the decoder starts.
* ``unet`` and ``swin`` (the paper's networks): their bottlenecks, named in their modules.

The U-Nets' layers are taken before the block's final instance norm: after it every channel has the same
spatial mean in every image (the norm's learned shift), so averaging over space would erase
what distinguishes one slice from another.

Slices are preprocessed exactly as the segmenters see them in validation and evaluation
(:func:`synthmri.segmenters.data.prepare_batch` without augmentation, with the
architecture's input normalisation; the annotation channel is not an input).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthmri.segmenters import ARCHITECTURES
from synthmri.segmenters.data import prepare_batch
from synthmri.segmenters.evaluate import load_segmenter



class _FeaturesCaptured(Exception):
    """Raised by the hook once the features are taken, to skip the decoder."""


def feature_layer(model: nn.Module, arch: str) -> nn.Module:
    """The submodule of `model` whose pooled output are the features of architecture `arch`.

    Raises:
        ValueError: `arch` has no feature layer, or `model` lacks the submodule.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"no feature layer for architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    name = ARCHITECTURES[arch].feature_layer
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no submodule {name!r}: not a {arch!r} network") from None


def segmenter_features(model: nn.Module, arch: str, slices: np.ndarray, batch_size: int = 64,
                       device: torch.device | str = "cpu") -> np.ndarray:
    """Global-average-pooled activations of the deepest encoder layer of a segmentation network.

    A forward hook on the architecture's ``feature_layer`` takes its output, averages it
    over the spatial axes and stops the forward pass there (the decoder is not run). The
    network runs in eval mode under ``torch.inference_mode``; the training flags of its
    modules are restored afterwards.

    Args:
        model: a network built by the registry's ``get_architecture(arch).build``, already
            on `device` (:func:`load_feature_network` puts it there).
        arch: its architecture name, ``unet`` or ``swin``.
        slices: uint8 [n, 5, H, W] stored slices (t1, t1ce, t2, flair, annotation); H and W
            as the network accepts them (a U-Net: divisible by 2 ** (levels - 1); Swin:
            multiples of 32, at least 64).
        batch_size: slices per forward pass.
        device: where the inputs go.

    Returns:
        float64 [n, channels of the hooked layer].

    Raises:
        ValueError: unknown `arch`, a model without its feature layer, slices not
            [n, 5, H, W] or empty, or `batch_size` below 1.
    """
    slices = np.asarray(slices)
    if slices.ndim != 4 or slices.shape[1] != 5:
        raise ValueError(f"slices must be [n, 5, H, W], got {list(slices.shape)}")
    if len(slices) == 0:
        raise ValueError("no slices to compute features of")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    layer = feature_layer(model, arch)
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        captured.append(output.flatten(2).mean(dim=2).double().cpu())
        raise _FeaturesCaptured

    modes = [(module, module.training) for module in model.modules()]
    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(slices), batch_size):
                images, _ = prepare_batch(slices[start:start + batch_size], None, device,
                                          ARCHITECTURES[arch].normalization)
                try:
                    model(images)
                except _FeaturesCaptured:
                    continue
                raise RuntimeError(f"the {arch!r} feature layer {ARCHITECTURES[arch].feature_layer!r} was not run by the "
                                   "forward pass")
    finally:
        handle.remove()
        for module, training in modes:
            module.training = training
    return torch.cat(captured).numpy()


def load_feature_network(path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """A train-segmenter checkpoint as a feature network: (model in eval mode on `device`, arch).

    Args:
        path: ``model.pt`` or the directory holding it.
        device: where the model goes.

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: not a segmenter checkpoint, or an architecture without a feature layer.
    """
    model, checkpoint = load_segmenter(Path(path), device)
    arch = checkpoint["arch"]
    feature_layer(model, arch)  # fail early on an architecture without a feature layer
    return model, arch
