"""In-domain features of a trained segmenter: its architecture's ``feature_layer``, pooled.

The layer of each architecture is named in the registry (:data:`synthmri.segmenters.ARCHITECTURES`);
the pooling itself is :func:`synthmri.metrics.features.pooled_features`. Slices are
preprocessed exactly as the segmenters see them in validation and evaluation
(:func:`synthmri.segmenters.data.prepare_batch` without augmentation, with the
architecture's input normalisation; the annotation channel is not an input).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthmri.metrics.features import InDomainFeatures, check_slices, pooled_features
from synthmri.segmenters import ARCHITECTURES
from synthmri.segmenters.data import prepare_batch
from synthmri.segmenters.inference import load_segmenter


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

    Args:
        model: A network built by the registry's ``get_architecture(arch).build``, already
            on `device` (:func:`load_feature_network` puts it there).
        arch: Its architecture name.
        slices: uint8 [n, 5, H, W] stored slices, H and W as the network accepts them.
        batch_size: Slices per forward pass.
        device: Where the inputs go.

    Returns:
        float64 [n, channels of the hooked layer].

    Raises:
        ValueError: Unknown `arch`, a model without its feature layer, slices not
            [n, 5, H, W] or empty, or `batch_size` below 1.
    """
    slices = check_slices(slices, batch_size)
    layer = feature_layer(model, arch)
    normalization = ARCHITECTURES[arch].normalization

    def prepare(batch: np.ndarray) -> torch.Tensor:
        return prepare_batch(batch, None, device, normalization)[0]

    return pooled_features(model, layer, prepare, slices, batch_size,
                           name=f"{arch!r} feature layer {ARCHITECTURES[arch].feature_layer!r}")


def load_feature_network(path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """A train-segmenter checkpoint as a feature network: (model in eval mode on `device`, arch).

    Raises:
        FileNotFoundError: No checkpoint at `path`.
        ValueError: Not a segmenter checkpoint, or an architecture without a feature layer.
    """
    model, checkpoint = load_segmenter(Path(path), device)
    arch = checkpoint["arch"]
    feature_layer(model, arch)  # fail early on an architecture without a feature layer
    return model, arch


def in_domain_features(path: Path | str, batch_size: int, device: torch.device | str = "cpu") -> InDomainFeatures:
    """The extractor :func:`synthmri.metrics.quality.quality_metrics` takes, from a segmenter checkpoint.

    Args:
        path: ``model.pt`` or the train-segmenter output holding it.
        batch_size: Slices per forward pass.
        device: Where the network runs.
    """
    model, arch = load_feature_network(path)
    model = model.to(device)

    def extract(slices: np.ndarray) -> np.ndarray:
        return segmenter_features(model, arch, slices, batch_size=batch_size, device=device)

    return InDomainFeatures(extract=extract, source=str(path), arch=arch)
