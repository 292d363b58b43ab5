"""FID/IS input modes: what Inception sees, on how many slices, and what the summary records.

A recording stand-in replaces the Inception network, so the tensors it is fed can be compared
with an independent numpy computation on slices built here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from synthmri.config import ConfigError, load_config
from synthmri.data.store import SliceRow, SliceStore, StoreWriter
from synthmri.metrics import inception as inception_module
from synthmri.metrics.quality import inception_input_channels, mlflow_metrics, quality_metrics

SPLITS = ["train", "val", "test", "train", "train", "val", "test", "train"]  # 6 generator-training slices
N_SYNTHETIC = 5


class RecordingInception(nn.Module):
    """Stands in for FIDInceptionV3: keeps every input batch, returns small features and logits."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.inputs.append(x.detach().cpu().clone())
        stats = torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))], 1)  # [n, 2]: full-rank covariances
        return stats, torch.cat([stats, -stats], 1)

    def fed(self) -> torch.Tensor:
        return torch.cat(self.inputs)


def write_stores(root: Path, size: int) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A real store (train/val/test) and a synthetic one of random uint8 slices [n, 5, size, size]."""
    rng = np.random.default_rng(11)
    real = rng.integers(0, 256, (len(SPLITS), 5, size, size), dtype=np.uint8)
    synthetic = rng.integers(0, 256, (N_SYNTHETIC, 5, size, size), dtype=np.uint8)
    rows = [SliceRow(f"real-{i}", f"subj{i}", 0, split) for i, split in enumerate(SPLITS)]
    with StoreWriter(root / "real", image_size=size, source={"path": "handmade"}, shard_size=4) as writer:
        writer.add(real, rows)
    with StoreWriter(root / "syn", image_size=size, source={"path": "handmade"}, shard_size=4,
                     generator={"name": "ddpm", "version": "1"}) as writer:
        writer.add(synthetic, [SliceRow(f"syn-{i}", "ddpm", -1, "train") for i in range(N_SYNTHETIC)])
    training = real[[i for i, s in enumerate(SPLITS) if s in ("train", "val")]]
    return root / "real", root / "syn", training, synthetic


def run_quality(monkeypatch, tmp_path: Path, tiny_config, size: int, **quality):
    real, syn, training, synthetic = write_stores(tmp_path, size)
    model = RecordingInception()
    monkeypatch.setattr(inception_module, "load_inception", lambda source, device="cpu": model)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"unused: load_inception is replaced")
    cfg = replace(tiny_config, quality=replace(tiny_config.quality, inception_weights=str(weights), **quality))
    result = quality_metrics(SliceStore(real), SliceStore(syn), cfg, features=None, device="cpu")
    return result, model.fed(), training, synthetic


def scaled(slices: np.ndarray, channels: list[int]) -> np.ndarray:
    """uint8 0..255 -> [-1, 1], written out independently of synthmri's code."""
    return slices[:, channels].astype(np.float64) * (2.0 / 255.0) - 1.0


def test_t1ce_gray_feeds_the_t1ce_channel_as_r_g_and_b(monkeypatch, tmp_path, tiny_config):
    # 299 px slices: no resize, so the expected tensor is the scaling alone.
    result, fed, training, synthetic = run_quality(monkeypatch, tmp_path, tiny_config, 299, inception_input="t1ce_gray")
    assert fed.shape == (len(training) + N_SYNTHETIC, 3, 299, 299)
    # The real training slices (train + val, the test ones left out) first, then the synthetic ones.
    expected = np.concatenate([scaled(training, [1, 1, 1]), scaled(synthetic, [1, 1, 1])])
    np.testing.assert_allclose(fed.double().numpy(), expected, atol=1e-6)
    for c in (1, 2):
        assert torch.equal(fed[:, c], fed[:, 0])
    # Not the default RGB mapping: T2 and FLAIR never reach the network.
    t2 = np.concatenate([scaled(training, [2]), scaled(synthetic, [2])])[:, 0]
    assert not np.allclose(fed[:, 1].double().numpy(), t2)

    section = result["inception"]
    assert section["status"] == "computed" and section["input"] == "t1ce_gray"
    assert section["channels"] == ["t1ce", "t1ce", "t1ce"]
    assert section["real_images"] == len(training) and section["synthetic_images"] == N_SYNTHETIC


def test_t1ce_gray_after_resize_equals_the_t1ce_channel_of_the_channels_mode(monkeypatch, tmp_path, tiny_config):
    gray, fed_gray, _, _ = run_quality(monkeypatch, tmp_path / "gray", tiny_config, 16, inception_input="t1ce_gray")
    rgb, fed_rgb, _, _ = run_quality(monkeypatch, tmp_path / "rgb", tiny_config, 16, inception_input="channels",
                                     inception_channels=("t1ce", "t2", "flair"))
    assert fed_gray.shape == fed_rgb.shape == (6 + N_SYNTHETIC, 3, 299, 299)
    for c in range(3):  # every channel is the resized T1Gd, i.e. the R channel of t1ce/t2/flair
        assert torch.equal(fed_gray[:, c], fed_rgb[:, 0])
    assert not torch.equal(fed_rgb[:, 1], fed_rgb[:, 0])
    assert gray["inception"]["fid"] != pytest.approx(rgb["inception"]["fid"])


def test_channels_mode_feeds_the_configured_channels(monkeypatch, tmp_path, tiny_config):
    result, fed, training, synthetic = run_quality(monkeypatch, tmp_path, tiny_config, 299, inception_input="channels",
                                                   inception_channels=("t1ce", "t2", "flair"))
    expected = np.concatenate([scaled(training, [1, 2, 3]), scaled(synthetic, [1, 2, 3])])
    np.testing.assert_allclose(fed.double().numpy(), expected, atol=1e-6)
    assert result["inception"]["input"] == "channels" and result["inception"]["channels"] == ["t1ce", "t2", "flair"]


def test_counts_follow_inception_images_and_reach_mlflow(monkeypatch, tmp_path, tiny_config):
    result, fed, _, _ = run_quality(monkeypatch, tmp_path, tiny_config, 16, inception_images=3, max_images=4)
    section = result["inception"]
    assert len(fed) == 6 and section["real_images"] == 3 and section["synthetic_images"] == 3
    assert section["images_limit"] == 3 and section["is_splits"] == 3
    # The in-domain subsets (top-level counts) follow max_images, independently.
    assert result["real_images"] == 4 and result["synthetic_images"] == 4
    flat = mlflow_metrics(result)
    assert flat["inception_real_images"] == 3.0 and flat["inception_synthetic_images"] == 3.0
    assert flat["fid"] == pytest.approx(section["fid"])


def test_skipped_inception_still_names_its_input(tmp_path, tiny_config):
    real, syn, _, _ = write_stores(tmp_path, 16)
    cfg = replace(tiny_config, quality=replace(tiny_config.quality, inception_weights=None))
    section = quality_metrics(SliceStore(real), SliceStore(syn), cfg, features=None, device="cpu")["inception"]
    assert section["status"] == "skipped" and section["input"] == "t1ce_gray"
    assert "inception_real_images" not in mlflow_metrics({"inception": section, "in_domain": section})


def test_bad_mode_and_count_are_named():
    with pytest.raises(ConfigError, match=r"quality\.inception_input must be one of t1ce_gray, channels, got 'rgb'"):
        load_config("demo", {"quality.inception_input": "rgb"})
    with pytest.raises(ConfigError, match=r"quality\.inception_images must be at least 2, got 1"):
        load_config("demo", {"quality.inception_images": 1})
    cfg = load_config("demo")
    with pytest.raises(ValueError, match="'rgb'"):
        inception_input_channels(replace(cfg.quality, inception_input="rgb"))


def test_paper_profile_is_table_2():
    paper = load_config("paper")
    assert paper.quality.inception_input == "t1ce_gray"
    assert inception_input_channels(paper.quality) == ("t1ce", "t1ce", "t1ce")
    assert paper.quality.inception_images == 100_000  # "A total of 100,000 synthetic T1wGd images"
    assert load_config(None).quality == paper.quality  # the defaults are the paper's
    demo = load_config("demo")  # the demo keeps its 10,000-slice cost
    assert demo.quality.inception_images == 10_000 and demo.quality.max_images == 10_000
