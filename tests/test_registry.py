"""A new generator family or segmenter architecture is one module and one registry line.

The toy family and architecture below stand for such a module: a settings dataclass, a tiny
network and what the training loop asks of it. Each is added with one ``register`` line
(removed again after its test) and is then built through the registry, and a config naming
it loads, carries its section and validates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pytest
import torch
from torch import nn

from synthmri.config import ConfigError, flatten, load_config, to_dict
from synthmri.generators import FAMILIES, get_family
from synthmri.registry import Registry
from synthmri.segmenters import ARCHITECTURES, Architecture, get_architecture

SIZE = 8


# --- a toy generator family: what generators/<name>.py would hold --------------------------------


@dataclass(frozen=True)
class ToyGANConfig:
    """The ``generator.toygan`` section, with the settings the training loop reads."""

    width: int = 4
    lr: float = 1e-2
    batch_size: int = 2
    iterations: int = 3
    ema_decay: float = 0.5
    log_every: int = 1
    checkpoint_every: int = 2
    sample_grid_every: int = 2

    def validate(self, key: str) -> None:
        if self.width < 1:
            raise ConfigError(f"{key}.width must be at least 1, got {self.width}")


class ToyNet(nn.Module):
    """Latent [B, width] -> images [B, channels, S, S] in [-1, 1]."""

    def __init__(self, image_size: int, channels: int, width: int) -> None:
        super().__init__()
        self.shape, self.width = (channels, image_size, image_size), width
        self.out = nn.Linear(width, channels * image_size * image_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(z)).view(-1, *self.shape)


class ToyTrainer:
    """Pulls the generated images towards the batch's mean image."""

    def __init__(self, network: ToyNet, lr: float) -> None:
        self.network = network
        self.optimizer = torch.optim.SGD(network.parameters(), lr=lr)

    def step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        target = batch.float().mean(dim=0) / 127.5 - 1
        z = torch.randn(len(batch), self.network.width, generator=generator)
        loss = (self.network(z) - target).square().mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass(frozen=True)
class ToyFamily:
    """Satisfies :class:`synthmri.generators.GeneratorFamily`."""

    name: str = "toygan"

    def settings(self, cfg: Any) -> ToyGANConfig:
        return cfg.generator.toygan

    def model_args(self, cfg: Any, image_size: int, channels: int = 5) -> dict[str, Any]:
        return {"image_size": image_size, "channels": channels, "width": cfg.generator.toygan.width}

    def build(self, model_args: Mapping[str, Any]) -> ToyNet:
        return ToyNet(**model_args)

    def trainer(self, network: ToyNet, model_args: Mapping[str, Any], cfg: Any, runtime: Any = None) -> ToyTrainer:
        return ToyTrainer(network, cfg.generator.toygan.lr)

    def sampling_options(self, cfg: Any) -> dict[str, Any]:
        return {}

    def sample(self, network: ToyNet, model_args: Mapping[str, Any], n: int, generator: torch.Generator,
               options: Mapping[str, Any]) -> np.ndarray:
        with torch.no_grad():
            images = network(torch.randn(n, network.width, generator=generator))
        return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


# --- a toy segmenter architecture: what segmenters/<name>.py would hold ---------------------------


@dataclass(frozen=True)
class ToySegConfig:
    """The ``segmenter.toyseg`` section."""

    width: int = 4
    batch_size: int = 2
    train_samples: int = 8
    val_every_samples: int = 4
    lr: float = 1e-2


class ToySeg(nn.Module):
    """Two 3x3 convolutions: 4 MR channels -> 4 class logits."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(4, width, 3, padding=1)
        self.head = nn.Conv2d(width, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)))


class ToyLoss(nn.Module):
    def forward(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, classes[:, 0].long())


def toy_optimizer(model: nn.Module, section: ToySegConfig, total_steps: int) -> tuple[Any, Any]:
    optimizer = torch.optim.SGD(model.parameters(), lr=section.lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)


TOY_ARCH = Architecture(name="toyseg", settings=lambda seg: seg.toyseg, model_args=lambda s: {"width": s.width},
                        build=ToySeg, loss=lambda s: ToyLoss(), optimizer=toy_optimizer, feature_layer="features")


# --- the registry lines ------------------------------------------------------------------------------


@pytest.fixture
def toy_gan():
    FAMILIES.register("toygan", ToyFamily(), section=ToyGANConfig)  # the one registry line
    yield
    FAMILIES.unregister("toygan")


@pytest.fixture
def toy_seg():
    ARCHITECTURES.register("toyseg", TOY_ARCH, section=ToySegConfig)  # the one registry line
    yield
    ARCHITECTURES.unregister("toyseg")


def test_a_registered_generator_family_is_configured_built_trained_and_sampled(toy_gan, tmp_path):
    cfg = load_config(None, {"generator.model": "toygan", "generator.toygan.width": 3, "data.size": SIZE,
                             "data.pad_to": SIZE})
    assert cfg.generator.toygan == ToyGANConfig(width=3)
    family = get_family(cfg.generator.model)
    args = family.model_args(cfg, SIZE)
    torch.manual_seed(0)
    network = family.build(args)
    trainer = family.trainer(network, args, cfg)
    batch = torch.full((2, 5, SIZE, SIZE), 100, dtype=torch.uint8)
    losses = [trainer.step(batch, torch.Generator().manual_seed(step))["loss"] for step in range(5)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    images = family.sample(network, args, 3, torch.Generator().manual_seed(0), family.sampling_options(cfg))
    assert images.shape == (3, 5, SIZE, SIZE) and images.dtype == np.uint8
    # The section is written out and read back like a built-in one.
    assert flatten(cfg)["generator.toygan.width"] == 3 and to_dict(cfg)["generator"]["toygan"]["lr"] == 1e-2
    path = tmp_path / "config.yaml"
    from synthmri.config import dump_config

    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert load_config(None).generator.toygan == ToyGANConfig()  # defaults, like the built-in sections


def test_config_validates_a_registered_family_and_refuses_unknown_names(toy_gan):
    with pytest.raises(ConfigError, match=r"generator.model must be one of ddpm, .*stylegan3, toygan, got 'nogan'"):
        load_config(None, {"generator.model": "nogan"})
    with pytest.raises(ConfigError, match=r"generator.toygan.width must be at least 1, got 0"):  # the section's own
        load_config(None, {"generator.toygan.width": 0})
    with pytest.raises(ConfigError, match=r"generator.toygan.batch_size must be positive, got 0"):  # the loop's
        load_config(None, {"generator.toygan.batch_size": 0})
    with pytest.raises(ConfigError, match=r"generator.toygan: unknown key\(s\) \['depth'\]"):
        load_config(None, {"generator.toygan.depth": 2})
    with pytest.raises(ValueError, match="unknown generator model 'nogan'.*known: ddpm, .*toygan"):
        get_family("nogan")


def test_a_registered_segmenter_architecture_is_configured_and_built(toy_seg):
    cfg = load_config(None, {"segmenter.arch": "toyseg", "segmenter.toyseg.width": 6})
    arch = get_architecture(cfg.segmenter.arch)
    section = arch.settings(cfg.segmenter)
    assert section == ToySegConfig(width=6)
    model = arch.build(**arch.model_args(section))
    x, classes = torch.randn(2, 4, SIZE, SIZE), torch.randint(0, 4, (2, 1, SIZE, SIZE))
    logits = model(x)
    assert logits.shape == (2, 4, SIZE, SIZE)
    optimizer, schedule = arch.optimizer(model, section, 4)
    arch.loss(section)(logits, classes).backward()
    optimizer.step()
    schedule.step()
    assert model.get_submodule(arch.feature_layer) is model.features
    assert flatten(cfg)["segmenter.toyseg.width"] == 6


def test_config_validates_a_registered_architecture_and_refuses_unknown_names(toy_seg):
    with pytest.raises(ConfigError, match="segmenter.arch must be one of unet, swin, nnunet, swinunetr, toyseg, "
                                          "got 'vnet'"):
        load_config(None, {"segmenter.arch": "vnet"})
    with pytest.raises(ConfigError, match=r"segmenter.toyseg.train_samples \(1\) is less than one batch \(2\)"):
        load_config(None, {"segmenter.toyseg.train_samples": 1})
    with pytest.raises(ConfigError, match="vnet.*known: nnunet, swin, swinunetr, toyseg, unet"):
        get_architecture("vnet")


def test_unregistering_removes_the_name_and_the_section():
    with FAMILIES.registered("toygan", ToyFamily(), section=ToyGANConfig):
        assert "toygan" in FAMILIES and load_config(None, {"generator.model": "toygan"}).generator.model == "toygan"
    assert "toygan" not in FAMILIES
    with pytest.raises(ConfigError, match=r"generator: unknown key\(s\) \['toygan'\]"):
        load_config(None, {"generator.toygan.width": 3})
    with pytest.raises(ConfigError, match="generator.model must be one of"):
        load_config(None, {"generator.model": "toygan"})
    assert "toygan" not in to_dict(load_config(None))["generator"]


def test_registry_shape():
    registry: Registry[str] = Registry("widget", "widgets.kind")
    assert registry.register("b", "B") == "B"
    registry.register("a", "A", section=ToySegConfig)
    assert registry.names() == ("b", "a") == tuple(registry) and len(registry) == 2
    assert "a" in registry and "c" not in registry
    assert registry.get("a") == registry["a"] == "A"
    assert registry.section("a") is ToySegConfig and registry.section("b") is None
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.register("a", "again")
    with pytest.raises(ConfigError, match=r"widgets.kind: unknown widget 'c'; known: a, b"):
        registry.get("c")
    assert registry.unregister("a") == "A" and registry.names() == ("b",) and registry.section("a") is None
