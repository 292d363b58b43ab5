"""Generators: networks, training loops, sampling and the MLflow sampler.

Each model family lives in one module and is registered by name in :data:`FAMILIES`, an
explicit :class:`~synthmri.registry.Registry` (no import strings). A family is anything
that satisfies :class:`GeneratorFamily`; the training loop (:mod:`synthmri.generators.train`),
sampling (:mod:`synthmri.generators.sample`) and the MLflow pyfunc
(:mod:`synthmri.generators.pyfunc`) only talk to that interface. To add a family, write
``generators/<name>.py`` with an object providing the methods below (a GAN needs only its
networks and an objective: see :class:`synthmri.generators.adversarial.AdversarialFamily`)
and its settings dataclass, and register both with one line::

    FAMILIES.register("<name>", <name>.FAMILY, section=<name>.<Name>Config)

The config then accepts ``generator.model: <name>`` and a ``generator.<name>`` section,
which the family reads as ``cfg.generator.<name>`` (:mod:`synthmri.config.sections`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol

from synthmri.generators import ddpm, progan, stylegan1, stylegan2, stylegan3
from synthmri.registry import GENERATORS, Registry

if TYPE_CHECKING:
    import numpy as np
    import torch

    from synthmri.config import Config
    from synthmri.generators.distributed import Runtime

#: Channels every generator produces jointly: T1, T1Gd, T2, FLAIR and the annotation.
CHANNELS = 5


class Trainer(Protocol):
    """One family's optimisation state around a network (optimisers, a discriminator...)."""

    def step(self, batch: "torch.Tensor", generator: "torch.Generator") -> dict[str, float]:
        """One update on this process's share of a batch (uint8 [B, 5, H, W], on the CPU);
        returns named losses."""

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond the network that a resumed run needs (optimiser state...)."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class GeneratorFamily(Protocol):
    """What a model family provides; see :data:`synthmri.generators.ddpm.FAMILY`.

    The *network* is the module that samples (the DDPM denoiser, a GAN's generator); it is
    what EMA tracks and what ``generator.pt`` stores. Everything only needed for training
    (optimisers, a discriminator, the noise schedule's loss) lives in the :class:`Trainer`.
    """

    name: str

    def settings(self, cfg: "Config") -> Any:
        """The family's config section; must have ``iterations``, ``batch_size``,
        ``ema_decay``, ``log_every``, ``checkpoint_every`` and ``sample_grid_every``."""

    def model_args(self, cfg: "Config", image_size: int, channels: int = CHANNELS) -> dict[str, Any]:
        """JSON-able arguments that rebuild the network (stored in every checkpoint)."""

    def build(self, model_args: Mapping[str, Any]) -> "torch.nn.Module":
        """A freshly initialised network from :meth:`model_args` output."""

    def trainer(self, network: "torch.nn.Module", model_args: Mapping[str, Any], cfg: "Config",
                runtime: "Runtime | None" = None) -> Trainer:
        """The optimisation state that trains `network` (built from `model_args`, already on
        ``runtime.device``); it averages gradients across processes through `runtime`."""

    def sampling_options(self, cfg: "Config") -> dict[str, Any]:
        """JSON-able sampler settings from the config (e.g. sampler kind, steps)."""

    def sample(self, network: "torch.nn.Module", model_args: Mapping[str, Any], n: int,
               generator: "torch.Generator", options: Mapping[str, Any]) -> "np.ndarray":
        """`n` images as uint8 [n, 5, H, W], annotation snapped to the label values."""


#: Model name -> family: the one place that says which generators exist (``synthmri.registry.GENERATORS``).
FAMILIES: Registry[GeneratorFamily] = GENERATORS
FAMILIES.register("ddpm", ddpm.FAMILY)
FAMILIES.register("progan", progan.FAMILY)
FAMILIES.register("stylegan1", stylegan1.FAMILY)
FAMILIES.register("stylegan2", stylegan2.FAMILY)
FAMILIES.register("stylegan3", stylegan3.FAMILY)


def get_family(name: str) -> GeneratorFamily:
    """The family registered as `name` (``FAMILIES.get``).

    Raises:
        ConfigError: (a ValueError) `name` is not registered; the message lists the known names.
    """
    return FAMILIES.get(name)
