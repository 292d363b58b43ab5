"""Pixel scaling shared by every generator: uint8 slices in, uint8 slices out.

Networks see images in [-1, 1]; what they produce is clamped, rounded back to uint8 and
the annotation channel is snapped to the nearest label value (0/51/102/204), so every
generator's output is a valid slice-store row.
"""

from __future__ import annotations

import numpy as np
import torch

from synthmri.data.labels import snap_labels

ANNOTATION = 4  # index of the annotation channel


def to_unit_range(batch: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1] (on the input tensor's device)."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    return batch.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float [-1, 1] -> uint8 [n, 5, H, W]; the annotation channel snapped to the label values."""
    scaled = ((x.detach().to(torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5).cpu().numpy()
    out = np.rint(scaled).astype(np.uint8)
    # Snap from the unrounded values so the nearest label is chosen on the model's own scale.
    out[:, ANNOTATION] = snap_labels(scaled[:, ANNOTATION])
    return out
