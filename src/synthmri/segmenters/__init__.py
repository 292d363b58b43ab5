"""Segmenters: networks, training loop and 3D evaluation.

Every architecture is one module and one entry of :data:`ARCHITECTURES` (a
:class:`~synthmri.registry.Registry`), which binds its name (``segmenter.arch``, ``--arch``)
to what the training loop and the evaluation need from it: its config section, the network
builder, the loss and optimiser of its training recipe, its augmentation and its input
normalisation. Checkpoints store the name and the builder's keyword arguments, so a model is
rebuilt with ``get_architecture(name).build(**args)``. A new architecture is one module and
one line, ``ARCHITECTURES.register("<name>", Architecture(...), section=<Name>Config)``: the
config then accepts ``segmenter.arch: <name>`` and a ``segmenter.<name>`` section, read as
``cfg.segmenter.<name>`` (:mod:`synthmri.config.sections`).

* ``unet`` (:mod:`.unet`): the authors' U-Net, the paper's;
* ``swin`` (:mod:`.swin`): Swin-B with UPerNet and FCN heads, the paper's, with its own
  augmentation (:mod:`.swin_augment`) on raw 0-255 inputs;
* ``nnunet`` (:mod:`.nnunet`): an nnU-Net-like MONAI DynUNet, this product's cheaper U-Net;
* ``swinunetr`` (:mod:`.swinunetr`): MONAI's Swin UNETR with the paper's Swin optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from synthmri.config import SegmenterConfig
from synthmri.registry import SEGMENTERS, Registry
from synthmri.segmenters import nnunet, swin, swinunetr, unet
from synthmri.segmenters.augment import Augmenter
from synthmri.segmenters.swin_augment import SwinAugmenter


@dataclass(frozen=True)
class Architecture:
    """What the training loop needs to know about one network family.

    Attributes:
        name: registry key, as in ``segmenter.arch``.
        settings: SegmenterConfig -> the family's config section; it must carry
            ``batch_size``, ``train_samples`` and ``val_every_samples``.
        model_args: section -> plain keyword arguments of `build` (stored in checkpoints).
        build: keyword arguments -> the network (train mode may return a deep-supervision
            stack ``[B, S, C, H, W]``; eval mode returns ``[B, C, H, W]`` logits).
        loss: section -> loss module taking (network output in train mode, classes [B, 1, H, W]).
        optimizer: (network, section, total steps) -> (optimiser, per-step LR scheduler).
        augmenter: (seed, enabled) -> a callable augmenting (images on [0, 1], classes).
        normalization: how images are fed after augmentation, a key of
            ``synthmri.segmenters.data.NORMALIZATIONS`` (``zscore`` or ``raw`` 0-255).
        feature_layer: dotted name of the submodule whose output gives in-domain features
            (``synthmri.segmenters.features``).
    """

    name: str
    settings: Callable[[SegmenterConfig], Any]
    model_args: Callable[[Any], dict[str, Any]]
    build: Callable[..., nn.Module]
    loss: Callable[[Any], nn.Module]
    optimizer: Callable[[nn.Module, Any, int], tuple[Any, Any]]
    feature_layer: str
    augmenter: Callable[[int, bool], Callable[..., Any]] = Augmenter
    normalization: str = "zscore"


#: Architecture name -> Architecture: the one place that says which segmenters exist
#: (``synthmri.registry.SEGMENTERS``).
ARCHITECTURES: Registry[Architecture] = SEGMENTERS
ARCHITECTURES.register("unet", Architecture(
    name="unet", settings=unet.settings, model_args=unet.model_args, build=unet.build_unet, loss=unet.loss,
    optimizer=unet.optimizer, feature_layer=unet.FEATURE_LAYER))
ARCHITECTURES.register("swin", Architecture(
    name="swin", settings=swin.settings, model_args=swin.model_args, build=swin.build_swin, loss=swin.loss,
    optimizer=swin.optimizer, feature_layer=swin.FEATURE_LAYER, augmenter=SwinAugmenter, normalization="raw"))
ARCHITECTURES.register("nnunet", Architecture(
    name="nnunet", settings=nnunet.settings, model_args=nnunet.model_args, build=nnunet.build_nnunet,
    loss=nnunet.loss, optimizer=nnunet.optimizer, feature_layer=nnunet.FEATURE_LAYER))
ARCHITECTURES.register("swinunetr", Architecture(
    name="swinunetr", settings=swinunetr.settings, model_args=swinunetr.model_args,
    build=swinunetr.build_swinunetr, loss=swinunetr.loss, optimizer=swinunetr.optimizer,
    feature_layer=swinunetr.FEATURE_LAYER))


def get_architecture(name: str) -> Architecture:
    """The registered architecture `name` (``ARCHITECTURES.get``).

    Raises:
        ConfigError: `name` is not registered (a bad ``segmenter.arch``); lists the known ones.
    """
    return ARCHITECTURES.get(name)
