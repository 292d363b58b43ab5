"""The segmentation experiment grid: one entry per ``train-segmenter`` run to fan out.

The paper trains every architecture on every data source, with and without augmentation,
several times with different seeds (Akbar et al. 2024, Tables 3-6). A pipeline expands the
grid once, from its parameters, and runs one task per entry; each entry carries everything
its task needs, so the tasks are independent and may run in any order or in parallel.
"""

from __future__ import annotations

from typing import Any

from synthmri.config import GRID_SOURCES, known_archs


def segmenter_grid(archs: list[str], sources: list[str], augment: list[bool], repeats: int,
                   seed: int) -> list[dict[str, Any]]:
    """Every combination of architecture, source, augmentation and repeat.

    Args:
        archs: architectures (``unet``, ``swin``).
        sources: training sources (``real``, ``synthetic``, ``mixed``).
        augment: augmentation settings (``[True, False]`` for the paper's both).
        repeats: runs per setting; repeat ``r`` uses seed ``seed + r``, so the same repeat of
            two settings starts from the same seed.
        seed: seed of repeat 0.

    Returns:
        One dict per run: ``arch``, ``train``, ``augment``, ``repeat``, ``seed`` and ``name``
        (``<arch>-<train>-<aug|orig>-r<repeat>``), in arch, source, augmentation, repeat order.

    Raises:
        ValueError: an unknown architecture or source, a duplicate, an empty axis, or
            ``repeats`` below 1 (the message names the value).
    """
    axes = {"architecture": archs, "source": sources, "augmentation setting": augment}
    for what, values in axes.items():
        if not values:
            raise ValueError(f"the grid needs at least one {what}")
        if len(set(values)) != len(values):
            raise ValueError(f"{what}s repeat in the grid: {list(values)}")
    known = known_archs()
    unknown = [a for a in archs if a not in known] + [s for s in sources if s not in GRID_SOURCES]
    if unknown:
        raise ValueError(f"unknown grid values {unknown}: architectures are {list(known)}, "
                         f"sources {list(GRID_SOURCES)}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return [
        {"arch": arch, "train": source, "augment": aug, "repeat": r, "seed": seed + r,
         "name": f"{arch}-{source}-{'aug' if aug else 'orig'}-r{r}"}
        for arch in archs for source in sources for aug in augment for r in range(repeats)
    ]
