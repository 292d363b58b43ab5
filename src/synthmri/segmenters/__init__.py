"""Segmenters: networks, training loop and 3D evaluation.

Every architecture is one module (``unet.py``, ``swin.py``) and one entry of
:data:`ARCHITECTURES`, which binds its name (``segmenter.arch``, ``--arch``) to what the
training loop and the evaluation need from it: its config section, the network builder
and the loss and optimiser of its training recipe. Checkpoints store the name and the
builder's keyword arguments, so a model is rebuilt with ``get_architecture(name).build(**args)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from synthmri.config import ConfigError, SegmenterConfig
from synthmri.segmenters import swin, unet


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
    """

    name: str
    settings: Callable[[SegmenterConfig], Any]
    model_args: Callable[[Any], dict[str, Any]]
    build: Callable[..., nn.Module]
    loss: Callable[[Any], nn.Module]
    optimizer: Callable[[nn.Module, Any, int], tuple[Any, Any]]


ARCHITECTURES: dict[str, Architecture] = {
    "unet": Architecture(
        name="unet",
        settings=unet.settings,
        model_args=unet.model_args,
        build=unet.build_unet,
        loss=unet.loss,
        optimizer=unet.optimizer,
    ),
    "swin": Architecture(
        name="swin",
        settings=swin.settings,
        model_args=swin.model_args,
        build=swin.build_swin,
        loss=swin.loss,
        optimizer=swin.optimizer,
    ),
}


def get_architecture(name: str) -> Architecture:
    """The registered architecture `name`.

    Raises:
        ConfigError: `name` is not registered (a bad ``segmenter.arch``); lists the known ones.
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"segmenter.arch: unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None
