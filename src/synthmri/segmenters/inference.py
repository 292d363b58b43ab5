"""Running a trained segmenter: find and load its checkpoints, segment stored slices.

What the evaluation (:mod:`synthmri.segmenters.evaluate`) and the in-domain features
(:mod:`synthmri.segmenters.features`) share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmri.data.labels import LABEL_VALUES
from synthmri.segmenters import get_architecture
from synthmri.segmenters.data import prepare_batch
from synthmri.segmenters.train import REPEAT_GLOB


def load_segmenter(path: Path, dev: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a train-segmenter checkpoint (``model.pt`` or its directory), in eval mode.

    A directory of several repeats gives its first repeat's network.

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: the file is not a segmenter checkpoint (keys missing).
    """
    file = find_checkpoints(Path(path))[0]
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    missing = [k for k in ("arch", "model_args", "state_dict") if k not in checkpoint]
    if missing:
        raise ValueError(f"{file}: not a segmenter checkpoint (missing {missing})")
    model = get_architecture(checkpoint["arch"]).build(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(dev).eval(), checkpoint


def find_checkpoints(model: Path) -> list[Path]:
    """The checkpoints of a train-segmenter output: ``model.pt``, or one per ``repeat-*``.

    Raises:
        FileNotFoundError: neither is there.
    """
    model = Path(model)
    if model.is_file():
        return [model]
    if (model / "model.pt").is_file():
        return [model / "model.pt"]
    repeats = sorted(p / "model.pt" for p in model.glob(REPEAT_GLOB) if (p / "model.pt").is_file())
    if repeats:
        return repeats
    raise FileNotFoundError(f"{model / 'model.pt'}: segmenter checkpoint not found (run train-segmenter first)")


@torch.no_grad()
def segment(model: torch.nn.Module, slices: np.ndarray, batch_size: int, dev: torch.device | str,
            normalization: str = "zscore") -> np.ndarray:
    """Annotation values (uint8 [n, H, W]) predicted for stored slices (uint8 [n, 5, H, W]).

    `normalization` is the network's input normalisation (its architecture's, see
    :data:`synthmri.segmenters.data.NORMALIZATIONS`).
    """
    values = torch.tensor(LABEL_VALUES, dtype=torch.uint8)
    out = np.empty((len(slices), *slices.shape[2:]), dtype=np.uint8)
    for start in range(0, len(slices), batch_size):
        images, _ = prepare_batch(slices[start:start + batch_size], None, dev, normalization)
        classes = model(images).argmax(dim=1).cpu()
        out[start:start + batch_size] = values[classes].numpy()
    return out


def model_info(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """What the evaluation records of the model: architecture, data mix, setting, seed, name."""
    trained = checkpoint.get("config", {}).get("segmenter", {})
    return {
        "arch": checkpoint["arch"], "train": checkpoint.get("train"), "augment": bool(trained.get("augment", False)),
        "seed": checkpoint.get("seed"), "synthetic": list(checkpoint.get("synthetic") or []),
        "real_share": checkpoint.get("real_share"), "name": checkpoint.get("name") or path.parent.name,
        "synthetic_versions": list(checkpoint.get("synthetic_versions") or []), "repeat": checkpoint.get("repeat"),
    }


