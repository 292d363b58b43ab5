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

This module holds what does not depend on the segmenters: the pooling of any hooked layer
(:func:`pooled_features`) and the extractor the quality metrics take
(:class:`InDomainFeatures`). Which layer of which architecture, and how slices are
preprocessed (exactly as the segmenters see them in validation and evaluation), is
:mod:`synthmri.segmenters.features`; the ``evaluate-synthetic`` stage loads the network
there and hands the extractor to :mod:`synthmri.metrics.quality`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class InDomainFeatures:
    """A feature extractor for the in-domain metrics.

    Attributes:
        extract: uint8 [n, 5, H, W] stored slices -> float64 [n, d] features.
        source: Where the network came from (recorded in the quality section).
        arch: The network's architecture name (recorded in the quality section).
    """

    extract: Callable[[np.ndarray], np.ndarray]
    source: str
    arch: str


class _FeaturesCaptured(Exception):
    """Raised by the hook once the features are taken, to skip the rest of the network."""


def check_slices(slices: np.ndarray, batch_size: int) -> np.ndarray:
    """`slices` as an array, refused unless uint8-like [n, 5, H, W] with n >= 1 and `batch_size` >= 1.

    Raises:
        ValueError: slices not [n, 5, H, W] or empty, or `batch_size` below 1.
    """
    slices = np.asarray(slices)
    if slices.ndim != 4 or slices.shape[1] != 5:
        raise ValueError(f"slices must be [n, 5, H, W], got {list(slices.shape)}")
    if len(slices) == 0:
        raise ValueError("no slices to compute features of")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return slices


def pooled_features(model: nn.Module, layer: nn.Module, prepare: Callable[[np.ndarray], torch.Tensor],
                    slices: np.ndarray, batch_size: int = 64, name: str = "feature layer") -> np.ndarray:
    """Global-average-pooled activations of `layer` of `model`, batch by batch.

    A forward hook on `layer` takes its output, averages it over the spatial axes and stops
    the forward pass there (what follows is not run). The network runs in eval mode under
    ``torch.inference_mode``; the training flags of its modules are restored afterwards.

    Args:
        model: The network, on the device `prepare` puts the inputs on.
        layer: A submodule of `model`.
        prepare: Stored slices (uint8 [b, 5, H, W]) -> the network's input batch.
        slices: uint8 [n, 5, H, W] stored slices.
        batch_size: Slices per forward pass.
        name: What `layer` is, for the error when the forward pass does not reach it.

    Returns:
        float64 [n, channels of `layer`].

    Raises:
        ValueError: slices not [n, 5, H, W] or empty, or `batch_size` below 1.
        RuntimeError: the forward pass did not run `layer`.
    """
    slices = check_slices(slices, batch_size)
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
                try:
                    model(prepare(slices[start:start + batch_size]))
                except _FeaturesCaptured:
                    continue
                raise RuntimeError(f"the {name} was not run by the forward pass")
    finally:
        handle.remove()
        for module, training in modes:
            module.training = training
    return torch.cat(captured).numpy()
