"""Benchmark sampling: images/s per generator family, and DDIM against the full ancestral chain.

All numbers come from one run on one machine; read the ratios, not the absolute times.

- ``images_per_second``: every family at the profile's settings and image size, sampled in
  the profile's batch size after a small warm-up batch. Throughput does not depend on the
  weights, so the GANs are timed at initialisation.
- ``ddpm``: one trained diffusion model sampled with the paper's sampler, the ancestral
  chain over every training timestep with the fixed-large variance, and with DDIM in
  ``--ddim-steps`` steps (this product's extension), on the same number of images: wall
  time per image, their ratio, and the quality of both against the real training slices
  as two Fréchet distances: ``fd_segmenter_*`` on in-domain features (the pooled deepest
  encoder layer of a segmenter trained on the real data, :mod:`synthmri.segmenters.features`)
  and ``fd_pooled_pixels_*`` on 8x8-pooled pixels; ``*_real_test`` is the same distance for
  the real test slices, the floor a perfect generator would reach. Pass ``--ddpm`` for a
  trained ``generator.pt`` (with ``--real`` and, for the segmenter distance,
  ``--segmenter``); otherwise a small DDPM and a small nnU-Net segmenter are trained on
  phantom data first. With few images both distances are biased upwards: compare the
  samplers with each other and with the real floor, not with published numbers.
- ``projected_hours_100k``: hours to draw 100,000 images at the measured rate (the paper
  needed 1.5 days on 8 GPUs for the diffusion model).

Usage::

    python benchmarks/bench_sampling.py --out benchmarks/results/sampling.json
    # the run in benchmarks/results/sampling.json (a few CPU minutes):
    python benchmarks/bench_sampling.py --threads 2 --images 64 --set generator.ddpm.timesteps=250 \
        --train-iterations 400 --quality-images 64 --ddim-steps 25 --out benchmarks/results/sampling.json
    python benchmarks/bench_sampling.py --profile paper --device cuda --ddpm models/generator/generator.pt \\
        --out benchmarks/results/sampling-gpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from synthmri.config import Config, load_config
from synthmri.generators import FAMILIES, get_family
from synthmri.generators.checkpoint import LoadedGenerator, load_generator
from synthmri.io import atomic_write_json
from synthmri.metrics.distribution import frechet_distance, pooled_pixel_features


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_sampling(family: Any, network: torch.nn.Module, model_args: dict, options: dict, n: int, batch: int,
                  device: torch.device) -> tuple[float, np.ndarray]:
    """(seconds, images) to draw `n` images in batches of `batch`, after a two-image warm-up."""
    rng = torch.Generator().manual_seed(0)
    family.sample(network, model_args, 2, rng, options)  # allocator and kernel warm-up
    sync(device)
    chunks, start = [], time.perf_counter()
    for first in range(0, n, batch):
        chunks.append(family.sample(network, model_args, min(batch, n - first), rng, options))
    sync(device)
    return time.perf_counter() - start, np.concatenate(chunks)


def family_throughput(cfg: Config, image_size: int, n: int, device: torch.device) -> dict[str, float]:
    """Images/s of every registered family at the profile's settings (GANs at initialisation)."""
    rates = {}
    for name in FAMILIES:
        family = get_family(name)
        torch.manual_seed(0)
        args = family.model_args(cfg, image_size)
        network = family.build(args).to(device).eval()
        seconds, _ = time_sampling(family, network, args, family.sampling_options(cfg), n,
                                   cfg.generator.sample_batch_size, device)
        rates[name] = n / seconds
        print(f"{name:10s} {rates[name]:10.1f} images/s ({family.sampling_options(cfg) or 'default sampler'})")
    return rates


def trained_ddpm(load: Callable[[dict[str, Any]], Config], work: Path, iterations: int,
                 segmenter_samples: int) -> tuple[Path, Path, Path | None]:
    """Train a small DDPM (and a small segmenter for in-domain features) on phantom data.

    `load` gives the benchmark's config with extra overrides.

    Returns:
        (generator.pt, the real slice store, the segmenter's model.pt or None when
        `segmenter_samples` is 0).
    """
    from synthmri.data.phantom import write_phantom_dataset
    from synthmri.data.prepare import prepare
    from synthmri.generators.train import train_generator
    from synthmri.segmenters.train import train_segmenter

    cfg = load({})
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    write_phantom_dataset(work / "phantom", cfg.phantom)
    prepare(str(work / "phantom"), work / "slices", cfg)
    ddpm_cfg = load({"generator.model": "ddpm", "generator.ddpm.iterations": iterations})
    result = train_generator(work / "slices", work / "ddpm", ddpm_cfg)
    segmenter = None
    if segmenter_samples > 0:
        # The profile's nnU-Net-like segmenter (the demo's: 4 levels), short and unaugmented.
        seg_cfg = load({"segmenter.arch": "nnunet", "segmenter.augment": False,
                        "segmenter.nnunet.train_samples": segmenter_samples,
                        "segmenter.nnunet.val_every_samples": segmenter_samples})
        train_segmenter("real", work / "slices", [], work / "segmenter", seg_cfg)
        segmenter = work / "segmenter"
    return result.generator, work / "slices", segmenter


def ancestral_against_ddim(generator: LoadedGenerator, real: Path | None, segmenter: Path | None, n: int,
                           ddim_steps: int, batch: int, device: torch.device) -> dict[str, Any]:
    """Time per image and Fréchet distances (segmenter features, pooled pixels) of both samplers."""
    from synthmri.data.store import SliceStore

    network = generator.network.to(device)
    timesteps = int(generator.model_args["timesteps"])
    out: dict[str, Any] = {"images": n, "network": generator.model_args.get("network", "monai"),
                           "schedule": generator.model_args.get("schedule", "linear"),
                           "ancestral_steps": timesteps, "ddim_steps": ddim_steps}
    samples = {}
    for label, options in (("ancestral", {"sampler": "ancestral"}), ("ddim", {"sampler": "ddim", "steps": ddim_steps})):
        seconds, samples[label] = time_sampling(generator.family, network, generator.model_args, options, n, batch, device)
        out[f"{label}_seconds"] = seconds
        out[f"{label}_seconds_per_image"] = seconds / n
        print(f"ddpm via {label} ({options.get('steps', timesteps)} steps): {seconds:.1f}s for {n} images")
    out["ancestral_over_ddim_seconds"] = out["ancestral_seconds"] / out["ddim_seconds"]
    if real is None:
        return out
    store = SliceStore(real)
    train_slices = store.read(store.indices("train"))
    test = store.indices("test")
    test_slices = store.read(test) if len(test) > 1 else None
    extractors = {"pooled_pixels": pooled_pixel_features}
    if segmenter is not None:
        from synthmri.segmenters.features import load_feature_network, segmenter_features

        model, arch = load_feature_network(segmenter, device)
        out["segmenter"] = arch
        extractors["segmenter"] = lambda images: segmenter_features(model, arch, images, device=device)
    for name, features in extractors.items():
        reference = features(train_slices)
        for label, images in samples.items():
            out[f"fd_{name}_{label}"] = frechet_distance(features(images), reference)
        if test_slices is not None:
            out[f"fd_{name}_real_test"] = frechet_distance(features(test_slices), reference)
        print(f"Fréchet distance on {name}: " + ", ".join(f"{k[len(f'fd_{name}_'):]} {v:.3g}" for k, v in out.items()
                                                           if k.startswith(f"fd_{name}_")))
    out["train_slices"] = len(train_slices)
    out["test_slices"] = 0 if test_slices is None else len(test_slices)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo", help="config profile (demo: CPU scale; paper: 256x256)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=256, help="images per family for the throughput table")
    parser.add_argument("--ddpm", type=Path, help="a trained ddpm generator.pt (default: train a small one)")
    parser.add_argument("--real", type=Path, help="real slice store for the quality figures (with --ddpm)")
    parser.add_argument("--segmenter", type=Path, help="segmenter model.pt for in-domain features (with --ddpm)")
    parser.add_argument("--train-iterations", type=int, default=400, help="iterations of the DDPM trained here")
    parser.add_argument("--segmenter-samples", type=int, default=3000,
                        help="training samples of the segmenter trained here for the feature distance (0: none)")
    parser.add_argument("--quality-images", type=int, default=64, help="images drawn by each DDPM sampler")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, the value as YAML (e.g. generator.ddpm.timesteps=250); repeatable")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}

    def load(extra: dict[str, Any]) -> Config:
        return load_config(args.profile, {**overrides, **extra})

    cfg = load({})
    size = cfg.data.size

    rates = family_throughput(cfg, size, args.images, device)
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as tmp:
        real, segmenter = args.real, args.segmenter
        if args.ddpm is None:
            checkpoint, real, segmenter = trained_ddpm(load, Path(tmp), args.train_iterations, args.segmenter_samples)
        else:
            checkpoint = args.ddpm
        diffusion = ancestral_against_ddim(load_generator(checkpoint), real, segmenter, args.quality_images,
                                           args.ddim_steps, cfg.generator.sample_batch_size, device)
    result = {
        "benchmark": "sampling",
        "profile": cfg.profile,
        "overrides": overrides,
        "image_size": size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "batch_size": cfg.generator.sample_batch_size,
        "images_per_second": rates,
        "projected_hours_100k": {name: 100_000 / rate / 3600 for name, rate in rates.items()},
        "ddpm": diffusion,
    }
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
