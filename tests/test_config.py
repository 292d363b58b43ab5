"""Profiles load into typed, frozen config; bad input names the key."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from synthmri.config import Config, ConfigError, dump_config, flatten, load_config, parse_override, to_dict

from conftest import REPO


def test_profiles_load_and_paper_defaults_match_paper_profile():
    paper = load_config(REPO / "configs" / "paper.yaml")
    defaults = load_config(None)
    # The dataclass defaults are the paper's settings: the paper profile only spells them out.
    assert dataclasses.replace(paper, profile="x") == dataclasses.replace(defaults, profile="x")
    assert paper.data.label_map is None and paper.data.layout == "auto"  # the detected layout's map
    assert paper.segmenter.unet.momentum == 0.99 and paper.generator.ddpm.timesteps == 4000


def test_demo_profile_overrides_sections_partially():
    demo = load_config(REPO / "configs" / "demo.yaml")
    assert demo.profile == "demo"
    assert demo.data.size == 64 and demo.data.pad_to == 128
    assert demo.data.intensity_threshold == 50  # untouched key keeps the paper default
    assert isinstance(demo.generator.ddpm.channels, tuple)


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.size = 3  # type: ignore[misc]


def test_overrides_apply_after_profile():
    cfg = load_config(REPO / "configs" / "demo.yaml", {"data.size": 32, "data.label_map": {1: 51, 2: 102, 3: 204}})
    assert cfg.data.size == 32
    assert cfg.data.label_map == {1: 51, 2: 102, 3: 204}


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"data.sizee": 3}, "sizee"),
        ({"data.size": "big"}, "data.size"),
        ({"segmenter.augment": "yes"}, "segmenter.augment"),
        ({"data.size": 512}, "data.size"),  # above pad_to
        ({"generator.ddpm.sampler": "euler"}, "sampler"),
        ({"data.label_map": {1: 51, 2: 51}}, "label_map"),
        ({"segmenter.arch": "vnet"}, "segmenter.arch must be one of unet, swin, nnunet, swinunetr, got 'vnet'"),
        ({"segmenter.repeats": 0}, "segmenter.repeats must be at least 1, got 0"),
        ({"segmenter.ratio_total": -5}, "segmenter.ratio_total"),
        ({"segmenter.ratio_shares": [0.5, 1.5]}, r"segmenter.ratio_shares must be shares in \[0, 1\]"),
        ({"segmenter.swinunetr.feature_size": 20}, "feature_size must be a multiple of 12, got 20"),
        ({"segmenter.swinunetr.depths": [2, 2, 2]}, "depths .* and num_heads .* need one entry per stage"),
        ({"segmenter.swin.depths": [2, 2, 2]}, r"segmenter.swin.depths \[2, 2, 2\] and num_heads .* one entry per stage"),
        ({"segmenter.swin.epochs": 0}, "segmenter.swin: give the length as epochs or as train_samples"),
        ({"segmenter.unet.depth": 1}, "segmenter.unet.depth must be at least 2"),
        ({"segmenter.synthetic_holdout": 1.0}, r"segmenter.synthetic_holdout must be a share in \(0, 1\)"),
        ({"evaluation.convention": "lenient"}, "evaluation.convention must be one of paper, penalise"),
        ({"data.split": "random"}, "data.split must be one of published, seeded"),
        ({"memorization.max_shift": -1}, "memorization.max_shift must be 0 or more, got -1"),
        ({"memorization.share_threshold": 1.5}, "memorization.share_threshold must be a correlation"),
        ({"quality.inception_channels": ["t1", "t2", "dwi"]}, r"unknown channel\(s\) \['dwi'\]"),
        ({"quality.max_images": 1}, "quality.max_images must be at least 2"),
        ({"data.layout": "brats2019"},
         "data.layout must be auto, brats2020, brats2021, brats2023 or generic, got 'brats2019'"),
        ({"evaluation.eval_slices": "some"}, "evaluation.eval_slices must be filtered or all, got 'some'"),
        # Checks that used to wait for the network or the training loop: now at load time.
        ({"generator.n_synthetic": 0}, r"generator.n_synthetic \(0\) and generator.sample_batch_size \(64\)"),
        ({"generator.ddpm.timesteps": 1}, "generator.ddpm.timesteps must be at least 2, got 1"),
        ({"generator.ddpm.beta_end": 1e-5}, "generator.ddpm needs 0 < beta_start < beta_end < 1"),
        ({"generator.ddpm.sample_steps": 0}, "generator.ddpm.sample_steps must be positive, got 0"),
        ({"generator.ddpm.log_every": 0}, "generator.ddpm.log_every must be positive, got 0"),
        ({"generator.stylegan2.ema_decay": 1.0}, r"generator.stylegan2.ema_decay must be in \[0, 1\), got 1.0"),
        ({"generator.stylegan2.lr": 0.0}, "generator.stylegan2.lr must be positive, got 0.0"),
        ({"generator.stylegan2.augment_p": 1.5}, r"generator.stylegan2.augment_p must be in \[0, 1\]"),
        ({"generator.stylegan2.r1_interval": 0}, "generator.stylegan2.r1_interval must be at least 1, got 0"),
        ({"generator.progan.drift": -1.0}, "generator.progan.drift must not be negative"),
        ({"generator.progan.truncation_psi": 0.7}, "generator.progan.truncation_psi: progan has no truncation"),
        ({"generator.stylegan1.truncation_psi": 3.0}, r"generator.stylegan1.truncation_psi must be in \[0, 2\]"),
        ({"generator.stylegan1.initial_resolution": 12}, "generator.stylegan1.initial_resolution must be a power"),
        ({"generator.progan.minibatch_dict": {6: 4}}, "generator.progan.minibatch_dict: keys must be resolutions"),
        ({"generator.stylegan3.first_stopband": 1.0}, "generator.stylegan3.first_stopband must be > first_cutoff"),
        ({"segmenter.nnunet.train_samples": 8},
         r"segmenter.nnunet.train_samples \(8\) is less than one batch \(32\)"),
        ({"segmenter.nnunet.filters": [8, 16]}, "segmenter.nnunet.filters must name at least 3 levels"),
        ({"segmenter.swin.num_heads": [5, 8, 16, 32]}, r"segmenter.swin.num_heads \[5, 8, 16, 32\] must divide"),
        ({"segmenter.swinunetr.drop_path": 1.0}, r"segmenter.swinunetr.drop_path must be in \[0, 1\)"),
    ],
)
def test_bad_values_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, overrides)


def test_missing_profile_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nosuchprofile"):
        load_config("nosuchprofile")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_dump_round_trips(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml")
    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text()) == to_dict(cfg)


def test_flatten_and_parse_override():
    flat = flatten(Config())
    assert flat["data.size"] == 256 and flat["segmenter.unet.lr"] == 2e-2
    assert flat["data.label_map"] is None and flat["data.layout"] == "auto"
    assert flatten(load_config(None, {"data.label_map": {1: 51, 2: 102, 3: 204}}))["data.label_map"] == {1: 51, 2: 102, 3: 204}
    assert parse_override("data.shape=[1, 2]") == ("data.shape", [1, 2])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("data.size")


def test_numbers_given_for_text_settings_are_kept_as_text():
    cfg = load_config("demo", {"tracking.pipeline_run": 18401910, "data.layout": "auto"})
    assert cfg.tracking.pipeline_run == "18401910"
    with pytest.raises(ConfigError, match="expected a string"):
        load_config("demo", {"tracking.pipeline_run": [1, 2]})


def test_importing_the_config_imports_no_network_code():
    import subprocess
    import sys

    probe = ("import sys, synthmri.config, synthmri.registry; "
             "print(sorted(m for m in sys.modules if m.startswith(('torch', 'monai'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_allowed_values_are_the_ones_the_code_uses():
    from synthmri.config import DATA_LAYOUTS, SLICE_CHANNELS
    from synthmri.data.store import CHANNELS

    assert SLICE_CHANNELS == CHANNELS
    assert load_config(None, {"data.layout": DATA_LAYOUTS[-1]}).data.layout == "generic"
