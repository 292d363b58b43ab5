"""Generator checkpoints: atomic writes, safe loads, and rebuilding a network from one.

Two files, both plain dicts of tensors, numbers, strings and lists (no pickled classes),
so they load with ``torch.load(weights_only=True)``:

``checkpoint.pt`` (training state, resumable)
    model, model_args, state_dict, ema_state_dict, trainer (optimiser state...), step,
    config, image_size, data_hash, rng_state, mlflow_run_id.
``generator.pt`` (what ``generate`` and the MLflow pyfunc consume)
    format, model, model_args, state_dict (the EMA weights), config, image_size,
    data_hash, step, sampling (default sampler options), sample_batch_size.

Both are written by :func:`synthmri.io.atomic_torch_save` (``save_checkpoint`` here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthmri.generators import GeneratorFamily, get_family
from synthmri.io import atomic_torch_save, sha256_file, torch_load

#: Checkpoints are written with the one atomic save of :mod:`synthmri.io` (fsync, mode 0644).
save_checkpoint = atomic_torch_save

GENERATOR_FORMAT = 1
_GENERATOR_KEYS = ("format", "model", "model_args", "state_dict", "image_size", "data_hash", "sampling",
                   "sample_batch_size")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU without unpickling code (``weights_only=True``).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a synthmri checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator checkpoint not found: {path}")
    payload = torch_load(path)
    if not isinstance(payload, dict) or "model" not in payload or "model_args" not in payload:
        raise ValueError(f"{path}: not a synthmri generator checkpoint (no 'model'/'model_args')")
    return payload


@dataclass
class LoadedGenerator:
    """A generator network ready to sample, with what its checkpoint says about it.

    Attributes:
        name: model family name, e.g. ``ddpm``.
        family: the registry entry that builds and samples it.
        network: the (EMA) network in eval mode.
        model_args: arguments that rebuilt the network.
        image_size: H = W of the images it makes.
        data_hash: content hash of the slice store it was trained on.
        sampling: default sampler options recorded at training time.
        sample_batch_size: default sampling batch size recorded at training time.
        step: training iterations behind these weights.
        path: the checkpoint file.
        sha256: sha256 of the checkpoint file.
    """

    name: str
    family: GeneratorFamily
    network: torch.nn.Module
    model_args: dict[str, Any]
    image_size: int
    data_hash: str
    sampling: dict[str, Any]
    sample_batch_size: int
    step: int
    path: Path
    sha256: str


def load_generator(path: Path) -> LoadedGenerator:
    """Rebuild the network a ``generator.pt`` describes and load its weights.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: not a generator checkpoint, written by a newer format, or of an unknown
            model family.
    """
    path = Path(path)
    payload = load_checkpoint(path)
    missing = [key for key in _GENERATOR_KEYS if key not in payload]
    if missing:
        hint = " (a training checkpoint.pt? pass generator.pt)" if "ema_state_dict" in payload else ""
        raise ValueError(f"{path}: not a generator checkpoint, missing {missing}{hint}")
    if payload["format"] > GENERATOR_FORMAT:
        raise ValueError(f"{path}: generator format {payload['format']} is newer than this synthmri reads ({GENERATOR_FORMAT})")
    family = get_family(payload["model"])
    network = family.build(payload["model_args"])
    network.load_state_dict(payload["state_dict"])
    network.eval().requires_grad_(False)
    return LoadedGenerator(
        name=str(payload["model"]),
        family=family,
        network=network,
        model_args=dict(payload["model_args"]),
        image_size=int(payload["image_size"]),
        data_hash=str(payload["data_hash"]),
        sampling=dict(payload["sampling"]),
        sample_batch_size=int(payload["sample_batch_size"]),
        step=int(payload.get("step", -1)),
        path=path,
        sha256=sha256_file(path),
    )
