"""The paper's denoiser: guided-diffusion's UNet at the authors' flags, and training it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthmri.config import load_config
from synthmri.generators import get_family
from synthmri.generators.guided_unet import AttentionBlock, GuidedUNet, ResBlock

from . import SIZE, one_thread, phantom_slices, tiny_config

AUTHORS_PARAMETERS = 41_125_637  # guided-diffusion, --num_channels 64 --num_res_blocks 3, 256x256, 5 channels

TINY_GUIDED = {"generator.ddpm.network": "guided", "generator.ddpm.model_channels": 16,
               "generator.ddpm.channel_mult": [1, 2], "generator.ddpm.attention_resolutions": [8],
               "generator.ddpm.num_heads": 2, "generator.ddpm.norm_num_groups": 8,
               "generator.ddpm.num_res_blocks": 1, "data.size": 16, "generator.ddpm.timesteps": 100}


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


def test_paper_network_has_the_authors_parameter_count():
    family = get_family("ddpm")
    network = family.build(family.model_args(load_config("paper"), 256))
    count = sum(p.numel() for p in network.parameters())
    print(f"guided UNet at the paper settings: {count:,} parameters")
    assert isinstance(network, GuidedUNet) and count == AUTHORS_PARAMETERS
    names = dict(network.named_parameters())
    # guided-diffusion's layout: attention only where the feature map is 16x16 or 8x8 (levels 4, 5) and in the middle.
    attention = sorted({name.split(".qkv")[0] for name in names if ".qkv." in name})
    assert attention == sorted([f"input_blocks.{i}.1" for i in (17, 18, 19, 21, 22, 23)] + ["middle_block.1"]
                               + [f"output_blocks.{i}.1" for i in range(8)])
    assert names["middle_block.1.qkv.weight"].shape == (768, 256, 1)  # a 1x1 conv, 4 heads of 64
    assert names["input_blocks.1.0.emb_layers.1.weight"].shape == (128, 256)  # scale and shift from the 4x64 embedding
    assert names["out.2.weight"].shape == (5, 64, 3, 3)


def test_small_network_shapes_and_zero_initialised_output():
    torch.manual_seed(0)
    network = GuidedUNet(image_size=32, in_channels=5, model_channels=32, out_channels=5, num_res_blocks=2,
                         attention_resolutions=(16,), channel_mult=(1, 2), num_heads=4)
    x = torch.randn(3, 5, 32, 32)
    out = network(x, torch.tensor([0, 7, 3999]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # guided-diffusion zero-initialises the last conv
    torch.nn.init.normal_(network.out[2].weight)
    out = network(x, torch.tensor([0, 7, 3999]))
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    hidden = {}
    network.middle_block.register_forward_hook(lambda module, args, output: hidden.setdefault("middle", output))
    network(x, torch.tensor([1, 2, 3]))
    assert hidden["middle"].shape == (3, 64, 16, 16)


def test_resblock_conditions_by_scale_and_shift():
    torch.manual_seed(0)
    block = ResBlock(32, 16, dropout=0.0, out_channels=64)
    torch.nn.init.normal_(block.out_layers[3].weight)
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    norm, conv = block.out_layers[0], block.out_layers[3]
    scale, shift = block.emb_layers(emb)[..., None, None].chunk(2, dim=1)
    h = block.in_layers(x)
    expected = block.skip_connection(x) + conv(torch.nn.functional.silu(norm(h) * (1 + scale) + shift))
    torch.testing.assert_close(block(x, emb), expected)


def test_attention_is_multi_head_softmax_attention_in_the_legacy_layout():
    torch.manual_seed(0)
    block = AttentionBlock(32, num_heads=4, groups=8)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    x = torch.randn(2, 32, 4, 4)
    qkv = block.qkv(block.norm(x.reshape(2, 32, 16)))  # [2, 96, 16]: q, k, v of head 0, then head 1, ...
    heads = []
    for head in range(4):
        q, k, v = qkv[:, head * 24:(head + 1) * 24].split(8, dim=1)
        weight = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(8), dim=-1)  # [2, 16 queries, 16 keys]
        heads.append((weight @ v.transpose(1, 2)).transpose(1, 2))
    expected = x.reshape(2, 32, 16) + block.proj_out(torch.cat(heads, dim=1))
    torch.testing.assert_close(block(x), expected.reshape(2, 32, 4, 4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("override, message", [
    ({"generator.ddpm.attention_resolutions": [4]}, r"attention_resolutions \[4\] are not feature-map sizes"),
    ({"data.size": 31}, "image size 31 is not divisible by 2"),
    ({"generator.ddpm.num_heads": 3}, "num_heads=3 must divide"),
    ({"generator.ddpm.model_channels": 12}, r"model_channels \(12\) times each channel_mult .* norm_num_groups \(8\)"),
])
def test_inconsistent_guided_settings_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):  # from load_config or, size-dependent, from model_args
        cfg = tiny_config(**{**TINY_GUIDED, **override})
        get_family("ddpm").model_args(cfg, cfg.data.size)


def test_tiny_guided_network_trains_and_samples_reproducibly():
    """A CPU smoke: the loss falls over 60 Adam steps; the ancestral chain is seeded."""
    cfg = tiny_config(**{**TINY_GUIDED, "generator.ddpm.lr": 2e-3, "generator.ddpm.batch_gpu": 4})
    family = get_family("ddpm")
    args = family.model_args(cfg, 16)
    torch.manual_seed(0)
    network = family.build(args)
    trainer = family.trainer(network, args, cfg)
    data = torch.from_numpy(phantom_slices(32, size=16))
    rng = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        picks = torch.randint(len(data), (8,), generator=rng)
        losses.append(trainer.step(data[picks], rng)["loss"])
    assert np.isfinite(losses).all()
    assert np.mean(losses[-15:]) < 0.7 * np.mean(losses[:15]), losses
    options = {"sampler": "ancestral"}
    first = family.sample(network, args, 2, torch.Generator().manual_seed(11), options)
    again = family.sample(network, args, 2, torch.Generator().manual_seed(11), options)
    other = family.sample(network, args, 2, torch.Generator().manual_seed(12), options)
    assert first.shape == (2, 5, 16, 16) and first.dtype == np.uint8
    assert first.tobytes() == again.tobytes() and first.tobytes() != other.tobytes()
    ddim = family.sample(network, args, 2, torch.Generator().manual_seed(11), {"sampler": "ddim", "steps": 10})
    assert ddim.tobytes() == family.sample(network, args, 2, torch.Generator().manual_seed(11),
                                           {"sampler": "ddim", "steps": 10}).tobytes()


def test_generator_checkpoint_rebuilds_the_guided_network(tmp_path):
    """Model arguments as train.py stores them (weights-only pickle) rebuild the guided network."""
    from synthmri.generators.checkpoint import GENERATOR_FORMAT, load_generator, save_checkpoint

    cfg = tiny_config(**TINY_GUIDED)
    family = get_family("ddpm")
    args = family.model_args(cfg, 16)
    torch.manual_seed(0)
    network = family.build(args)
    torch.nn.init.normal_(network.out[2].weight, std=0.01)  # so samples depend on the weights
    save_checkpoint(tmp_path / "generator.pt", {
        "format": GENERATOR_FORMAT, "model": "ddpm", "model_args": args, "state_dict": network.state_dict(),
        "image_size": 16, "data_hash": "x", "sampling": family.sampling_options(cfg), "sample_batch_size": 2, "step": 1})
    loaded = load_generator(tmp_path / "generator.pt")
    assert isinstance(loaded.network, GuidedUNet) and loaded.model_args == args
    options = {"sampler": "ddim", "steps": 5}
    expected = family.sample(network, args, 2, torch.Generator().manual_seed(4), options)
    assert loaded.family.sample(loaded.network, loaded.model_args, 2, torch.Generator().manual_seed(4),
                                options).tobytes() == expected.tobytes()
