"""Benchmark sampling: images/s per generator family, and DDIM against the full DDPM chain.

All numbers come from one run on one machine; read the ratios, not the absolute times.

- ``images_per_second``: every family at the profile's settings and image size, sampled in
  the profile's batch size after a small warm-up batch. Throughput does not depend on the
  weights, so the GANs are timed at initialisation.
- ``ddpm``: one trained diffusion model sampled with DDIM in ``--ddim-steps`` steps and
  with the ancestral DDPM chain over all training timesteps, on the same number of
  images: wall times, their ratio, and the in-domain quality of both as the Fréchet
  distance of 8x8-pooled pixels to the real training slices (next to the same distance
  for the real test slices, the floor a perfect generator would reach). Pass ``--ddpm``
  for a trained ``generator.pt``; otherwise a small one is trained on phantom data first.
- ``projected_hours_100k``: hours to draw 100,000 images at the measured rate (the paper
  needed 1.5 days on 8 GPUs for the diffusion model).

Usage::

    python benchmarks/bench_sampling.py --out benchmarks/results/sampling.json
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
from typing import Any

import numpy as np
import torch

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


def trained_ddpm(profile: str, cfg: Config, work: Path, iterations: int) -> tuple[Path, Path]:
    """Train a small DDPM on phantom data; returns (generator.pt, the real slice store)."""
    from synthmri.data.phantom import write_phantom_dataset
    from synthmri.data.prepare import prepare
    from synthmri.generators.train import train_generator

    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    write_phantom_dataset(work / "phantom", cfg.phantom)
    prepare(str(work / "phantom"), work / "slices", cfg)
    ddpm_cfg = load_config(profile, {"generator.model": "ddpm", "generator.ddpm.iterations": iterations})
    result = train_generator(work / "slices", work / "ddpm", ddpm_cfg, register=False)
    return result.generator, work / "slices"


def ddim_against_ddpm(generator: LoadedGenerator, real: Path | None, n: int, ddim_steps: int, batch: int,
                      device: torch.device) -> dict[str, Any]:
    """Wall time and pooled-pixel Fréchet distance of DDIM-`ddim_steps` and the full DDPM chain."""
    from synthmri.data.store import SliceStore

    network = generator.network.to(device)
    timesteps = int(generator.model_args["timesteps"])
    out: dict[str, Any] = {"images": n, "ddim_steps": ddim_steps, "ddpm_steps": timesteps}
    samples = {}
    for label, options in (("ddim", {"sampler": "ddim", "steps": ddim_steps}), ("ddpm", {"sampler": "ddpm"})):
        seconds, samples[label] = time_sampling(generator.family, network, generator.model_args, options, n, batch, device)
        out[f"{label}_seconds"] = seconds
        print(f"ddpm via {label} ({options.get('steps', timesteps)} steps): {seconds:.1f}s for {n} images")
    out["ddpm_over_ddim_seconds"] = out["ddpm_seconds"] / out["ddim_seconds"]
    if real is not None:
        store = SliceStore(real)
        train = pooled_pixel_features(store.read(store.indices("train")))
        for label, images in samples.items():
            out[f"fd_pooled_pixels_{label}"] = frechet_distance(pooled_pixel_features(images), train)
        test = store.indices("test")
        if len(test) > 1:
            out["fd_pooled_pixels_real_test"] = frechet_distance(pooled_pixel_features(store.read(test)), train)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo", help="config profile (demo: CPU scale; paper: 256x256)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=256, help="images per family for the throughput table")
    parser.add_argument("--ddpm", type=Path, help="a trained ddpm generator.pt (default: train a small one)")
    parser.add_argument("--real", type=Path, help="real slice store for the quality figures (with --ddpm)")
    parser.add_argument("--train-iterations", type=int, default=400, help="iterations of the DDPM trained here")
    parser.add_argument("--quality-images", type=int, default=64, help="images drawn by each DDPM sampler")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.profile)
    size = cfg.data.size

    rates = family_throughput(cfg, size, args.images, device)
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as tmp:
        real = args.real
        if args.ddpm is None:
            checkpoint, real = trained_ddpm(args.profile, cfg, Path(tmp), args.train_iterations)
        else:
            checkpoint = args.ddpm
        diffusion = ddim_against_ddpm(load_generator(checkpoint), real, args.quality_images, args.ddim_steps,
                                      cfg.generator.sample_batch_size, device)
    result = {
        "benchmark": "sampling",
        "profile": cfg.profile,
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
