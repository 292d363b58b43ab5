"""Benchmark segmenter training: what augmentation costs, and whether the loader keeps up.

All numbers come from one run on one machine; read the ratios, not the absolute times.
Rounds alternate between the settings, so a noisy neighbour slows all of them alike, and
each figure is the median over rounds.

- ``train_images_per_second``: whole training steps (sample a batch from the slice store,
  move it to the device, augment or not, z-score, forward, loss, backward, optimiser step),
  with augmentation on and off; ``augmentation_throughput_ratio`` = on / off (the target
  is at least 0.9 where a GPU is present, i.e. augmentation costs at most 10 %).
- ``loader_images_per_second``: the input side alone (sampling, transfer, augmentation,
  z-score), on and off; ``model_images_per_second``: forward, backward and optimiser step
  alone on a batch already on the device. ``loader_to_model_ratio`` above 1 means the loader
  is faster than the model consumes (with augmentation on), so it cannot starve it.
- ``augmentation_step_ms``: the augmenter's own time per batch, by step.

Usage::

    python benchmarks/bench_segmenter.py --out benchmarks/results/segmenter.json
    python benchmarks/bench_segmenter.py --profile paper --device cuda --data data/slices \\
        --out benchmarks/results/segmenter-gpu.json

Without ``--data`` the profile's phantom subjects are written and prepared first.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from synthmri.config import Config, load_config
from synthmri.data.store import SliceStore
from synthmri.io import atomic_write_json
from synthmri.segmenters import augment, get_architecture
from synthmri.segmenters.augment import Augmenter
from synthmri.segmenters.data import BatchSampler, prepare_batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, work: Callable[[], Any], steps: int) -> float:
    """Seconds for `steps` calls of `work`, with the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        work()
    sync(device)
    return time.perf_counter() - start


def phantom_store(cfg: Config, root: Path) -> Path:
    """The profile's phantom subjects, prepared into a slice store under `root`."""
    from synthmri.data.phantom import write_phantom_dataset
    from synthmri.data.prepare import prepare

    write_phantom_dataset(root / "brats", cfg.phantom)
    prepare(root / "brats", root / "slices", cfg)
    return root / "slices"


def bench_arch(cfg: Config, arch_name: str, store: SliceStore, device: torch.device, steps: int,
               rounds: int) -> dict[str, Any]:
    """Every figure of the module docstring for one architecture."""
    arch = get_architecture(arch_name)
    section = arch.settings(cfg.segmenter)
    batch = section.batch_size
    sampler = BatchSampler("real", store, [], batch, seed=0)
    augmenters = {True: Augmenter(seed=1, enabled=True), False: Augmenter(seed=1, enabled=False)}
    torch.manual_seed(0)
    model = arch.build(**arch.model_args(section)).to(device).train()
    optimiser, schedule = arch.optimizer(model, section, total_steps=10 * steps * rounds + 10)
    loss_fn = arch.loss(section).to(device)
    fixed_images, fixed_target = prepare_batch(sampler.sample().slices, None, device)

    def model_step(images: torch.Tensor = fixed_images, target: torch.Tensor = fixed_target) -> None:
        loss = loss_fn(model(images), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()

    def loader_step(augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return prepare_batch(sampler.sample().slices, augmenters[augment], device)

    def train_step(augment: bool) -> None:
        model_step(*loader_step(augment))

    for _ in range(2):  # warm-up: allocator, cuDNN autotuning, MONAI's lazy imports
        train_step(True)
        train_step(False)
    seconds: dict[str, list[float]] = {k: [] for k in ("train_aug", "train_no_aug", "loader_aug", "loader_no_aug",
                                                       "model")}
    for _ in range(rounds):
        seconds["train_aug"].append(timed(device, lambda: train_step(True), steps))
        seconds["train_no_aug"].append(timed(device, lambda: train_step(False), steps))
        seconds["loader_aug"].append(timed(device, lambda: loader_step(True), steps))
        seconds["loader_no_aug"].append(timed(device, lambda: loader_step(False), steps))
        seconds["model"].append(timed(device, model_step, steps))
    rate = {k: steps * batch / statistics.median(v) for k, v in seconds.items()}
    return {
        "batch_size": batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images_per_second": {"aug": rate["train_aug"], "no_aug": rate["train_no_aug"]},
        "augmentation_throughput_ratio": rate["train_aug"] / rate["train_no_aug"],
        "loader_images_per_second": {"aug": rate["loader_aug"], "no_aug": rate["loader_no_aug"]},
        "model_images_per_second": rate["model"],
        "loader_to_model_ratio": rate["loader_aug"] / rate["model"],
        "augmentation_step_ms": augmentation_steps(sampler, device, rounds * steps),
        "seconds_per_round": seconds,
    }


def augmentation_steps(sampler: BatchSampler, device: torch.device, batches: int) -> dict[str, float]:
    """Median ms per batch of the whole augmenter and of each step on the samples it selects."""
    augmenter = Augmenter(seed=2)
    times: dict[str, list[float]] = {}

    def clock(name: str, work: Callable[[], Any]) -> None:
        sync(device)
        start = time.perf_counter()
        work()
        sync(device)
        times.setdefault(name, []).append(time.perf_counter() - start)

    for _ in range(batches):
        images, labels = prepare_batch(sampler.sample().slices, None, device)
        plan = augmenter.draw(len(images))
        clock("total", lambda: augmenter.apply(images, labels, plan))
        moved = torch.nonzero(plan.rotate | plan.scale).flatten()
        angle = torch.where(plan.rotate[moved], plan.angle[moved], 0.0)
        factor = torch.where(plan.scale[moved], plan.factor[moved], 1.0)
        index = moved.to(device)
        clock("rotate_scale", lambda: augment.rotate_scale(images[index], labels[index], angle, factor))
        steps = {"noise": (plan.noise, lambda x, w: augment.add_noise(x, plan.noise_sd[w])),
                 "blur": (plan.blur, lambda x, w: augment.gaussian_blur(x, plan.blur_sigma[w])),
                 "low_resolution": (plan.lowres, lambda x, w: augment.simulate_low_resolution(x, plan.zoom[w])),
                 "gamma": (plan.gamma, lambda x, w: augment.adjust_gamma(x, plan.gamma_value[w]))}
        for name, (mask, step) in steps.items():
            where = torch.nonzero(mask).flatten()
            if len(where):
                chosen = images[where.to(device)]
                clock(name, lambda: step(chosen, where))
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo", help="config profile (default: demo)")
    parser.add_argument("--arch", nargs="+", default=["unet", "swin"], help="architectures to time")
    parser.add_argument("--data", type=Path, help="real slice store (default: prepare the profile's phantoms)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per setting and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cfg = load_config(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        store = SliceStore(args.data or phantom_store(cfg, Path(tmp)))
        results = {name: bench_arch(cfg, name, store, device, args.steps, args.rounds) for name in args.arch}
    atomic_write_json(args.out, {
        "benchmark": "segmenter", "profile": cfg.profile, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "image_size": store.image_size,
        "steps": args.steps, "rounds": args.rounds, "torch": torch.__version__, "architectures": results,
    })
    for name, r in results.items():
        print(f"{name}: train {r['train_images_per_second']['aug']:.1f} img/s with augmentation, "
              f"{r['train_images_per_second']['no_aug']:.1f} without (ratio {r['augmentation_throughput_ratio']:.3f}); "
              f"loader {r['loader_images_per_second']['aug']:.1f} img/s vs model {r['model_images_per_second']:.1f} "
              f"(ratio {r['loader_to_model_ratio']:.2f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
