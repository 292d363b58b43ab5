"""Two optimisation steps of every generator family at the paper profile's full settings, on this machine.

The paper profile trains at 256x256 with Table 9's global batches (ProGAN 8 at 256x256,
StyleGAN 1 16, StyleGAN 2/3 32, the diffusion model 12). On one ordinary GPU, or on this
2-core, 24 GiB CPU, that only fits because each family splits its global batch into
``batch_gpu`` micro-batches and accumulates gradients (the official ``--batch-gpu``). This
script proves it: for each family, in a fresh process (so its peak memory is its own), it
builds the networks at the profile's full settings, puts the progressive GANs at their last
resolution, and runs two optimiser steps of the profile's global batch on random slices.

Each family's result: parameters, global batch and micro-batch, seconds per step, the
losses, and the process's peak resident memory (``ru_maxrss``), all written as JSON.

Usage::

    python benchmarks/paper_steps.py --out benchmarks/results/paper_steps.json
    python benchmarks/paper_steps.py --families stylegan2 ddpm --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = ("progan", "stylegan1", "stylegan2", "stylegan3", "ddpm")
IMAGE_SIZE = 256
CHANNELS = 5


def one_family(name: str, steps: int, seed: int) -> dict:
    """Build `name` at the paper profile's settings and run `steps` optimiser steps; the record."""
    import torch

    from synthmri.config import load_config
    from synthmri.generators import get_family

    cfg = load_config("paper")
    family = get_family(name)
    settings = family.settings(cfg)
    model_args = family.model_args(cfg, IMAGE_SIZE, CHANNELS)
    torch.manual_seed(seed)
    network = family.build(model_args)
    trainer = family.trainer(network, model_args, cfg)
    schedule = getattr(trainer, "schedule", None)  # a GAN's growth schedule (the DDPM's is a noise schedule)
    if hasattr(schedule, "full_kimg"):
        # The last resolution: where the networks are largest and the paper trained longest.
        trainer.images_seen = int(round(schedule.full_kimg * 1000))
    batch = trainer.batch_at(trainer.images_seen) if hasattr(trainer, "batch_at") else settings.batch_size
    parameters = sum(p.numel() for p in network.parameters())
    discriminator = getattr(trainer, "discriminator", None)
    rng = torch.Generator().manual_seed(seed)
    times, losses = [], []
    for _ in range(steps):
        real = torch.randint(0, 256, (batch, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), generator=rng, dtype=torch.uint8)
        start = time.perf_counter()
        losses.append(trainer.step(real, rng))
        times.append(time.perf_counter() - start)
    return {
        "family": name, "image_size": IMAGE_SIZE, "global_batch": int(batch),
        "batch_gpu": int(getattr(settings, "batch_gpu", 0) or 0),
        "generator_parameters": int(parameters),
        "discriminator_parameters": int(sum(p.numel() for p in discriminator.parameters())) if discriminator else None,
        "steps": steps, "seconds_per_step": times, "losses": losses,
        "finite": all(v == v and abs(v) != float("inf") for step in losses for v in step.values()),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per family")
    parser.add_argument("--out", type=Path, help="JSON results (default: print only)")
    parser.add_argument("--family", help=argparse.SUPPRESS)  # internal: run one family in this process
    args = parser.parse_args(argv)

    if args.family:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(one_family(args.family, args.steps, args.seed)))
        return 0

    results = []
    for name in args.families:
        command = [sys.executable, __file__, "--family", name, "--steps", str(args.steps),
                   "--threads", str(args.threads), "--seed", str(args.seed)]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            results.append({"family": name, "error": f"no result within {args.timeout:.0f} s"})
            continue
        if done.returncode != 0:
            results.append({"family": name, "error": (done.stderr or done.stdout)[-2000:],
                            "returncode": done.returncode})
        else:
            results.append({**json.loads(done.stdout.strip().splitlines()[-1]),
                            "wall_seconds": time.perf_counter() - started})
        record = results[-1]
        if "error" in record:
            print(f"{name:10s} FAILED: {record['error'][-300:]}", flush=True)
        else:
            print(f"{name:10s} batch {record['global_batch']:3d} (micro {record['batch_gpu']}): "
                  f"{', '.join(f'{s:.1f}' for s in record['seconds_per_step'])} s/step, "
                  f"peak {record['peak_rss_gib']:.1f} GiB, finite losses: {record['finite']}", flush=True)
    report = {"machine": {"cpus": os.cpu_count(), "threads": args.threads,
                          "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30},
              "profile": "paper", "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
